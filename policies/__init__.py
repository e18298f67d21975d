"""Early-exit policies: BEEM, EENet and baselines behind one vectorised interface."""

from __future__ import annotations

from policies import max_softmax  # noqa: F401  (registers)
from policies.base import (
    REGISTRY,
    Decision,
    ExitPolicy,
    PolicyError,
    PolicyState,
    build_policy,
    enforce_last_exit,
)

__all__ = ["REGISTRY", "Decision", "ExitPolicy", "PolicyError", "PolicyState", "build_policy",
           "enforce_last_exit"]
