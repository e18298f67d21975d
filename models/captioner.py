"""Multi-exit image captioner: image encoder + GPT-2-style decoder with an exit after every layer.

The decoder is a GPT-2 block stack with cross-attention (Hugging Face `GPT2LMHeadModel` with
`add_cross_attention=True`, as in `VisionEncoderDecoderModel` ViT+GPT-2 checkpoints, or a small
one trained by eeserve on EfficientNet-Lite0 features). Exit k (1-based) reads the hidden state
of the current token after decoder layer k; exits 1..L-1 are LayerNorm + Linear heads, exit L is
the decoder's own `ln_f` + `lm_head`. Every exit scores only the *caption vocabulary*
(`CaptionerConfig.vocab_ids`, the tokens seen in the training captions), so an exit check costs
H·V' multiply-adds instead of H·V (CapEEN trains the heads; see models/build/caption_training.py).

Free-running decoding is stepped per token and per layer, like the text model:

    state = model.encode_images(pixels)     # CaptionState: cross-attention K/V, empty KV cache
    tb = model.embed(state)                 # TokenBatch at layer 0 for the next token of every row
    out = model.step(tb, k)                 # layer k on the rows in flight + exit head k
    model.propagate(exited_rows)            # CALM state propagation for the skipped layers
    model.advance(state, token_ids)         # append the chosen tokens; next token

State propagation (CALM, Schuster et al. 2022): a row that exits after layer k copies its hidden
state h_k up to every skipped layer j > k, and each of them computes its own key/value projection
of h_k, so later tokens attend to a complete KV cache. That costs the ln_1 + K/V projection of
each skipped layer (2H² of a layer's ≈12H² multiply-adds); `propagate` returns how many layer
projections it ran so the engine can count it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerBase
from transformers.models.gpt2.modeling_gpt2 import GPT2Block

from models.base import StepOutput
from models.image_encoder import ImageConfig, ImageEncoder


@dataclass(frozen=True)
class CaptionerConfig:
    vocab_ids: tuple[int, ...]  # token ids every exit scores (caption vocabulary, EOS included)
    bos_token_id: int  # first decoder input
    eos_token_id: int  # ends a caption
    max_tokens: int = 32  # generated tokens per caption at most (EOS included)
    encoder: str = "efficientnet-lite0"  # or "hf-vision"
    image: ImageConfig = field(default_factory=ImageConfig)

    def to_dict(self) -> dict[str, Any]:
        return {"vocab_ids": list(self.vocab_ids), "bos_token_id": self.bos_token_id,
                "eos_token_id": self.eos_token_id, "max_tokens": self.max_tokens,
                "encoder": self.encoder,
                "image": {"size": self.image.size, "mean": list(self.image.mean),
                          "std": list(self.image.std)}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CaptionerConfig:
        im = d.get("image") or {}
        image = ImageConfig(size=int(im.get("size", 224)),
                            mean=tuple(im.get("mean", ImageConfig.mean)),
                            std=tuple(im.get("std", ImageConfig.std)))
        return cls(vocab_ids=tuple(int(i) for i in d["vocab_ids"]),
                   bos_token_id=int(d["bos_token_id"]), eos_token_id=int(d["eos_token_id"]),
                   max_tokens=int(d.get("max_tokens", 32)), encoder=str(d.get("encoder")),
                   image=image)


@dataclass
class CaptionState:
    """Sequences being captioned, between tokens. Caches are written in place by `step` /
    `propagate`; invariant between tokens: every layer holds K/V for positions 0..pos-1."""

    keys: list[torch.Tensor]  # L × (B, nh, T_max, d) self-attention keys
    values: list[torch.Tensor]  # L × (B, nh, T_max, d) self-attention values
    cross_keys: list[torch.Tensor]  # L × (B, nh, N, d) keys of the image tokens
    cross_values: list[torch.Tensor]  # L × (B, nh, N, d)
    pos: torch.Tensor  # (B,) long: tokens already in the cache = position of the next input
    last: torch.Tensor  # (B,) long: the next decoder input (BOS, then the last generated token)

    def __len__(self) -> int:
        return int(self.pos.shape[0])

    @property
    def capacity(self) -> int:
        return int(self.keys[0].shape[2])

    def filter(self, keep: torch.Tensor) -> CaptionState:
        """Keep rows where `keep` (bool (B,)) is True (finished captions leave between tokens)."""
        keep = keep.to(self.pos.device)
        return CaptionState([k[keep] for k in self.keys], [v[keep] for v in self.values],
                            [k[keep] for k in self.cross_keys],
                            [v[keep] for v in self.cross_values], self.pos[keep], self.last[keep])

    @staticmethod
    def concatenate(states: Sequence[CaptionState]) -> CaptionState:
        """Merge states (new captions join between tokens); caches are padded to one capacity."""
        if not states:
            raise ValueError("concatenate needs at least one state")
        cap = max(s.capacity for s in states)

        def cat(tensors: list[torch.Tensor], pad_to: int | None) -> torch.Tensor:
            if pad_to is not None:
                tensors = [F.pad(t, (0, 0, 0, pad_to - t.shape[2])) for t in tensors]
            return torch.cat(tensors)

        layers = range(len(states[0].keys))
        return CaptionState(
            [cat([s.keys[i] for s in states], cap) for i in layers],
            [cat([s.values[i] for s in states], cap) for i in layers],
            [cat([s.cross_keys[i] for s in states], None) for i in layers],
            [cat([s.cross_values[i] for s in states], None) for i in layers],
            torch.cat([s.pos for s in states]), torch.cat([s.last for s in states]))


@dataclass
class TokenBatch:
    """Rows of `state` whose current token is in flight: hidden state after `layer` layers."""

    state: CaptionState
    rows: torch.Tensor  # (b,) long: rows of `state`
    hidden: torch.Tensor  # (b, H) hidden state of the current token
    layer: int  # decoder layers already applied (0 = embeddings)
    whole: bool = False  # rows == arange(len(state)): caches can be sliced, not gathered

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def filter(self, keep: torch.Tensor) -> TokenBatch:
        keep = keep.to(self.rows.device)
        whole = self.whole and bool(keep.all())
        return TokenBatch(self.state, self.rows[keep], self.hidden[keep], self.layer, whole)


class ExitHead(nn.Module):
    """LayerNorm → Linear(H → V'): logits over the caption vocabulary."""

    def __init__(self, hidden: int, vocab: int, eps: float):
        super().__init__()
        self.norm = nn.LayerNorm(hidden, eps=eps)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(hidden))  # (..., V')


