"""Calibrate the policies on the exit logits of the backend and precision that will serve them.

    eeserve calibrate DIR --backend onnx --precision int8

computes every exit's logits on the artifact's validation and test texts with that backend
(DIR/exit_logits.onnx-int8.safetensors), fits the policies on the validation split as
`calibrate_artifact` does for torch fp32, and stores them apart:

    manifest["calibrations"]["onnx-int8"] = {backend, precision, logits_file, exit_accuracy,
                                             policies, default_policy, reference_test_accuracy}
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from models.artifact import load_exit_logits, read_manifest, write_manifest
from models.build.onnx_export import cache_backend_logits
from models.environment import stamp
from models.onnx_loading import calibration_key
from policies.costs import manifest_costs
from policies.fit.calibration import CalibrationConfig, Split, calibrate
from policies.names import DEFAULT_POLICY


def calibrate_backend(root: str | Path, backend: str, precision: str,
                      names: Iterable[str] | None = None,
                      config: CalibrationConfig | None = None) -> dict[str, Any]:
    """Cache `backend`/`precision` exit logits, fit policies on them; returns the new entry."""
    root = Path(root)
    manifest = read_manifest(root)
    file, splits = cache_backend_logits(root, backend, precision)
    cfg = config or CalibrationConfig()
    gap = reference_gap(root, splits["val"].logits)
    if gap > 0:  # the promise is against the fp32 last exit: spend the gap from the tolerance
        cfg = replace(cfg, tolerance=max(0.0, cfg.tolerance - gap))
    k = splits["val"].num_exits
    val = Split(splits["val"].logits.double(), splits["val"].labels.long(),
                manifest_costs(manifest, k))
    fits = calibrate(val, names, cfg)
    key = calibration_key(backend, precision)
    old = ((manifest.get("calibrations") or {}).get(key) or {}).get("policies") or {}
    policies = {**old, **{name: fit.to_manifest() for name, fit in fits.items()}}
    entry = {
        "backend": backend, "precision": precision, "logits_file": file,
        "exit_accuracy": {s: _accuracy(e.logits, e.labels) for s, e in splits.items()},
        "reference_test_accuracy": (manifest.get("exit_accuracy") or {}).get("test"),
        "tolerance": cfg.tolerance, "reference_val_gap": gap,
        "policies": policies,
        "default_policy": DEFAULT_POLICY if DEFAULT_POLICY in policies else "none",
    }
    calibrations = {**(manifest.get("calibrations") or {}), key: entry}
    manifest = read_manifest(root, verify=False)
    manifest["calibrations"] = calibrations
    write_manifest(root, stamp(manifest, "calibrate"))  # the new logits file gets its sha256
    return entry


def reference_gap(root: Path, val_logits: torch.Tensor) -> float:
    """How much less accurate this backend's last exit is than the reference (torch fp32)
    last exit on the validation split (fraction; negative when it is better)."""
    ref = load_exit_logits(root, "val")
    y = ref.labels.long()
    ref_acc = float((ref.logits[:, -1].argmax(-1) == y).double().mean())
    return ref_acc - float((val_logits[:, -1].argmax(-1) == y).double().mean())


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> list[float]:
    return (logits.argmax(-1) == labels[:, None]).double().mean(0).tolist()  # (K,)
