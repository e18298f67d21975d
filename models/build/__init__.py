"""Offline model building: data, training, recipes, export. The server never imports it."""
