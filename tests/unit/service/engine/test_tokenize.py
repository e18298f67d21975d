"""Concurrent requests share tokenizer calls and each gets exactly its own rows."""

from __future__ import annotations

import asyncio

import torch

from models.build.tiny import tiny_backbone_config, tiny_tokenizer
from models.text_classifier import MultiExitTextClassifier, TextClassifierConfig
from service.engine.tokenize import TokenBatcher


def _model() -> MultiExitTextClassifier:
    tok = tiny_tokenizer()
    return MultiExitTextClassifier.from_config(
        tiny_backbone_config("bert", layers=2, vocab_size=len(tok)), tok,
        TextClassifierConfig(num_labels=2, max_length=8))


def test_concurrent_requests_share_calls_and_match_encode() -> None:
    model = _model()
    requests = [["a great film"], ["dull", "awful and boring and long and slow and bad"],
                ["wonderful acting"]] * 4

    async def go() -> tuple[list, int]:
        b = TokenBatcher(model)
        out = await asyncio.gather(*(b.encode(r) for r in requests))
        return out, b.calls

    encs, calls = asyncio.run(go())
    assert calls < len(requests)  # later arrivals waited for one shared call
    for texts, enc in zip(requests, encs, strict=True):
        ref = model.encode(texts)
        assert torch.equal(enc.input_ids, ref.input_ids)
        assert torch.equal(enc.attention_mask, ref.attention_mask)
        assert enc.lengths == ref.lengths and enc.truncated == ref.truncated
    assert encs[1].truncated == [False, True]  # cut to max_length and said so


def test_a_failing_tokenizer_fails_every_waiting_request() -> None:
    model = _model()

    async def go() -> list[BaseException | object]:
        b = TokenBatcher(model)
        return await asyncio.gather(b.encode([None]),  # type: ignore[list-item]
                                    b.encode(["fine"]), return_exceptions=True)

    out = asyncio.run(go())
    assert isinstance(out[0], Exception)
