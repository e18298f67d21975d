"""The policies package's expected failure, torch-free (the CLI and the front import it)."""

from __future__ import annotations


class PolicyError(ValueError):
    """Bad policy name, parameter or input; the message names the offending value."""
