"""Early-exit policies: BEEM, EENet and baselines behind one vectorised interface.

Importing the package registers every online policy in `REGISTRY` (`build_policy(name, ...)`):
beem, eenet, maxprob, entropy, patience, static, none. The offline oracles live in
`policies.oracle.ORACLES`; fitting is in `policies.calibration`.
"""

from __future__ import annotations

from policies import beem, eenet, entropy, max_softmax, none, patience, static  # noqa: F401
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
