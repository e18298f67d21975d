"""The ONNX Runtime backend of the layer loop: one session per layer graph, numpy in between.

    batch = model.embed(enc)          # embed.onnx: hidden states as a numpy array
    out = model.step(batch, k)        # layer_k.onnx: next hidden (numpy) + exit-k logits (torch)

Hidden states never become torch tensors between layers; only the (B, C) exit logits are wrapped
(zero-copy) as torch tensors for the policies. ONNX Runtime releases the GIL for a whole `run`,
so the HTTP event loop keeps the second core while a layer runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.base import Encoded, StepOutput, common_layer, stepwise_exit_logits
from models.text_classifier import TextClassifierConfig, encode_texts


@dataclass(frozen=True)
class OrtOptions:
    """Session settings (chosen by measurement on 2 cores; docs/benchmarks/serving.md)."""

    intra_op_threads: int = 1  # threads per layer call
    spinning: bool = False  # spin-waiting worker threads steal the event loop's core
    optimization: str = "all"  # basic, extended or all (ORT graph optimisation level)


@dataclass
class NumpyTextBatch:
    """Rows in flight on the ONNX backend: hidden states after `layer` layers, as numpy."""

    hidden: np.ndarray  # (B, T, H) float32
    mask: np.ndarray  # (B, T) int64, 1 = real token
    layer: int
    _lengths: np.ndarray | None = field(default=None, repr=False)  # (B,) cached token counts

    def __len__(self) -> int:
        return int(self.hidden.shape[0])

    @property
    def lengths(self) -> np.ndarray:
        if self._lengths is None:
            self._lengths = self.mask.sum(axis=1)  # (B,)
        return self._lengths

    def filter(self, keep: torch.Tensor | np.ndarray | Sequence[bool]) -> NumpyTextBatch:
        """Keep rows where `keep` is True and trim padding columns no remaining row needs."""
        sel = _as_numpy_bool(keep)
        lengths = self.lengths[sel]  # (B',)
        t = int(lengths.max()) if lengths.size else 0
        return NumpyTextBatch(np.ascontiguousarray(self.hidden[sel, :t]),
                              np.ascontiguousarray(self.mask[sel, :t]), self.layer, lengths)

    @classmethod
    def concatenate(cls, batches: Sequence[NumpyTextBatch]) -> NumpyTextBatch:
        """Merge batches at the same layer, right-padding to the longest sequence."""
        common_layer(batches)
        t = max(b.hidden.shape[1] for b in batches)
        hidden = np.concatenate([_pad(b.hidden, t) for b in batches])  # (sum B_i, t, H)
        mask = np.concatenate([_pad(b.mask, t) for b in batches])  # (sum B_i, t)
        return cls(hidden, mask, batches[0].layer)


def _pad(a: np.ndarray, t: int) -> np.ndarray:
    extra = t - a.shape[1]
    if extra == 0:
        return a
    width = [(0, 0), (0, extra)] + [(0, 0)] * (a.ndim - 2)
    return np.pad(a, width)


def _as_numpy_bool(keep: torch.Tensor | np.ndarray | Sequence[bool]) -> np.ndarray:
    if isinstance(keep, torch.Tensor):
        return keep.detach().cpu().numpy().astype(bool, copy=False)
    return np.asarray(keep, dtype=bool)


def session_options(opts: OrtOptions) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = opts.intra_op_threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[opts.optimization]
    so.add_session_config_entry("session.intra_op.allow_spinning",
                                "1" if opts.spinning else "0")
    so.log_severity_level = 3
    return so


def open_session(path: Path, opts: OrtOptions) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), session_options(opts),
                                providers=["CPUExecutionProvider"])


class OnnxTextModel:
    """A `StepModel` (models/base.py) over per-layer ONNX graphs, on the CPU."""

    backend = "onnx"

    def __init__(self, graph_dir: Path, num_exits: int, tokenizer: Any,
                 config: TextClassifierConfig, precision: str = "fp32",
                 options: OrtOptions | None = None):
        self.tokenizer = tokenizer
        self.config = config
        self.precision = precision
        self.options = options or OrtOptions()
        self._embed = open_session(graph_dir / "embed.onnx", self.options)
        self._layers = [open_session(graph_dir / f"layer_{k}.onnx", self.options)
                        for k in range(1, num_exits + 1)]
        whole = graph_dir / "whole.onnx"  # absent in artifacts exported before it existed
        self._whole = open_session(whole, self.options) if whole.exists() else None

    @property
    def has_whole(self) -> bool:
        """Whether `run_whole` can answer in one call (the artifact has the whole graph)."""
        return self._whole is not None

    def run_whole(self, enc: Encoded) -> torch.Tensor:
        """The last exit's logits (B, C) in one graph call: embeddings, every layer, the last
        head (no intermediate head runs). For rows no policy may let out early."""
        if self._whole is None:
            raise ValueError("this artifact has no whole-model graph; re-export it")
        ids = enc.input_ids.numpy()  # (B, T) int64
        mask = enc.attention_mask.numpy().astype(np.int64, copy=False)  # (B, T)
        (logits,) = self._whole.run(None, {"input_ids": ids, "mask": mask})  # (B, C)
        return torch.from_numpy(logits)

    @property
    def num_exits(self) -> int:
        return len(self._layers)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def encode(self, texts: Sequence[str], max_length: int | None = None) -> Encoded:
        return encode_texts(self.tokenizer, texts, max_length or self.config.max_length)

    def embed(self, enc: Encoded) -> NumpyTextBatch:
        ids = enc.input_ids.numpy()  # (B, T) int64, zero-copy
        (hidden,) = self._embed.run(None, {"input_ids": ids})  # (B, T, H)
        mask = enc.attention_mask.numpy().astype(np.int64, copy=False)  # (B, T)
        return NumpyTextBatch(hidden, mask, 0)

    def _run(self, batch: NumpyTextBatch, k: int) -> tuple[np.ndarray, np.ndarray]:
        if batch.layer != k - 1:
            raise ValueError(f"batch is at layer {batch.layer}, cannot run layer {k}")
        hidden, logits = self._layers[k - 1].run(None, {"hidden": batch.hidden,
                                                        "mask": batch.mask})
        return hidden, logits  # (B, T, H), (B, C)

    def step(self, batch: NumpyTextBatch, k: int) -> StepOutput:
        """Encoder layer k + exit head k in one graph call."""
        hidden, logits = self._run(batch, k)
        nxt = NumpyTextBatch(hidden, batch.mask, k, batch._lengths)
        return StepOutput(logits=torch.from_numpy(logits), batch=nxt)

    def advance(self, batch: NumpyTextBatch, k: int) -> NumpyTextBatch:
        """Layer k where no exit can fire (the graph computes the small head anyway)."""
        hidden, _ = self._run(batch, k)
        return NumpyTextBatch(hidden, batch.mask, k, batch._lengths)

    def all_exit_logits(self, enc: Encoded) -> torch.Tensor:
        return stepwise_exit_logits(self, enc)  # (B, L, C)


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True
