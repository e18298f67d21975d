"""The full-depth peer a user would otherwise run: FastAPI + ONNX Runtime (or torch), no exits.

`--runtime onnx` (default): the strongest plain peer. The artifact's model exported as ONE graph
(full depth, last exit; `onnx/peer/model.onnx` beside the artifact's graphs, outside its
manifest), one ONNX Runtime session per worker (`--threads` intra-op threads, default 1, no
spinning), requests collected for up to `--max-delay-ms` or `--max-batch` texts and run
together in a worker thread (ONNX Runtime releases the GIL), tokenisation off the event loop.
`--runtime torch`: the baseline a user writes first: the plain transformers forward
(`backbone(input_ids, attention_mask)`) and the last exit head, one request at a time under a
lock, in a worker thread so health checks stay answerable (`--threads`: torch's default).
`--workers N`: N uvicorn worker processes sharing the port (what `uvicorn --workers N` gives a
user; compare against it on the same cores, e.g. 2 workers of 1 intra-op thread on 2 cores);
each answer names the process that computed it in an `x-peer-pid` header.
Both answer `/v1/classify` in eeserve's response shape (`exit_layer == num_layers`,
`policy: none`), so `eeserve bench` and the k6 scripts compare them on the same inputs.

    python -m bench.peers.onnx artifacts/text-default --port 8001
    python -m bench.peers.onnx artifacts/text-default --port 8001 --workers 2 --threads 1
    python -m bench.peers.onnx artifacts/text-default --port 8001 --runtime torch
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from service.schemas import ClassifyBody, ClassifyResponse, ClassifyResultOut, HealthOut, Timing

DESCRIPTION = __doc__.splitlines()[0] if __doc__ else ""
MAX_TEXTS = 64
MAX_CHARS = 2000
PEER_GRAPH = "onnx/peer/model.onnx"
OPTIONS_ENV = "BENCH_PEER_OPTIONS"  # the options, as JSON, for each uvicorn worker process
APP_FACTORY = "bench.peers.onnx:app_from_env"
PID_HEADER = "x-peer-pid"  # which worker process answered (with --workers N)


# ---- the ONNX Runtime peer: one whole-model graph, dynamic batching -------------------------
def ensure_whole_graph(artifact: Path) -> Path:
    """Export the artifact's model at full depth as one graph, once (kept beside the artifact's
    other graphs, outside its manifest: the peer is a benchmark tool)."""
    path = artifact / PEER_GRAPH
    if not path.exists():
        from models.build.onnx_graphs import export_whole
        from models.loading import load_text_artifact

        path.parent.mkdir(parents=True, exist_ok=True)
        model = load_text_artifact(artifact, backend="torch").model
        export_whole(model, str(path) + ".part")
        Path(str(path) + ".part").replace(path)
    return path


@dataclass
class OnnxPeer:
    name: str
    session: Any
    tokenizer: Any
    labels: list[str]
    num_layers: int
    max_length: int

    def classify(self, texts: list[str]) -> list[ClassifyResultOut]:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="np")
        ids = enc["input_ids"].astype(np.int64)  # (B, T)
        mask = enc["attention_mask"].astype(np.int64)  # (B, T)
        (logits,) = self.session.run(None, {"input_ids": ids, "mask": mask})  # (B, C)
        z = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)  # (B, C)
        out = []
        for p in probs.tolist():
            k = int(np.argmax(p))
            out.append(ClassifyResultOut(
                label=self.labels[k] if k < len(self.labels) else str(k), label_id=k,
                probabilities=p, exit_layer=self.num_layers, num_layers=self.num_layers,
                confidence=p[k], budget_forced=False, truncated=False))
        return out


def load_onnx_peer(artifact: str | Path, threads: int = 1) -> OnnxPeer:
    import onnxruntime as ort
    from transformers import AutoTokenizer

    from models.artifact import read_manifest
    from models.onnx_backend import OrtOptions, session_options

    root = Path(artifact)
    manifest = read_manifest(root)
    path = ensure_whole_graph(root)
    session = ort.InferenceSession(str(path), session_options(OrtOptions(threads)),
                                   providers=["CPUExecutionProvider"])
    tok = AutoTokenizer.from_pretrained(str(root / "tokenizer"))
    return OnnxPeer(manifest.get("name", root.name), session, tok,
                    [str(x) for x in manifest.get("labels", [])], int(manifest["num_exits"]),
                    int(manifest["head"]["max_length"]))


@dataclass
class _Pending:
    texts: list[str]
    future: asyncio.Future[list[ClassifyResultOut]]
    arrived: float = field(default_factory=time.perf_counter)


class Batcher:
    """Collect requests for up to `max_delay_ms` or `max_batch` texts, run them as one batch."""

    def __init__(self, peer: OnnxPeer, max_batch: int, max_delay_ms: float):
        self.peer, self.max_batch, self.delay = peer, max_batch, max_delay_ms / 1e3
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()

    async def submit(self, texts: list[str]) -> list[ClassifyResultOut]:
        item = _Pending(texts, asyncio.get_running_loop().create_future())
        await self.queue.put(item)
        return await item.future

    async def run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            end = time.perf_counter() + self.delay
            while sum(len(p.texts) for p in batch) < self.max_batch:
                left = end - time.perf_counter()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), left))
                except TimeoutError:
                    break
            texts = [t for p in batch for t in p.texts]
            try:
                results = await run_in_threadpool(self.peer.classify, texts)
            except Exception as e:  # noqa: BLE001 -- fail this batch, keep serving
                for p in batch:
                    p.future.set_exception(e)
                continue
            start = 0
            for p in batch:
                p.future.set_result(results[start:start + len(p.texts)])
                start += len(p.texts)


def create_onnx_peer_app(artifact: str | Path, threads: int = 1, max_batch: int = 16,
                         max_delay_ms: float = 2.0) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        peer = await run_in_threadpool(load_onnx_peer, artifact, threads)
        app.state.batcher = Batcher(peer, max_batch, max_delay_ms)
        task = asyncio.create_task(app.state.batcher.run())
        yield
        task.cancel()

    app = FastAPI(title="eeserve peer (FastAPI + ONNX Runtime, full depth)", lifespan=lifespan)

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        return JSONResponse({"status": "ready"})

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.post("/v1/classify", response_model=ClassifyResponse)
    async def classify(body: ClassifyBody, response: Response) -> Any:
        arrived = time.perf_counter()
        response.headers[PID_HEADER] = str(os.getpid())
        texts = [body.inputs] if isinstance(body.inputs, str) else list(body.inputs)
        if not texts or len(texts) > MAX_TEXTS or any(not t or len(t) > MAX_CHARS
                                                      for t in texts):
            return JSONResponse({"error": f"inputs: 1 to {MAX_TEXTS} texts of 1 to {MAX_CHARS}"
                                          " characters", "code": "bad_request",
                                 "field": "inputs"}, status_code=400)
        results = await app.state.batcher.submit(texts)
        done = time.perf_counter()
        return ClassifyResponse(request_id=uuid.uuid4().hex, model="peer-onnx", policy="none",
                                results=results,
                                timing=Timing(queue_ms=0.0, compute_ms=(done - arrived) * 1e3,
                                              total_ms=(done - arrived) * 1e3))

    return app


# ---- the torch peer: the plain forward, one request at a time -------------------------------
@dataclass
class PeerModel:
    """The loaded artifact and what the answers need from its manifest."""

    name: str
    model: Any  # models.text_classifier.MultiExitTextClassifier
    labels: list[str]

    @property
    def num_layers(self) -> int:
        return int(self.model.num_exits)

    def classify(self, texts: list[str]) -> list[ClassifyResultOut]:
        """Full-depth forward of the encoder, then the last exit head."""
        import torch

        with torch.inference_mode():
            enc = self.model.encode(texts)
            out = self.model.backbone(input_ids=enc.input_ids,
                                      attention_mask=enc.attention_mask)
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
    """The torch baseline; the model loads in the lifespan (`/readyz` is 503 until then)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if threads:
            import torch

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
    async def classify(body: ClassifyBody, response: Response) -> Any:
        arrived = time.perf_counter()
        response.headers[PID_HEADER] = str(os.getpid())
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


