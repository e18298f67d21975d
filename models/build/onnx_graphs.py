"""The torch modules that become ONNX graphs: the embeddings, and one encoder layer + its exit head.

Each layer graph is self-contained (inputs `hidden (B, T, H)` float, `mask (B, T)` int64;
outputs the next `hidden` and the exit's `logits (B, C)`), so a backend can run the model one
layer at a time and drop rows between layers. The attention mask is built inside the graph
(additive, eager attention), mean pooling happens inside the exit head.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from models.text_classifier import MultiExitTextClassifier

OPSET = 17


class EmbedGraph(nn.Module):
    """input_ids (B, T) int64 -> hidden (B, T, H)."""

    def __init__(self, model: MultiExitTextClassifier):
        super().__init__()
        self.embeddings: Any = model.backbone.embeddings
        self.project: Any = getattr(model.backbone, "embeddings_project", None)  # ELECTRA

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.embeddings(input_ids=input_ids)  # (B, T, E)
        return out if self.project is None else self.project(out)  # (B, T, H)


class LayerGraph(nn.Module):
    """(hidden (B, T, H), mask (B, T)) -> (hidden after layer k, exit-k logits (B, C))."""

    def __init__(self, model: MultiExitTextClassifier, k: int):
        super().__init__()
        self.layer = model.layers[k - 1]
        self.head = model.heads[k - 1]
        backbone: Any = model.backbone
        self.encoder: Any = backbone.encoder if model.is_mpnet else None

    def forward(self, hidden: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = hidden.dtype
        additive = (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min  # (B,1,1,T)
        if self.encoder is not None:  # MPNet: relative position bias, (B, heads, T, T)
            bias = self.encoder.compute_position_bias(hidden)
            out = self.layer(hidden, additive, bias)
        else:
            out = self.layer(hidden, additive)
        nxt = out[0] if isinstance(out, tuple) else out  # (B, T, H)
        return nxt, self.head(nxt, mask)  # (B, T, H), (B, C)


def eager_attention(model: MultiExitTextClassifier) -> None:
    """Switch the encoder to eager attention (the additive mask above is what it expects)."""
    backbone: Any = model.backbone
    setter = getattr(backbone, "set_attn_implementation", None)
    if setter is not None:
        setter("eager")
    else:
        backbone.config._attn_implementation = "eager"


WHOLE_GRAPH = "whole.onnx"  # input_ids, mask -> logits of the last exit (rows that cannot
# exit early run it in one call: service/engine/text_task.py)


def export_graphs(model: MultiExitTextClassifier, out_dir: str) -> list[str]:
    """Write embed.onnx, layer_{k}.onnx for k = 1..L and whole.onnx into `out_dir`; returns
    the file names."""
    import os

    os.makedirs(out_dir, exist_ok=True)
    model = model.cpu().float().eval()
    eager_attention(model)
    backbone: Any = model.backbone
    h = int(backbone.config.hidden_size)
    ids = torch.ones((2, 7), dtype=torch.long)  # (B, T) example input; axes are dynamic
    mask = torch.ones((2, 7), dtype=torch.long)
    mask[1, 5:] = 0
    hidden = torch.randn(2, 7, h)  # (B, T, H)
    names = ["embed.onnx"]
    with torch.no_grad():
        _export(EmbedGraph(model), (ids,), os.path.join(out_dir, names[0]), ["input_ids"],
                ["hidden"], {"input_ids": {0: "batch", 1: "seq"}, "hidden": {0: "batch", 1: "seq"}})
        for k in range(1, model.num_exits + 1):
            name = f"layer_{k}.onnx"
            _export(LayerGraph(model, k), (hidden, mask), os.path.join(out_dir, name),
                    ["hidden", "mask"], ["hidden_out", "logits"],
                    {"hidden": {0: "batch", 1: "seq"}, "mask": {0: "batch", 1: "seq"},
                     "hidden_out": {0: "batch", 1: "seq"}, "logits": {0: "batch"}})
            names.append(name)
    export_whole(model, os.path.join(out_dir, WHOLE_GRAPH))  # full depth in one call
    return [*names, WHOLE_GRAPH]


def _export(module: nn.Module, args: tuple[torch.Tensor, ...], path: str, inputs: list[str],
            outputs: list[str], axes: dict[str, dict[int, str]]) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about python scalars in shapes
        torch.onnx.export(module, args, path, input_names=inputs, output_names=outputs,
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False,
                          do_constant_folding=True)


class WholeGraph(nn.Module):
    """The plain full-depth model (what a user exports): input_ids, mask -> last-exit logits."""

    def __init__(self, model: MultiExitTextClassifier):
        super().__init__()
        self.embed = EmbedGraph(model)
        self.layers = nn.ModuleList(LayerGraph(model, k) for k in range(1, model.num_exits + 1))

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.embed(input_ids)  # (B, T, H)
        logits = hidden.new_zeros(0)
        for i, layer in enumerate(self.layers):
            hidden, head = layer(hidden, mask)
            if i == len(self.layers) - 1:
                logits = head  # (B, C); earlier heads are pruned from the graph as unused
        return logits


def export_whole(model: MultiExitTextClassifier, path: str) -> None:
    """One graph for the whole model at full depth (the ONNX peer's model)."""
    model = model.cpu().float().eval()
    eager_attention(model)
    ids = torch.ones((2, 7), dtype=torch.long)  # (B, T)
    mask = torch.ones((2, 7), dtype=torch.long)
    with torch.no_grad():
        _export(WholeGraph(model), (ids, mask), path, ["input_ids", "mask"], ["logits"],
                {"input_ids": {0: "batch", 1: "seq"}, "mask": {0: "batch", 1: "seq"},
                 "logits": {0: "batch"}})
