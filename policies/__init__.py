"""Early-exit policies: BEEM, EENet and baselines behind one vectorised interface.

The online policies are named in `policies.names` (torch-free, so the HTTP layer can list them)
and built through the explicit table in `policies.registry` (`build_policy(name, ...)`): beem,
eenet, maxprob, entropy, patience, static, none. The offline oracles live in
`policies.fit.oracle.ORACLES`; fitting is in `policies.fit.calibration`.

Importing the package itself imports no torch: the names below resolve on first use, from
`policies.base` (the contract) and `policies.registry`, so `import policies.names` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from policies.names import POLICY_NAMES, PolicyName

if TYPE_CHECKING:
    from policies.base import Decision, ExitPolicy, PolicyError, PolicyState, enforce_last_exit
    from policies.registry import REGISTRY, build_policy

_EXPORTS = {"Decision": "policies.base", "ExitPolicy": "policies.base",
            "PolicyError": "policies.base", "PolicyState": "policies.base",
            "enforce_last_exit": "policies.base", "REGISTRY": "policies.registry",
            "build_policy": "policies.registry"}

__all__ = ["POLICY_NAMES", "REGISTRY", "Decision", "ExitPolicy", "PolicyError", "PolicyName",
           "PolicyState", "build_policy", "enforce_last_exit"]


def __getattr__(name: str) -> Any:
    """The torch-backed exports, imported on first access (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'policies' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