class MultiExitCaptioner(nn.Module):
    """Image encoder + GPT-2 decoder + one exit per decoder layer. Never decides to exit."""

    vocab_ids: torch.Tensor  # (V',) buffer: exit index → token id
    vocab_index: torch.Tensor  # (V,) buffer: token id → exit index (-1: not in the vocabulary)

    def __init__(self, encoder: ImageEncoder, decoder: GPT2LMHeadModel,
                 tokenizer: PreTrainedTokenizerBase, config: CaptionerConfig):
        super().__init__()
        dcfg = decoder.config
        if dcfg.model_type != "gpt2" or not dcfg.add_cross_attention:
            raise ValueError(f"unsupported decoder {dcfg.model_type!r}: need GPT-2 with "
                             f"add_cross_attention=True")
        self.encoder = encoder
        self.decoder = decoder
        self.tokenizer = tokenizer
        self.config = config
        h, v = int(dcfg.n_embd), len(config.vocab_ids)
        self.heads = nn.ModuleList(ExitHead(h, v, dcfg.layer_norm_epsilon)
                                   for _ in range(dcfg.n_layer - 1))
        ids = torch.tensor(config.vocab_ids, dtype=torch.long)
        index = torch.full((dcfg.vocab_size,), -1, dtype=torch.long)
        index[ids] = torch.arange(len(ids))
        self.register_buffer("vocab_ids", ids, persistent=False)  # (V',) exit index → token id
        self.register_buffer("vocab_index", index, persistent=False)  # (V,) token id → index
        self._final_w: tuple[Any, torch.Tensor] | None = None
        eos = int(index[config.eos_token_id])
        if eos < 0:
            raise ValueError("the caption vocabulary must contain the EOS token")
        self.eos_index = eos

    # ---- shape facts -----------------------------------------------------------------------
    @property
    def blocks(self) -> Sequence[GPT2Block]:
        """The decoder layers (the GPT-2 `transformer.h` module list)."""
        return cast("Sequence[GPT2Block]", self.decoder.transformer.h)

    @property
    def exit_heads(self) -> Sequence[ExitHead]:
        """Exit heads 1..L-1 (exit L is the decoder's own ln_f + lm_head)."""
        return cast("Sequence[ExitHead]", self.heads)

    @property
    def num_exits(self) -> int:
        return len(self.blocks)

    @property
    def hidden_size(self) -> int:
        return int(self.decoder.config.n_embd)

    @property
    def num_heads(self) -> int:
        return int(self.decoder.config.n_head)

    @property
    def max_positions(self) -> int:
        return int(self.decoder.config.n_positions)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def init_heads_from_final(self) -> None:
        """Start every exit head as a copy of the final ln_f + lm_head (restricted rows)."""
        ln_f, w = self.decoder.transformer.ln_f, self.decoder.lm_head.weight
        with torch.no_grad():
            for head in self.exit_heads:
                head.norm.load_state_dict(ln_f.state_dict())
                head.out.weight.copy_(w[self.vocab_ids])
                head.out.bias.zero_()

    # ---- exits ----------------------------------------------------------------------------
    def _final_weight(self) -> torch.Tensor:
        w = self.decoder.lm_head.weight
        key = (w.data_ptr(), w._version, w.dtype, w.device)
        if self.training or torch.is_grad_enabled():
            return w[self.vocab_ids]  # (V', H), differentiable
        if self._final_w is None or self._final_w[0] != key:
            self._final_w = (key, w[self.vocab_ids].contiguous())
        return self._final_w[1]

    def exit_logits(self, hidden: torch.Tensor, k: int) -> torch.Tensor:
        """(..., H) hidden after layer k → (..., V') logits of exit k."""
        if k < self.num_exits:
            return self.exit_heads[k - 1](hidden)
        return F.linear(self.decoder.transformer.ln_f(hidden), self._final_weight())

    def token_ids(self, index: torch.Tensor) -> torch.Tensor:
        """Exit-vocabulary indices (B,) → tokenizer ids (B,)."""
        return self.vocab_ids[index.to(self.vocab_ids.device)]

    # ---- encoder --------------------------------------------------------------------------
    def memory(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.encoder(pixels)  # (B, N, H)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape  # (B, T, H) → (B, nh, T, d)
        return x.view(b, t, self.num_heads, -1).transpose(1, 2)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        b, _, t, _ = x.shape  # (B, nh, T, d) → (B, T, H)
        return x.transpose(1, 2).reshape(b, t, self.hidden_size)

    def cross_kv(self, memory: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer the keys and values (B, nh, N, d) of the image tokens."""
        out = []
        for blk in self.blocks:
            k, v = blk.crossattention.c_attn(memory).split(self.hidden_size, dim=2)  # (B, N, H)
            out.append((self._heads(k), self._heads(v)))
        return out

    # ---- step API ---------------------------------------------------------------------------
    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor, capacity: int | None = None) -> CaptionState:
        """Encode (B, 3, S, S) images: cross-attention K/V and an empty self-attention cache for
        `capacity` tokens (default: max_tokens, within the decoder's positions)."""
        pixels = pixels.to(self.device, dtype=next(self.parameters()).dtype)
        cross = self.cross_kv(self.memory(pixels))
        b = pixels.shape[0]
        cap = min(capacity or self.config.max_tokens, self.max_positions)
        d = self.hidden_size // self.num_heads
        like = cross[0][0]
        keys = [like.new_zeros(b, self.num_heads, cap, d) for _ in self.blocks]
        values = [like.new_zeros(b, self.num_heads, cap, d) for _ in self.blocks]
        pos = torch.zeros(b, dtype=torch.long, device=self.device)
        last = torch.full((b,), self.config.bos_token_id, dtype=torch.long, device=self.device)
        return CaptionState(keys, values, [c[0] for c in cross], [c[1] for c in cross], pos, last)

    @torch.inference_mode()
    def embed(self, state: CaptionState) -> TokenBatch:
        """Layer-0 state of the next token of every row: token + position embedding."""
        if bool((state.pos >= state.capacity).any()):
            raise ValueError(f"KV cache full ({state.capacity} tokens)")
        tr = self.decoder.transformer
        hidden = tr.wte(state.last) + tr.wpe(state.pos)  # (B, H)
        rows = torch.arange(len(state), device=state.pos.device)
        return TokenBatch(state, rows, hidden, 0, whole=True)

    @torch.inference_mode()
    def step(self, tb: TokenBatch, k: int) -> StepOutput:
        """Run decoder layer k (1-based) on the rows in flight, store their K/V, exit head k."""
        if tb.layer != k - 1:
            raise ValueError(f"token batch is at layer {tb.layer}, cannot run layer {k}")
        hidden = self._step_layer(tb, k - 1)  # (b, H)
        nxt = TokenBatch(tb.state, tb.rows, hidden, k, tb.whole)
        return StepOutput(logits=self.exit_logits(hidden, k), batch=nxt)

    @torch.inference_mode()
    def propagate(self, tb: TokenBatch) -> int:
        """CALM state propagation: copy each row's hidden state (after `tb.layer` layers) up to
        every skipped layer and store that layer's K/V of it. Returns layer projections run."""
        if len(tb) == 0 or tb.layer >= self.num_exits:
            return 0
        for i in range(tb.layer, self.num_exits):
            blk = self.blocks[i]
            h = blk.ln_1(tb.hidden)  # (b, H)
            w, bias = blk.attn.c_attn.weight, blk.attn.c_attn.bias  # Conv1D: (H, 3H), (3H,)
            kv = torch.addmm(bias[self.hidden_size:], h, w[:, self.hidden_size:])  # (b, 2H)
            k, v = kv.view(len(tb), 2, self.num_heads, -1).unbind(1)  # (b, nh, d) each
            self._write(tb, i, k, v)
        return (self.num_exits - tb.layer) * len(tb)

    @staticmethod
    def advance(state: CaptionState, tokens: torch.Tensor) -> None:
        """After every row's token is decided: it becomes the next input (in place)."""
        state.last = tokens.to(state.last.device)
        state.pos = state.pos + 1

    def _write(self, tb: TokenBatch, i: int, k: torch.Tensor, v: torch.Tensor) -> None:
        st = tb.state
        p = st.pos[tb.rows]  # (b,)
        st.keys[i][tb.rows, :, p] = k.to(st.keys[i].dtype)  # (b, nh, d) at (row, :, pos)
        st.values[i][tb.rows, :, p] = v.to(st.values[i].dtype)

    def _step_layer(self, tb: TokenBatch, i: int) -> torch.Tensor:
        blk, st, x = self.blocks[i], tb.state, tb.hidden  # x: (b, H)
        q, k, v = blk.attn.c_attn(blk.ln_1(x)).split(self.hidden_size, dim=-1)  # (b, H) each
        self._write(tb, i, k.view(len(tb), self.num_heads, -1), v.view(len(tb), self.num_heads, -1))
        p = st.pos[tb.rows]  # (b,)
        t = int(p.max()) + 1
        if tb.whole:
            keys, values = st.keys[i][:, :, :t], st.values[i][:, :, :t]  # (b, nh, t, d)
            ck, cv = st.cross_keys[i], st.cross_values[i]  # (b, nh, N, d)
        else:
            keys, values = st.keys[i][tb.rows, :, :t], st.values[i][tb.rows, :, :t]
            ck, cv = st.cross_keys[i][tb.rows], st.cross_values[i][tb.rows]
        mask = (torch.arange(t, device=p.device)[None, :] <= p[:, None])[:, None, None, :]
        qh = q.view(len(tb), self.num_heads, 1, -1)  # (b, nh, 1, d)
        a = F.scaled_dot_product_attention(qh, keys, values, attn_mask=mask,
                                           scale=blk.attn.scaling)  # (b, nh, 1, d)
        x = x + blk.attn.c_proj(a.reshape(len(tb), self.hidden_size))
        cq = blk.crossattention.q_attn(blk.ln_cross_attn(x)).view(len(tb), self.num_heads, 1, -1)
        c = F.scaled_dot_product_attention(cq, ck, cv, scale=blk.crossattention.scaling)
        x = x + blk.crossattention.c_proj(c.reshape(len(tb), self.hidden_size))
        return x + blk.mlp(blk.ln_2(x))  # (b, H)

    # ---- training / offline path (teacher forcing, all exits) -------------------------------
    def forward(self, memory: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits of every exit: memory (B, N, H), ids (B, T) → (B, L, T, V').
        Right padding needs no mask: causal attention never looks at later (padding) tokens."""
        return torch.stack([self.exit_logits(h, k + 1)
                            for k, h in enumerate(self.hidden_states(memory, input_ids))], dim=1)

    def hidden_states(self, memory: torch.Tensor, input_ids: torch.Tensor) -> list[torch.Tensor]:
        """L tensors (B, T, H): the hidden state after each decoder layer (before ln_f)."""
        tr = self.decoder.transformer
        t = input_ids.shape[1]
        x = tr.drop(tr.wte(input_ids) + tr.wpe(torch.arange(t, device=input_ids.device)))
        cross = self.cross_kv(memory)
        out = []
        for blk, (ck, cv) in zip(self.blocks, cross, strict=True):
            q, k, v = blk.attn.c_attn(blk.ln_1(x)).split(self.hidden_size, dim=2)  # (B, T, H)
            drop = blk.attn.attn_dropout.p if self.training else 0.0
            a = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v),
                                               is_causal=True, dropout_p=drop,
                                               scale=blk.attn.scaling)
            x = x + blk.attn.resid_dropout(blk.attn.c_proj(self._merge(a)))
            cq = self._heads(blk.crossattention.q_attn(blk.ln_cross_attn(x)))
            c = F.scaled_dot_product_attention(cq, ck, cv, dropout_p=drop,
                                               scale=blk.crossattention.scaling)
            x = x + blk.crossattention.resid_dropout(blk.crossattention.c_proj(self._merge(c)))
            x = x + blk.mlp(blk.ln_2(x))
            out.append(x)
        return out


def tiny_decoder_config(vocab_size: int, layers: int = 3, hidden: int = 32, heads: int = 4,
                        positions: int = 40, bos: int = 1, eos: int = 2, pad: int = 0
                        ) -> GPT2Config:
    """A GPT-2 decoder config with cross-attention (random init; tests and small demos)."""
    return GPT2Config(vocab_size=vocab_size, n_positions=positions, n_embd=hidden,
                      n_layer=layers, n_head=heads, add_cross_attention=True,
                      bos_token_id=bos, eos_token_id=eos, pad_token_id=pad,
                      tie_word_embeddings=True)
