"""Multi-exit models exposing a step API (embed / step), never an exit policy."""
