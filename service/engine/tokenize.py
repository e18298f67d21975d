"""Tokenisation of concurrent requests in one tokenizer call, off the event loop.

Each request used to hand its texts to a helper thread on its own; under load that is one
thread hand-off and one small tokenizer call per request, all competing for the GIL. Here the
texts of every request that arrives while a tokenizer call runs wait for the next call, which
takes them all at once (the Rust tokenizer runs the batch without the GIL); each request then
gets its own padded `Encoded`. The calls run on the engine's tokenisation pool, apart from image
decoding, so a flood of images never holds up a text.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from dataclasses import dataclass

from models.base import Encoded, StepModel
from models.text_classifier import pack_rows, tokenize_rows


@dataclass
class _Wait:
    texts: list[str]
    future: asyncio.Future[Encoded]


class TokenBatcher:
    """One per model; used from the event loop only."""

    def __init__(self, model: StepModel, pool: Executor | None = None):
        self.model = model
        self.pool = pool  # the engine's tokenisation pool (None: asyncio's default pool)
        self.pending: list[_Wait] = []
        self.busy = False
        self.calls = 0  # tokenizer calls made (for tests and stats)

    async def encode(self, texts: list[str]) -> Encoded:
        loop = asyncio.get_running_loop()
        wait = _Wait(texts, loop.create_future())
        self.pending.append(wait)
        if not self.busy:
            self.busy = True
            loop.create_task(self._drain())
        return await wait.future

    async def _drain(self) -> None:
        try:
            while self.pending:
                group, self.pending = self.pending, []
                texts = [t for w in group for t in w.texts]
                try:
                    rows, cut = await asyncio.get_running_loop().run_in_executor(
                        self.pool, tokenize_rows, self.model.tokenizer, texts,
                        self.model.config.max_length)
                except Exception as e:  # noqa: BLE001 -- each waiting request gets the error
                    for w in group:
                        if not w.future.done():
                            w.future.set_exception(e)
                    continue
                self.calls += 1
                self._resolve(group, rows, cut)
        finally:
            self.busy = False

    def _resolve(self, group: list[_Wait], rows: list[list[int]], cut: list[bool]) -> None:
        pad = self.model.tokenizer.pad_token_id or 0
        device = self.model.device
        start = 0
        for w in group:
            n = len(w.texts)
            enc = pack_rows(rows[start:start + n], cut[start:start + n], pad)
            start += n
            if device.type != "cpu":
                enc = Encoded(enc.input_ids.to(device), enc.attention_mask.to(device),
                              enc.lengths, enc.truncated)
            if not w.future.done():  # the client may have gone
                w.future.set_result(enc)
