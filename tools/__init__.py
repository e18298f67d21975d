"""Offline tooling: the `eeserve` CLI commands, load tests and peer servers.

Nothing in service/, models/ or policies/ imports it (checked by import-linter).
"""
