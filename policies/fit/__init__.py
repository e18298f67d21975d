"""Offline policy fitting and evaluation on cached exit logits. The server never imports it."""
