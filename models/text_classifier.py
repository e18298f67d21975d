"""Multi-exit text classifier: any Hugging Face encoder with an exit head after every layer.

Exit k (1-based) reads the hidden states after encoder layer k, mean-pools them over real tokens
and maps them through a small head to class logits (PABEE / BEEM style: one head per layer,
joint fine-tuning with a depth-weighted loss, see models/build/training.py).

Inference is stepwise so the engine can drop rows between layers:

    batch = model.embed(model.encode(texts))   # TextBatch at layer 0
    for k in 1..L:  out = model.step(batch, k); batch = out.batch  (filtered by the engine)

Supported encoder families: BERT-like (BERT, MiniLM, RoBERTa, XLM-R, ELECTRA: `encoder.layer`),
DistilBERT (`transformer.layer`) and MPNet (`encoder.layer` + relative position bias); the list
the CLI accepts is `models.build.backbones.FAMILIES`. The last exit may instead be a fine-tuned
classifier's own head (`TextClassifierConfig.last_head`, see models/hf_heads.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.masking_utils import create_bidirectional_mask

from models.base import Encoded, StepOutput, common_layer, stepwise_exit_logits


@dataclass(frozen=True)
class TextClassifierConfig:
    num_labels: int  # classes per exit head
    head_hidden: int = 0  # width of the head's hidden layer; 0 = the encoder's hidden size
    dropout: float = 0.1  # dropout before each head layer (training only)
    max_length: int = 128  # tokens per text, special tokens included; longer texts are cut
    last_head: str = "exit"  # "exit" (mean-pooling ExitHead) or a kind from models.hf_heads


@dataclass
class TextBatch:
    """Rows of texts in flight: hidden states after `layer` encoder layers."""

    hidden: torch.Tensor  # (B, T, H) hidden states after `layer` layers
    attention_mask: torch.Tensor  # (B, T) 1 = real token, 0 = padding
    layer: int  # encoder layers already applied (0 = embeddings only)
    _layer_mask: Any = field(default=None, repr=False)  # cached attention mask for the layers
    _mask_ready: bool = field(default=False, repr=False)
    _pool: Any = field(default=None, repr=False)  # cached (B, 1, T) mean-pooling weights

    def __len__(self) -> int:
        return int(self.hidden.shape[0])

    def filter(self, keep: torch.Tensor) -> TextBatch:
        """Keep rows where `keep` is True and trim padding columns no remaining row needs."""
        keep = keep.to(self.hidden.device)
        mask = self.attention_mask[keep]  # (B', T)
        t = int(mask.sum(dim=1).max().item()) if mask.shape[0] else 0
        return TextBatch(self.hidden[keep][:, :t], mask[:, :t].contiguous(), self.layer)

    @classmethod
    def concatenate(cls, batches: Sequence[TextBatch]) -> TextBatch:
        """Merge batches at the same layer, right-padding to the longest sequence."""
        common_layer(batches)
        t = max(b.hidden.shape[1] for b in batches)
        hs, ms = [], []
        for b in batches:
            pad = t - b.hidden.shape[1]
            hs.append(nn.functional.pad(b.hidden, (0, 0, 0, pad)))  # (B_i, t, H)
            ms.append(nn.functional.pad(b.attention_mask, (0, pad)))  # (B_i, t)
        return cls(torch.cat(hs), torch.cat(ms), batches[0].layer)


class ExitHead(nn.Module):
    """Masked mean pooling → dropout → Linear → tanh → dropout → Linear (class logits)."""

    def __init__(self, hidden: int, inner: int, num_labels: int, dropout: float):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.dense = nn.Linear(hidden, inner)
        self.out = nn.Linear(inner, num_labels)

    def pooled_logits(self, hidden: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
        """Inference path: mean pooling as one batched matmul with precomputed weights."""
        pooled = torch.bmm(pool, hidden).squeeze(1)  # (B, H)
        return self.out(torch.tanh(self.dense(pooled)))  # (B, C)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, H)
        x = torch.tanh(self.dense(self.drop(pooled)))  # (B, inner)
        return self.out(self.drop(x))  # (B, C)


def _layers_of(backbone: nn.Module) -> nn.ModuleList:
    for path in ("encoder.layer", "transformer.layer", "layers", "encoder.layers"):
        mod: Any = backbone
        for part in path.split("."):
            mod = getattr(mod, part, None)
            if mod is None:
                break
        if isinstance(mod, nn.ModuleList):
            return mod
    raise ValueError(f"unsupported encoder {type(backbone).__name__}: no layer list found")


class MultiExitTextClassifier(nn.Module):
    """Encoder + one exit head per layer. Offers `embed` / `step`; never decides to exit.

    The reference `StepModel` (models/base.py): torch eager, any device and dtype. Training,
    export and GPU serving use it; models/onnx_backend.py is the fast CPU backend.
    """

    backend = "torch"

    def __init__(self, backbone: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 config: TextClassifierConfig):
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.config = config
        h = int(backbone.config.hidden_size)
        inner = config.head_hidden or h
        heads: list[nn.Module] = [ExitHead(h, inner, config.num_labels, config.dropout)
                                  for _ in _layers_of(backbone)]
        if config.last_head != "exit":  # a user classifier's own head ends the model
            from models.hf_heads import build_hf_head

            heads[-1] = build_hf_head(config.last_head, backbone.config)
        self.heads = nn.ModuleList(heads)
        self.is_mpnet = backbone.config.model_type == "mpnet"

    @property
    def layers(self) -> nn.ModuleList:
        """The encoder's own layer list (not registered twice)."""
        return _layers_of(self.backbone)

    @property
    def num_exits(self) -> int:
        return len(self.layers)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def precision(self) -> str:
        dtype = next(self.parameters()).dtype
        return {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "fp32")

    @classmethod
    def from_backbone(cls, backbone_dir: str, tokenizer: PreTrainedTokenizerBase,
                      config: TextClassifierConfig) -> MultiExitTextClassifier:
        """Load pretrained encoder weights (Auto classes) and add fresh exit heads."""
        cfg = AutoConfig.from_pretrained(backbone_dir)
        kwargs: dict[str, Any] = {"add_pooling_layer": False} if cfg.model_type in _POOLED else {}
        return cls(AutoModel.from_pretrained(backbone_dir, **kwargs), tokenizer, config)

    @classmethod
    def from_config(cls, backbone_config: PretrainedConfig, tokenizer: PreTrainedTokenizerBase,
                    config: TextClassifierConfig) -> MultiExitTextClassifier:
        """Build the architecture with random weights (to load a state dict into)."""
        kwargs: dict[str, Any] = (
            {"add_pooling_layer": False} if backbone_config.model_type in _POOLED else {})
        return cls(AutoModel.from_config(backbone_config, **kwargs), tokenizer, config)

    # ---- tokenisation -------------------------------------------------------------------
    def encode(self, texts: Sequence[str], max_length: int | None = None) -> Encoded:
        """Tokenise, cutting texts longer than `max_length` tokens (and saying which were cut)."""
        enc = encode_texts(self.tokenizer, texts, max_length or self.config.max_length)
        if self.device.type == "cpu":
            return enc
        return replace(enc, input_ids=enc.input_ids.to(self.device),
                       attention_mask=enc.attention_mask.to(self.device))

    # ---- step API -----------------------------------------------------------------------
    @torch.inference_mode()
    def embed(self, enc: Encoded) -> TextBatch:
        """Layer-0 state: token + position embeddings."""
        return TextBatch(self._embed(enc.input_ids), enc.attention_mask, 0)

    @torch.inference_mode()
    def step(self, batch: TextBatch, k: int) -> StepOutput:
        """Run encoder layer k (1-based) on `batch` (at layer k-1) and exit head k."""
        if batch.layer != k - 1:
            raise ValueError(f"batch is at layer {batch.layer}, cannot run layer {k}")
        hidden = self._layer(batch, k - 1)  # (B, T, H)
        head = self.heads[k - 1]
        if isinstance(head, ExitHead):  # fast path: pooling weights cached per batch
            logits = head.pooled_logits(hidden, self._pool(batch))  # (B, C)
        else:  # any other head: forward(hidden (B, T, H), mask (B, T)) -> (B, C)
            logits = head(hidden, batch.attention_mask)
        nxt = replace(batch, hidden=hidden, layer=k)
        return StepOutput(logits=logits, batch=nxt)

    @torch.inference_mode()
    def advance(self, batch: TextBatch, k: int) -> TextBatch:
        """Run encoder layer k without its exit head (for exits no policy can take)."""
        if batch.layer != k - 1:
            raise ValueError(f"batch is at layer {batch.layer}, cannot run layer {k}")
        return replace(batch, hidden=self._layer(batch, k - 1), layer=k)

    def _embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        embeddings: Any = self.backbone.embeddings  # the encoder family's embedding module
        x = embeddings(input_ids=input_ids)  # (B, T, E)
        project: Any = getattr(self.backbone, "embeddings_project", None)  # ELECTRA when E != H
        return x if project is None else project(x)  # (B, T, H)

    def _mask(self, batch: TextBatch) -> Any:
        if not batch._mask_ready:
            batch._layer_mask = create_bidirectional_mask(
                config=self.backbone.config, inputs_embeds=batch.hidden,
                attention_mask=batch.attention_mask)
            batch._mask_ready = True
        return batch._layer_mask

    def _pool(self, batch: TextBatch) -> torch.Tensor:
        if batch._pool is None:
            m = batch.attention_mask.to(batch.hidden.dtype)  # (B, T)
            batch._pool = (m / m.sum(1, keepdim=True).clamp(min=1.0)).unsqueeze(1)  # (B, 1, T)
        return batch._pool

    def _layer(self, batch: TextBatch, i: int) -> torch.Tensor:
        mask = self._mask(batch)
        if self.is_mpnet:
            encoder: Any = self.backbone.encoder  # MPNetEncoder
            bias = encoder.compute_position_bias(batch.hidden)  # (B, heads, T, T)
            out = self.layers[i](batch.hidden, mask, bias)
        else:
            out = self.layers[i](batch.hidden, mask)
        return out[0] if isinstance(out, tuple) else out

    # ---- training / offline path ------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """All exits at once (training, caching logits): returns (B, L, C) logits."""
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                            output_hidden_states=True)
        hs = out.hidden_states[1:]  # L tensors of (B, T, H)
        logits = [head(h, attention_mask) for head, h in zip(self.heads, hs, strict=True)]
        return torch.stack(logits, dim=1)  # (B, L, C)

    @torch.inference_mode()
    def all_exit_logits(self, enc: Encoded) -> torch.Tensor:
        """(B, L, C) logits of every exit, computed with the stepwise path."""
        return stepwise_exit_logits(self, enc)


