"""Do two backends make the same exit decisions? (used by the ONNX export's parity check)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from policies.registry import build_policy
from policies.replay import replay


def policy_mismatches(manifest: Mapping[str, Any], ref: torch.Tensor,
                      got: torch.Tensor) -> dict[str, int]:
    """Rows whose exit layer or prediction differ between `ref` and `got` logits (N, L, C),
    for every calibrated online policy in the manifest (and `none`)."""
    k = int(ref.shape[1])
    out = {}
    for name, cal in sorted((manifest.get("policies") or {"none": {}}).items()):
        policy = build_policy(name, k, None, cal)
        if not policy.online:
            continue
        a, b = replay(policy, ref.float()), replay(policy, got.float())  # as the engine runs
        differ = (a.exit_layer != b.exit_layer) | (a.prediction != b.prediction)  # (N,)
        out[name] = int(differ.sum())
    return out
