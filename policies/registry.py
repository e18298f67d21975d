"""The policy registry: an explicit table from every name in `policies.names` to its factory.

`build_policy(name, num_exits, params, calibration)` is how the engine, calibration and the
tests make a policy. The offline oracles are not here (they need labels); see policies.fit.oracle.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from policies import beem, eenet, entropy, max_softmax, none, patience, static
from policies.base import ExitPolicy, PolicyError, PolicyFactory
from policies.names import PolicyName, is_policy_name

REGISTRY: Final[Mapping[PolicyName, PolicyFactory]] = {
    "none": none.build, "static": static.build, "maxprob": max_softmax.build,
    "entropy": entropy.build, "patience": patience.build, "beem": beem.build,
    "eenet": eenet.build,
}


def build_policy(name: str, num_exits: int, params: Mapping[str, Any] | None = None,
                 calibration: Mapping[str, Any] | None = None) -> ExitPolicy:
    """Build a registered policy.

    Args:
        name: a name from `policies.names.POLICY_NAMES` (`beem`, `eenet`, `maxprob`, ...).
        num_exits: exits of the model.
        params: explicit parameters (a request's overrides); they win over the calibration.
        calibration: fitted parameters from the artifact manifest (`manifest["policies"][name]`).

    Raises:
        PolicyError: unknown name or bad parameters, naming the value.
    """
    if not is_policy_name(name):
        raise PolicyError(f"unknown policy {name!r}; known: {sorted(REGISTRY)}")
    return REGISTRY[name](num_exits, dict(params or {}), calibration)
