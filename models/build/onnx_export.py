"""`eeserve export DIR --format onnx`: per-layer graphs in the artifact, checked against torch.

    DIR/onnx/fp32/embed.onnx, layer_{k}.onnx    exported from the artifact's own modules
    DIR/onnx/int8/...                           the same graphs, weights quantised to int8
    manifest["onnx"][precision] = {graphs, opset, onnxruntime, weights_sha256, parity}

fp32 parity: every exit's logits equal torch's to `PARITY_ATOL` on the validation and test
texts, and every calibrated policy gives the same exits and predictions on both backends; the
fp32 calibration then serves the ONNX backend too. int8 changes predictions, so it gets its own
cached logits and its own calibration (policies/fit/calibration.py `calibrate_artifact`).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from models.artifact import (
    WEIGHTS,
    ArtifactError,
    ExitLogits,
    read_manifest,
    save_exit_logits,
    write_manifest,
)
from models.build.eval_texts import EvalTexts, load_eval_texts
from models.build.onnx_graphs import OPSET, export_graphs
from models.environment import stamp
from models.loading import BackendChoice, load_text_artifact
from models.onnx_backend import OnnxTextModel

PARITY_ATOL = 1e-4
PARITY_LOGITS = "parity_logits.safetensors"  # {"torch", "onnx"}: (N, L, C) on the eval texts
PRECISIONS = ("fp32", "int8")

# (manifest, torch logits (N, L, C), onnx logits (N, L, C)) -> mismatching rows per policy;
# given by the caller (policies/fit/parity.py), so models/ does not import policies/
PolicyCheck = Callable[[Mapping[str, Any], torch.Tensor, torch.Tensor], dict[str, int]]


@dataclass
class ExportReport:
    root: Path
    precision: str
    graphs: list[str]
    seconds: float
    parity: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        p = self.parity
        if self.precision == "fp32":
            verdict = "passed" if p.get("passed") else "FAILED"
            return (f"exported {len(self.graphs)} ONNX graphs to {self.root}/onnx/fp32 in "
                    f"{self.seconds:.1f}s; parity {verdict}: max |logit diff| "
                    f"{p.get('max_abs_diff'):.2e} on {p.get('rows')} texts, policy mismatches "
                    f"{p.get('policy_mismatches')}")
        return (f"exported {len(self.graphs)} int8 ONNX graphs to {self.root}/onnx/int8 in "
                f"{self.seconds:.1f}s; final prediction = fp32 on "
                f"{p.get('final_agreement', 0):.2%} of {p.get('rows')} texts")


def graph_dir(root: Path, precision: str) -> Path:
    return root / "onnx" / precision


def export_onnx(root: str | Path, precision: str = "fp32", progress: bool = True,
                policy_check: PolicyCheck | None = None) -> ExportReport:
    """Export (fp32, or int8 from the fp32 graphs), check parity, record it in the manifest."""
    root = Path(root)
    if precision not in PRECISIONS:
        raise ArtifactError(f"--precision {precision!r}: choose one of {list(PRECISIONS)}")
    t0 = time.perf_counter()
    loaded = load_text_artifact(root, backend="torch")
    texts = load_eval_texts(root, loaded.manifest)
    out = graph_dir(root, precision)
    if precision == "fp32":  # exported from its own copy: tracing changes the module
        source = load_text_artifact(root, backend="torch", verify=False).model
        if out.exists():
            shutil.rmtree(out)
        graphs = export_graphs(source, str(out))
    else:
        if out.exists():
            shutil.rmtree(out)
        fp32 = graph_dir(root, "fp32")
        if not (fp32 / "embed.onnx").exists():
            export_onnx(root, "fp32", progress, policy_check)
        graphs = quantise_graphs(fp32, out)
    _say(progress, f"checking {precision} graphs against torch on {texts.rows} texts")
    parity = check_parity(root, loaded, texts, precision, policy_check)
    entry = {"graphs": [f"onnx/{precision}/{g}" for g in graphs], "opset": OPSET,
             "onnxruntime": _ort_version(), "weights_sha256": loaded.manifest["files"][WEIGHTS],
             "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "parity": parity}
    manifest = read_manifest(root, verify=False)
    manifest["onnx"] = {**(manifest.get("onnx") or {}), precision: entry}
    write_manifest(root, stamp(manifest, "onnx"))  # rehashes every file, the graphs included
    return ExportReport(root, precision, graphs, time.perf_counter() - t0, parity)


def quantise_graphs(src: Path, dst: Path) -> list[str]:
    """Dynamic int8 quantisation of every graph's MatMul weights, one scale per output channel
    (activations stay float). Per-tensor scales changed 4.5 % of the default model's final
    predictions (-1.42 points on test); per-channel 1.6 % (-0.09 points): docs/benchmarks/
    accuracy.md, "Precision: int8"."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))
    dst.mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in src.glob("*.onnx"))
    for name in names:
        quantize_dynamic(str(src / name), str(dst / name), weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul"], per_channel=True)
    return names


def check_parity(root: Path, loaded: Any, texts: EvalTexts, precision: str,
                 policy_check: PolicyCheck | None = None) -> dict[str, Any]:
    """Compare the graphs with the torch step path on the artifact's evaluation texts."""
    onnx = OnnxTextModel(graph_dir(root, precision), loaded.model.num_exits,
                         loaded.model.tokenizer, loaded.model.config, precision)
    ref, got = all_logits(loaded.model, texts.texts), all_logits(onnx, texts.texts)
    if precision == "fp32":  # kept so a later calibration can re-check its policies
        save_file({"torch": ref.contiguous(), "onnx": got.contiguous()},
                  str(root / PARITY_LOGITS))
    diff = float((ref - got).abs().max())
    final = float((ref[:, -1].argmax(-1) == got[:, -1].argmax(-1)).double().mean())
    report: dict[str, Any] = {"rows": texts.rows, "texts": texts.source, "max_abs_diff": diff,
                              "atol": PARITY_ATOL, "final_agreement": final}
    if onnx.has_whole:  # the one-call graph against the torch last exit
        whole = whole_logits(onnx, texts.texts)  # (N, C)
        report["whole_max_abs_diff"] = float((ref[:, -1] - whole).abs().max())
        report["whole_final_agreement"] = float(
            (ref[:, -1].argmax(-1) == whole.argmax(-1)).double().mean())
        diff = max(diff, report["whole_max_abs_diff"])
    if precision == "fp32":
        mismatches = policy_check(loaded.manifest, ref, got) if policy_check else {}
        report["policy_mismatches"] = mismatches
        report["passed"] = diff <= PARITY_ATOL and not any(mismatches.values())
    return report


@torch.inference_mode()
def whole_logits(model: OnnxTextModel, texts: list[str], batch_size: int = 32) -> torch.Tensor:
    """The whole-model graph's logits (N, C), batched like `all_logits`."""
    out = [model.run_whole(model.encode(texts[i:i + batch_size]))
           for i in range(0, len(texts), batch_size)]
    return torch.cat(out) if out else torch.empty(0)


@torch.inference_mode()
def all_logits(model: Any, texts: list[str], batch_size: int = 32) -> torch.Tensor:
    """(N, L, C) logits of every exit through a step model's stepwise path."""
    outs = []
    for start in range(0, len(texts), batch_size):
        enc = model.encode(texts[start:start + batch_size])
        outs.append(model.all_exit_logits(enc).float().cpu())
    return torch.cat(outs)


def _ort_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(f"[eeserve] {msg}", flush=True)


def cache_backend_logits(root: Path, backend: str, precision: str) -> tuple[str, dict[str, Any]]:
    """Compute every exit's logits on the artifact's val and test texts with the given backend
    and precision; save them as DIR/exit_logits.{backend}-{precision}.safetensors.

    Returns the file name and {split: ExitLogits}, for calibrating what will serve.
    """
    loaded = load_text_artifact(root, backend=BackendChoice(backend, precision),
                                precision_check=False)
    texts = load_eval_texts(root, loaded.manifest)
    splits = {}
    for name in ("val", "test"):
        rows, labels = texts.split(name)
        splits[name] = ExitLogits(all_logits(loaded.model, rows), torch.tensor(labels))
    file = f"exit_logits.{backend}-{precision}.safetensors"
    save_exit_logits(root, splits, file)
    return file, splits


def recheck_policies(root: str | Path, policy_check: PolicyCheck) -> dict[str, Any] | None:
    """After a new calibration: do the fp32 graphs still make the policies' decisions?

    Uses the logits kept at export (no model runs); updates manifest["onnx"]["fp32"]["parity"].
    Returns the new parity record, or None when the artifact has no fp32 graphs.
    """
    root = Path(root)
    manifest = read_manifest(root, verify=False)
    entry = (manifest.get("onnx") or {}).get("fp32")
    if not entry or not (root / PARITY_LOGITS).exists():
        return None
    kept = load_file(str(root / PARITY_LOGITS))
    mismatches = policy_check(manifest, kept["torch"], kept["onnx"])
    parity = {**entry["parity"], "policy_mismatches": mismatches}
    parity["passed"] = parity["max_abs_diff"] <= PARITY_ATOL and not any(mismatches.values())
    manifest["onnx"]["fp32"] = {**entry, "parity": parity}
    write_manifest(root, manifest, rehash=False)
    return parity