def encode_texts(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str],
                 max_length: int) -> Encoded:
    """Tokenise on the CPU, right-padded; texts over `max_length` tokens are cut (and marked)."""
    rows, truncated = tokenize_rows(tokenizer, texts, max_length)
    return pack_rows(rows, truncated, tokenizer.pad_token_id or 0)


def tokenize_rows(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str],
                  max_length: int) -> tuple[list[list[int]], list[bool]]:
    """Token ids per text (special tokens included) and whether each was cut to `max_length`."""
    m = max_length
    # one tokenizer pass at m + 1 tokens: a row that fills them was longer than m; it is
    # then cut to m keeping its closing special token, as truncation=True would
    ids = tokenizer(list(texts), add_special_tokens=True, truncation=True,
                    max_length=m + 1)["input_ids"]
    truncated = [len(row) > m for row in ids]
    rows = [row[:m - 1] + row[-1:] if cut else row for row, cut in zip(ids, truncated, strict=True)]
    return rows, truncated


def pack_rows(rows: Sequence[list[int]], truncated: Sequence[bool], pad: int) -> Encoded:
    """Right-pad token rows into (B, T) ids and mask, on the CPU."""
    lengths = [len(row) for row in rows]
    t = max(lengths)
    ids = np.full((len(rows), t), pad, dtype=np.int64)  # (B, T)
    mask = np.zeros((len(rows), t), dtype=np.int64)  # (B, T)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = row
        mask[i, :len(row)] = 1
    return Encoded(torch.from_numpy(ids), torch.from_numpy(mask), lengths, list(truncated))


_POOLED = {"bert", "roberta", "xlm-roberta", "camembert", "mpnet"}  # have add_pooling_layer