# ---- the command ----------------------------------------------------------------------------
def create_app(options: dict[str, Any]) -> FastAPI:
    """The peer app for `options` (the command's flags: artifact, runtime, device, threads,
    max_batch, max_delay_ms)."""
    if options["runtime"] == "onnx":
        return create_onnx_peer_app(options["artifact"], options["threads"] or 1,
                                    options["max_batch"], options["max_delay_ms"])
    return create_peer_app(options["artifact"], options["device"], options["threads"])


def app_from_env() -> FastAPI:
    """uvicorn's factory in each worker process: the options from `BENCH_PEER_OPTIONS`."""
    return create_app(json.loads(os.environ[OPTIONS_ENV]))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.peers.onnx", description=DESCRIPTION)
    p.add_argument("artifact", type=Path, help="text artifact directory")
    p.add_argument("--runtime", default="onnx", choices=["onnx", "torch"],
                   help="onnx: ONNX Runtime, one whole-model graph, dynamic batching (default, "
                        "the strongest plain peer); torch: one request at a time, eager")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8001, help="port (default 8001)")
    p.add_argument("--device", default="cpu", help="torch: cpu (default), cuda or auto")
    p.add_argument("--threads", type=int,
                   help="intra-op threads per worker (default: onnx 1, torch torch's default)")
    p.add_argument("--max-batch", type=int, default=16, help="onnx: texts per batch (16)")
    p.add_argument("--max-delay-ms", type=float, default=2.0,
                   help="onnx: batching window, ms (2)")
    p.add_argument("--workers", type=int, default=1,
                   help="uvicorn worker processes sharing the port, each with its own model "
                        "(default 1)")
    return p


def _refuse(message: str) -> int:
    print(f"bench.peers.onnx: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not (args.artifact / "manifest.json").is_file():
        return _refuse(f"{args.artifact}: not an artifact directory (no manifest.json)")
    if not 0 <= args.port <= 65535:
        return _refuse(f"--port must be 0..65535, got {args.port}")
    for flag, value in (("--threads", args.threads), ("--workers", args.workers),
                        ("--max-batch", args.max_batch)):
        if value is not None and value < 1:
            return _refuse(f"{flag} must be >= 1, got {value}")
    if args.max_delay_ms < 0:
        return _refuse(f"--max-delay-ms must be >= 0, got {args.max_delay_ms}")
    # set before torch / ONNX Runtime load, inherited by the worker processes
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import uvicorn

    from models.artifact import ArtifactError
    from models.loading import load_text_artifact

    try:  # fail fast, with a one-line reason, before any worker starts
        load_text_artifact(args.artifact, device=args.device)
        if args.runtime == "onnx":
            ensure_whole_graph(args.artifact)  # once, not once per worker
    except (ArtifactError, OSError) as e:
        return _refuse(str(e).splitlines()[0] if str(e) else type(e).__name__)
    options = {"artifact": str(args.artifact.resolve()), "runtime": args.runtime,
               "device": args.device, "threads": args.threads, "max_batch": args.max_batch,
               "max_delay_ms": args.max_delay_ms}
    os.environ[OPTIONS_ENV] = json.dumps(options)
    uvicorn.run(APP_FACTORY, factory=True, host=args.host, port=args.port,
                workers=args.workers, access_log=False, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
