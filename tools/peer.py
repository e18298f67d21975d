"""The baseline a user would otherwise write: FastAPI + the artifact's model at full depth.

No early exit, no batching across requests, no queue: every request runs the plain transformers
forward (`backbone(input_ids, attention_mask)`) and the last exit head, one request at a time
under a lock, in a worker thread so health checks stay answerable. It answers `/v1/classify`
with eeserve's response shape (`exit_layer == num_layers`), so `eeserve bench` can compare the
two on the same inputs. This module imports torch; the eeserve HTTP layer never imports it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from service.schemas import ClassifyBody, ClassifyResponse, ClassifyResultOut, HealthOut, Timing

MAX_TEXTS = 64
MAX_CHARS = 2000


@dataclass
class PeerModel:
    """The loaded artifact and what the answers need from its manifest."""

    name: str
    model: Any  # models.text_classifier.MultiExitTextClassifier
    labels: list[str]

    @property
    def num_layers(self) -> int:
        return int(self.model.num_exits)

    @torch.inference_mode()
    def classify(self, texts: list[str]) -> list[ClassifyResultOut]:
        """Full-depth forward of the encoder, then the last exit head."""
        enc = self.model.encode(texts)
        out = self.model.backbone(input_ids=enc.input_ids, attention_mask=enc.attention_mask)
        logits = self.model.heads[-1](out.last_hidden_state, enc.attention_mask)  # (B, C)
        probs = torch.softmax(logits.float(), dim=-1).cpu()
        results = []
        for p, cut in zip(probs.tolist(), enc.truncated, strict=True):
            k = max(range(len(p)), key=p.__getitem__)
            results.append(ClassifyResultOut(
                label=self.labels[k] if k < len(self.labels) else str(k), label_id=k,
                probabilities=p, exit_layer=self.num_layers, num_layers=self.num_layers,
                confidence=p[k], budget_forced=False, truncated=bool(cut)))
        return results


def load_peer_model(artifact: str | Path, device: str = "cpu") -> PeerModel:
    from models.loading import load_text_artifact

    loaded = load_text_artifact(artifact, device=device)
    labels = [str(x) for x in loaded.manifest.get("labels", [])]
    return PeerModel(loaded.name, loaded.model, labels)


def _error(status: int, message: str, code: str, field: str | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "code": code, "field": field}, status_code=status)


def create_peer_app(artifact: str | Path, device: str = "cpu",
                    threads: int | None = None) -> FastAPI:
    """The baseline app; the model loads in the lifespan (`/readyz` is 503 until then)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if threads:
            torch.set_num_threads(threads)
        app.state.peer = await run_in_threadpool(load_peer_model, artifact, device)
        yield

    app = FastAPI(title="eeserve peer (full-depth baseline)", lifespan=lifespan)
    app.state.peer = None
    lock = asyncio.Lock()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = (exc.errors() or [{"loc": ("body",), "msg": "invalid request"}])[0]
        field = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        return _error(400, f"{field}: {err.get('msg')}", "bad_request", field)

    @app.get("/healthz", response_model=HealthOut)
    async def healthz() -> HealthOut:
        return HealthOut()

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        ready = app.state.peer is not None
        return JSONResponse({"status": "ready" if ready else "not_ready"},
                            status_code=200 if ready else 503)

    @app.post("/v1/classify", response_model=ClassifyResponse)
    async def classify(body: ClassifyBody) -> Any:
        arrived = time.perf_counter()
        peer: PeerModel | None = app.state.peer
        if peer is None:
            return _error(503, "model not loaded yet", "not_ready")
        texts = [body.inputs] if isinstance(body.inputs, str) else list(body.inputs)
        if not texts or len(texts) > MAX_TEXTS:
            return _error(400, f"inputs: 1 to {MAX_TEXTS} texts", "bad_request", "inputs")
        if any(not t or len(t) > MAX_CHARS for t in texts):
            return _error(400, f"inputs: texts of 1 to {MAX_CHARS} characters", "bad_request",
                          "inputs")
        async with lock:  # one request at a time, like a plain single-model server
            started = time.perf_counter()
            results = await run_in_threadpool(peer.classify, texts)
        done = time.perf_counter()
        return ClassifyResponse(
            request_id=uuid.uuid4().hex, model=peer.name, policy="none", results=results,
            timing=Timing(queue_ms=(started - arrived) * 1e3, compute_ms=(done - started) * 1e3,
                          total_ms=(done - arrived) * 1e3))

    return app
