"""The names of the online exit policies: the one list, torch-free.

`policies.registry.REGISTRY` maps exactly these names to their factories (a test checks it), the
API schemas (service/schemas.py) offer them as the `policy` choices, and calibration fits them in
this order (cheapest first). Importing this module imports no torch, so the HTTP layer may use it.
"""

from __future__ import annotations

from typing import Final, Literal, TypeGuard, get_args

PolicyName = Literal["none", "static", "maxprob", "entropy", "patience", "beem", "eenet"]
POLICY_NAMES: Final[tuple[PolicyName, ...]] = get_args(PolicyName)

DEFAULT_POLICY: Final[PolicyName] = "beem"  # what calibration makes an artifact's default
CAPTION_POLICIES: Final[tuple[PolicyName, ...]] = ("maxprob", "entropy", "patience", "static",
                                                   "none")
"""The policies the caption recipes calibrate on per-token logits."""
CAPTION_DEFAULT_POLICY: Final[PolicyName] = "maxprob"  # a captioner's default once calibrated


def is_policy_name(name: str) -> TypeGuard[PolicyName]:
    """True when `name` is one of the online policies."""
    return name in POLICY_NAMES


def known_policy(name: str | None) -> PolicyName | None:
    """`name` when it is one of the online policies, else None (for bounded metric labels)."""
    return name if name is not None and is_policy_name(name) else None
