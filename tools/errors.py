"""The failures `eeserve` shows as one line (`eeserve: error: ...`, exit status 2)."""

from __future__ import annotations

from models.errors import ArtifactError, DataError  # torch-free: `eeserve serve`'s front
from policies.errors import PolicyError  # process imports no torch


class CliError(Exception):
    """An expected failure whose message is shown as one line."""


# bad data, a bad artifact, a bad policy parameter, a missing or unreadable file
EXPECTED: tuple[type[BaseException], ...] = (CliError, DataError, ArtifactError, PolicyError,
                                             FileNotFoundError, PermissionError)
