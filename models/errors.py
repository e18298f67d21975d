"""The models package's expected failures, torch-free (the CLI and the front import them)."""

from __future__ import annotations


class ArtifactError(ValueError):
    """A missing, corrupt or mismatched artifact; the message is one line."""


class DataError(ValueError):
    """Bad or unusable data; the message is one line meant for the user."""
