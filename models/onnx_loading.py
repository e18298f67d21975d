"""Load a text artifact onto the ONNX Runtime backend, or say in one line why it cannot be.

Refused: a non-CPU device, onnxruntime missing, graphs never exported, a graph missing or not
matching its sha256, graphs exported from other weights (stale), fp32 graphs that failed the
parity check, or a precision without its own calibration.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from models.artifact import WEIGHTS
from models.hashing import sha256_file
from models.onnx_backend import OnnxTextModel, OrtOptions, onnxruntime_available
from models.text_classifier import TextClassifierConfig


def calibration_key(backend: str, precision: str) -> str:
    """Where a backend/precision's own calibration lives in manifest["calibrations"]."""
    return f"{backend}-{precision}"


def onnx_refusal(root: Path, manifest: Mapping[str, Any], precision: str,
                 on_cpu: bool, precision_check: bool = True, verified: bool = False) -> str | None:
    """None when the artifact can serve on ONNX Runtime at `precision`, else the reason.
    `verified`: every file's sha256 was already checked (read_manifest), so graphs are not
    hashed again."""
    if not on_cpu:
        return "the onnx backend runs on the CPU only"
    if not onnxruntime_available():
        return "onnxruntime is not installed (pip install onnxruntime)"
    entry = (manifest.get("onnx") or {}).get(precision)
    if not entry:
        flag = "" if precision == "fp32" else f" --precision {precision}"
        return f"no {precision} ONNX graphs; run `eeserve export {root} --format onnx{flag}`"
    files = manifest.get("files") or {}
    if entry.get("weights_sha256") != files.get(WEIGHTS):
        return f"the {precision} ONNX graphs were exported from other weights (stale); re-export"
    for rel in entry.get("graphs") or []:
        path = root / rel
        if not path.exists():
            return f"missing ONNX graph {rel}"
        if rel not in files or (not verified and sha256_file(path) != files[rel]):
            return f"ONNX graph {rel} does not match its sha256 (corrupt or tampered)"
    parity = entry.get("parity") or {}
    if precision == "fp32" and not parity.get("passed"):
        return (f"the fp32 ONNX graphs failed the parity check (max |diff| "
                f"{parity.get('max_abs_diff')}, policy mismatches "
                f"{parity.get('policy_mismatches')})")
    if precision_check and precision != "fp32" and calibration_key("onnx", precision) not in (
            manifest.get("calibrations") or {}):
        return (f"precision {precision} was not calibrated; run `eeserve calibrate {root} "
                f"--backend onnx --precision {precision}`")
    return None


def served_manifest(manifest: Mapping[str, Any], backend: str,
                    precision: str) -> dict[str, Any]:
    """The manifest as the engine should see it: the policies calibrated for what serves."""
    out = dict(manifest)
    base = manifest.get("calibrated_on") or {"backend": "torch", "precision": "fp32"}
    own = (manifest.get("calibrations") or {}).get(calibration_key(backend, precision))
    if own is None:  # fp32 only (checked by onnx_refusal): the same decisions as torch fp32
        on = dict(base)
        if backend != base.get("backend"):
            on["parity_with"] = backend  # checked at export: same exits and predictions
    else:
        cal = own
        out.update(policies=cal.get("policies") or {},
                   exit_accuracy=cal.get("exit_accuracy", manifest.get("exit_accuracy")))
        if cal.get("default_policy"):
            out["default_policy"] = cal["default_policy"]
        on = {"backend": backend, "precision": precision}
    out["serving"] = {"backend": backend, "precision": precision, "calibrated_on": on}
    return out


def load_onnx(root: Path, manifest: Mapping[str, Any], tokenizer: Any,
              head: TextClassifierConfig, choice: Any) -> tuple[OnnxTextModel, dict[str, Any]]:
    """The ONNX step model and the manifest the engine serves it with (checked by the caller)."""
    opts = OrtOptions(intra_op_threads=choice.onnx_threads, spinning=choice.onnx_spinning)
    model = OnnxTextModel(root / "onnx" / choice.precision, int(manifest["num_exits"]),
                          tokenizer, head, choice.precision, opts)
    if calibration_key("onnx", choice.precision) not in (manifest.get("calibrations") or {}) \
            and choice.precision != "fp32":
        return model, dict(manifest)  # being calibrated now
    return model, served_manifest(manifest, "onnx", choice.precision)
