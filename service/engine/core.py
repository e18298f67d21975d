"""`InProcessEngine`: the `EngineClient` that runs models in this process on a worker thread.

The event loop validates a request (model, policy, sizes), tokenises it in a helper thread and
queues it; the worker thread (service/engine/text_task.py) steps cohorts layer by layer and
resolves each request's future through `call_soon_threadsafe`. Torch work never runs on the
event loop.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import torch

from models.base import Encoded
from models.environment import environment_drift
from models.loading import BackendChoice, load_artifact, resolve_device
from policies.names import known_policy
from service.engine.admission import DeadlineAdmission
from service.engine.caption_cohort import CaptionHandle
from service.engine.caption_decode import warm_up as warm_up_captioner
from service.engine.caption_task import CaptionTask
from service.engine.config import EngineConfig
from service.engine.handles import PolicyKey, RequestHandle, now
from service.engine.images import decode_images
from service.engine.live import LiveAgreement
from service.engine.loop import EngineLoop, RowGauges
from service.engine.served import ServedModel, failed_info, seed_step_cost
from service.engine.text_task import TextTask
from service.engine.tokenize import TokenBatcher
from service.image_limits import ImageLimits
from service.protocol import (
    BadRequest,
    CaptionEvent,
    CaptionRequest,
    CaptionResult,
    ClassifyRequest,
    ClassifyResult,
    DeadlineExceeded,
    EngineError,
    EngineStatus,
    ModelInfo,
    NotReady,
    ResolvedNames,
    Task,
    UnknownModel,
)
from service.stats import NullSink, StatsSink

log = logging.getLogger("eeserve.engine")


class InProcessEngine:
    """Loads artifacts, owns the worker thread, turns requests into queued handles."""

    def __init__(self, cfg: EngineConfig, sink: StatsSink | None = None):
        self.cfg = cfg
        self.sink: StatsSink = sink or NullSink()
        self.served: dict[str, ServedModel] = {}
        self.failed: dict[str, ModelInfo] = {}  # artifact path -> what did not load, and why
        self.text_task: TextTask | None = None
        self._thread: threading.Thread | None = None
        self._ready = False  # every model served and accepting requests (`ready_when=all`)
        self._serving = False  # started and not shutting down: loaded models answer
        self._warmed = threading.Event()
        self.captions: CaptionTask | None = None  # worker for captioner models, when loaded
        self._caption_thread: threading.Thread | None = None
        self._tokenizers: dict[str, TokenBatcher] = {}  # per text model, event loop only
        # separate bounded pools: images being decoded never hold up tokenisation
        self._image_pool = ThreadPoolExecutor(cfg.image_threads, "eeserve-images")
        self._token_pool = ThreadPoolExecutor(cfg.tokenize_threads, "eeserve-tokens")
        self._gauges = RowGauges(self.sink)  # queue depth and active rows over both loops
        self.admission = DeadlineAdmission(cfg.max_batch_size)  # event loop only

    # ---- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        await asyncio.to_thread(self._load_all)
        self.text_task = TextTask(self.served, self.cfg, self.sink, gauges=self._gauges)
        self._thread = threading.Thread(target=self._worker, name="eeserve-engine", daemon=True)
        self._thread.start()
        await asyncio.to_thread(self._warmed.wait)  # text models warm up on the worker thread
        if any(m.loaded.kind == "captioner" for m in self.served.values()):
            self._start_captions()
        self.sink.set_loaded_models(len(self.served))
        self._serving = True
        self._ready = bool(self.served) and not self.failed

    def _start_captions(self) -> None:
        self.captions = CaptionTask(self.cfg.max_batch_size, self.cfg.caption_queue_limit,
                                      self.sink, self.cfg.shadow, gauges=self._gauges)
        self._caption_thread = threading.Thread(target=self._caption_worker,
                                                name="eeserve-captions", daemon=True)
        self._caption_thread.start()

    async def add_model(self, path: str) -> None:
        """Load and serve one more artifact after start (a model built while serving).

        Loading and warm-up run off the event loop (a text model warms up on that helper
        thread, not the worker's, so its first requests of each length may run slower); the
        model is registered on the event loop, where `served` is iterated, and the worker,
        which only looks models up by name, sees it from its next round. A failure is
        reported like one at start (in /readyz and /v1/models)."""
        device = str(resolve_device(self.cfg.device))
        got = await asyncio.to_thread(self._load_and_warm, path, device)
        if isinstance(got, str):
            self._fail(path, got)
        else:
            self.served[got.name] = got
            if got.loaded.kind == "captioner" and self.captions is None:
                self._start_captions()
        self.sink.set_loaded_models(len(self.served))
        self._ready = self._serving and bool(self.served) and not self.failed

    def _fail(self, path: str, why: str) -> None:
        """Record a model that did not load (under its folder name when its manifest's name
        is taken by a served model: a duplicate)."""
        info = failed_info(path, why)
        if info.name in self.served:
            info = replace(info, name=path.rstrip("/").rsplit("/", 1)[-1] or path)
        self.failed[path] = info

    def _load_and_warm(self, path: str, device: str) -> ServedModel | str:
        torch.set_grad_enabled(False)  # as in _load_all (per thread)
        got = self._load_one(path, device)
        if not isinstance(got, str) and got.loaded.kind != "captioner":
            try:
                with torch.inference_mode():
                    self._warm_up(got)
            except Exception as e:  # noqa: BLE001 -- a failed warm-up only costs speed
                log.warning("warm-up failed", extra={"error": f"{type(e).__name__}: {e}"})
        return got

    def _load_all(self) -> None:
        if self.cfg.torch_threads:
            torch.set_num_threads(self.cfg.torch_threads)
        torch.set_grad_enabled(False)
        device = str(resolve_device(self.cfg.device))
        for path in self.cfg.models:
            got = self._load_one(path, device)
            if isinstance(got, str):
                self._fail(path, got)
            else:
                self.served[got.name] = got

    def _load_one(self, path: str, device: str) -> ServedModel | str:
        """The served model, or why it did not load (captioners are warmed up here)."""
        t0 = time.perf_counter()
        try:
            loaded = load_artifact(path, device, self.cfg.dtype, self._backend())
        except Exception as e:  # noqa: BLE001 -- reported in /readyz and /v1/models
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            log.error("model failed to load", extra={"path": path, "error": reason})
            return reason
        if loaded.name in self.served:
            return f"duplicate model name {loaded.name!r}"
        default = self.cfg.default_policy or loaded.manifest.get("default_policy") or "none"
        served = ServedModel(loaded, default, device, seed_step_cost(loaded.manifest))
        if loaded.kind != "captioner":  # [shadow] live agreement of text models
            served.live = LiveAgreement(loaded.name, int(loaded.model.num_exits), loaded,
                                        self.cfg.shadow, self.sink)
        if loaded.kind == "captioner":
            self._warm_up(served)
        for line in environment_drift(loaded.manifest):
            log.warning("serving environment differs from the artifact's: answers may differ; "
                        "rebuild it, or install the lock it was built with",
                        extra={"model": loaded.name, "drift": line})
        log.info("model loaded", extra={"model": loaded.name, "path": path,
                                        "device": device, "exits": loaded.model.num_exits,
                                        "backend": loaded.backend, "why": loaded.why,
                                        "seconds": round(time.perf_counter() - t0, 3)})
        return served

    def _backend(self) -> BackendChoice:
        return BackendChoice(self.cfg.backend, self.cfg.precision, self.cfg.onnx_threads,
                             self.cfg.onnx_spinning)

    def _warm_up(self, served: ServedModel) -> None:
        """Run every sequence length once at batch 1.

        The CPU kernels cache per shape: on the default model the first request of each new
        length ran ~25 % slower (11.3 vs 8.9 ms at full depth, in a plain loop) until every
        length had been seen. Runs on the worker thread, before the engine reports ready.
        """
        if served.loaded.kind == "captioner":
            warm_up_captioner(served.captioner)
            return
        model = served.text_model
        tok = model.tokenizer
        filler = tok.encode("movie", add_special_tokens=False)[:1] or [tok.unk_token_id or 0]
        first = tok.cls_token_id if tok.cls_token_id is not None else filler[0]
        last = tok.sep_token_id if tok.sep_token_id is not None else filler[0]
        for t in range(2, model.config.max_length + 1):
            ids = torch.full((1, t), filler[0], dtype=torch.long)  # (1, T)
            ids[:, 0], ids[:, -1] = first, last
            enc = Encoded(ids.to(model.device), torch.ones_like(ids).to(model.device), [t],
                          [False])
            model.all_exit_logits(enc)

    def _worker(self) -> None:
        assert self.text_task is not None
        torch.set_grad_enabled(False)
        with torch.inference_mode():
            try:  # on this thread: the CPU kernels' per-shape caches belong to the thread
                for served in self.served.values():
                    if served.loaded.kind != "captioner":
                        self._warm_up(served)
            except Exception as e:  # noqa: BLE001 -- a failed warm-up only costs speed
                log.warning("warm-up failed", extra={"error": f"{type(e).__name__}: {e}"})
            finally:
                self._warmed.set()
            self.text_task.run_forever()

    def _caption_worker(self) -> None:
        assert self.captions is not None
        torch.set_grad_enabled(False)
        with torch.inference_mode():
            self.captions.run_forever()

    def _loops(self) -> list[tuple[EngineLoop[Any, Any], threading.Thread | None, str]]:
        """Every running engine loop, its worker thread, and what it serves (for messages)."""
        out: list[tuple[EngineLoop[Any, Any], threading.Thread | None, str]] = []
        if self.captions is not None:
            out.append((self.captions, self._caption_thread, "caption"))
        if self.text_task is not None:
            out.append((self.text_task, self._thread, "request"))
        return out

    async def shutdown(self, grace_s: float = 10.0) -> None:
        """Stop accepting, let queued and in-flight rows finish within `grace_s`, then stop.

        Every loop is treated alike: close, wait (one grace period for all), drop what is
        left, stop, join."""
        self._ready = self._serving = False
        loops = self._loops()
        for loop, _, _ in loops:
            loop.close()
        end = time.monotonic() + grace_s
        while not all(loop.idle() for loop, _, _ in loops) and time.monotonic() < end:
            await asyncio.sleep(0.01)
        for loop, _, what in loops:
            if not loop.idle():
                loop.drop_everything(f"server shut down before the {what} finished")
            loop.stop()
        for _, thread, _ in loops:
            if thread is not None:
                await asyncio.to_thread(thread.join, 5.0)
        self._image_pool.shutdown(wait=False, cancel_futures=True)
        self._token_pool.shutdown(wait=False, cancel_futures=True)

    def ready(self) -> bool:
        return self._ready

    def models(self) -> list[ModelInfo]:
        """Served models (ready while the engine accepts requests), then the failed ones."""
        infos = [m.info() for m in self.served.values()]
        if not self._serving:
            infos = [replace(i, ready=False) for i in infos]
        return infos + list(self.failed.values())

    def status(self) -> EngineStatus:
        s, c = self.text_task, self.captions
        return EngineStatus(queue_depth=(s.pending_rows if s else 0) +
                            (c.pending_rows if c else 0),
                            active_rows=(s.active_rows() if s else 0) +
                            (c.active_rows() if c else 0),
                            loaded_models=len(self.served),
                            caption_queue_depth=(c.pending_rows + c.reserved_rows if c else 0),
                            text_queue_depth=s.pending_rows if s else 0)

    def resolve(self, task: Task, model: str | None, policy: str | None) -> ResolvedNames:
        """The names `classify` / `caption` run a request under (EngineClient.resolve)."""
        try:
            return self._model(model, task).names(policy)
        except EngineError:
            return ResolvedNames(None, known_policy(policy))

    # ---- requests -------------------------------------------------------------------------------
    def _model(self, name: str | None, kind: str = "text-classifier") -> ServedModel:
        """The served model a request names (None: the first of `kind`); 503 with the reason
        for a model that failed to load, 404 for an unknown name."""
        if name is None:
            for m in self.served.values():
                if m.loaded.kind == kind:
                    return m
            failed = [f"{f.name}: {f.error}" for f in self.failed.values()
                      if f.kind in (kind, "unknown")]
            if failed:
                raise NotReady(f"no {kind} model is ready; failed to load: " + "; ".join(failed))
            raise UnknownModel(f"no {kind} model is loaded", "model")
        found = self.served.get(name)
        if found is None:
            for f in self.failed.values():
                if f.name == name:
                    raise NotReady(f"model {name!r} failed to load: {f.error}")
            raise UnknownModel(f"unknown model {name!r}; loaded: {sorted(self.served)}", "model")
        if found.loaded.kind != kind:
            raise BadRequest(f"model {name!r} is a {found.loaded.kind}, not a {kind}", "model")
        return found

    async def classify(self, req: ClassifyRequest) -> list[ClassifyResult]:
        if self.text_task is None:
            raise NotReady("engine not started")
        served = self._model(req.model)
        key = PolicyKey(req.policy or served.default_policy,
                        tuple(sorted((k, _hashable(v)) for k, v in req.params.items())))
        policy = served.policy(key)  # BadRequest on unknown policy or bad params
        if not req.texts:
            raise BadRequest("inputs must hold at least one text", "inputs")
        arrival = min(now(), req.received_at or math.inf)  # the deadline counts from there
        timeout_ms = min(req.deadline_ms or self.cfg.request_timeout_ms,
                         self.cfg.request_timeout_ms)
        left_s = arrival + timeout_ms / 1e3 - now()
        if left_s <= 0:  # spent waiting for the event loop: no work for an answer nobody reads
            raise DeadlineExceeded(f"no answer within {timeout_ms:.0f} ms (the deadline passed "
                                   "before the request reached the engine)", "deadline_ms")
        if self.cfg.deadline_admission:  # Overloaded when the queue cannot be left in time
            sched = self.text_task
            self.admission.check(now(), sched.pending_rows + sched.reserved_rows,
                                 len(req.texts), left_s)
        self.text_task.reserve(len(req.texts))  # Overloaded before any work is done
        try:
            enc = await self._token_batcher(served).encode(list(req.texts))
        except BaseException:
            self.text_task.release(len(req.texts))
            raise
        if self.cfg.long_text == "reject" and any(enc.truncated):
            self.text_task.release(len(req.texts))
            i = enc.truncated.index(True)
            raise BadRequest(f"inputs[{i}] is longer than the model's "
                             f"{served.text_model.config.max_length} tokens (long_text=reject)",
                             "inputs")
        loop = asyncio.get_running_loop()
        handle = RequestHandle(
            model=served.name, policy=key, policy_obj=policy, encoded=enc,
            future=loop.create_future(), loop=loop, request_id=req.request_id, arrival=arrival,
            deadline=arrival + timeout_ms / 1e3,
            budget_s=req.latency_budget_ms / 1e3 if req.latency_budget_ms else None,
            return_trace=req.return_trace, shadow=req.shadow)
        self.text_task.submit(handle)
        try:
            results: list[ClassifyResult] = await asyncio.wait_for(
                asyncio.shield(handle.future), max(0.0, handle.deadline - now()) + 1.0)
            self.admission.answered(now(), len(results),
                                    max(r.compute_ms for r in results) / 1e3)
            return results
        except TimeoutError:
            handle.cancel()
            raise DeadlineExceeded(f"no answer within {timeout_ms:.0f} ms", "deadline_ms") \
                from None
        except asyncio.CancelledError:
            handle.cancel()  # the client went away: its rows leave at the next step
            raise

    async def _decode(self, images: list[bytes], served: ServedModel,
                      deadline: float) -> torch.Tensor:
        """Reserve caption queue room, then decode on the image pool within the deadline
        (queue full → Overloaded before any decoding; deadline → DeadlineExceeded)."""
        assert self.captions is not None
        self.captions.reserve(len(images))
        limits = ImageLimits(self.cfg.max_image_pixels, self.cfg.max_image_aspect)
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(self._image_pool, decode_images, images,
                                   served.captioner.config.image, limits, deadline)
        runner, n = self.captions, len(images)
        try:
            return await asyncio.wait_for(asyncio.shield(job), max(0.0, deadline - now()))
        except BaseException as e:  # the room is given back once the decoding thread is done
            job.add_done_callback(lambda _: runner.release(n))
            job.add_done_callback(_consume)
            if isinstance(e, TimeoutError):
                raise DeadlineExceeded("deadline passed while decoding images",
                                       "deadline_ms") from None
            raise

    def _token_batcher(self, served: ServedModel) -> TokenBatcher:
        batcher = self._tokenizers.get(served.name)
        if batcher is None:
            batcher = self._tokenizers[served.name] = TokenBatcher(served.text_model,
                                                                   self._token_pool)
        return batcher

    async def reset_retuning(self, model: str) -> int:
        served = self.served.get(model)
        if served is None:
            raise UnknownModel(f"unknown model {model!r}; loaded: {sorted(self.served)}", "name")
        if served.live is None:
            return 0
        return int(await asyncio.to_thread(served.live.reset))

    async def caption(self, req: CaptionRequest) -> list[CaptionResult]:
        results: list[CaptionResult | None] = [None] * len(req.images)
        async for ev in self._caption_events(req, stream_tokens=False):
            if ev.result is not None:
                results[ev.index] = ev.result
        return [r for r in results if r is not None]

    async def caption_stream(self, req: CaptionRequest) -> AsyncIterator[CaptionEvent]:
        async for ev in self._caption_events(req, stream_tokens=True):
            yield ev

    async def _caption_events(self, req: CaptionRequest,
                              stream_tokens: bool) -> AsyncIterator[CaptionEvent]:
        """Validate, decode the images off the loop, queue, then relay the worker's events."""
        served = self._model(req.model, kind="captioner")
        if self.captions is None:
            raise NotReady("engine not started")
        key = PolicyKey(req.policy or served.default_policy,
                        tuple(sorted((k, _hashable(v)) for k, v in req.params.items())))
        policy = served.policy(key)  # BadRequest on unknown policy or bad params
        if not req.images:
            raise BadRequest("images must hold at least one image", "images")
        cap = min(served.captioner.config.max_tokens, served.captioner.max_positions)
        if req.max_tokens is not None and not 1 <= req.max_tokens <= served.captioner.max_positions:
            raise BadRequest(f"max_tokens={req.max_tokens} out of range 1.."
                             f"{served.captioner.max_positions} for this model", "max_tokens")
        max_tokens = req.max_tokens or cap
        arrival = now()
        runner = self.captions
        timeout_ms = min(req.deadline_ms or self.cfg.request_timeout_ms,
                         self.cfg.request_timeout_ms)
        deadline = arrival + timeout_ms / 1e3
        pixels = await self._decode(req.images, served, deadline)  # reserves queue room
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Any] = asyncio.Queue()
        handle = CaptionHandle(
            served=served, policy=key, policy_obj=policy, pixels=pixels, max_tokens=max_tokens,
            events=events, loop=loop, request_id=req.request_id, arrival=arrival,
            deadline=deadline,
            budget_s=req.latency_budget_ms / 1e3 if req.latency_budget_ms else None,
            stream_tokens=stream_tokens)
        runner.submit(handle)
        left = handle.size
        end = loop.time() + max(0.0, deadline - now()) + 1.0  # from arrival, not from here
        try:
            while left:
                try:
                    item = await asyncio.wait_for(events.get(), max(0.0, end - loop.time()))
                except TimeoutError:
                    raise DeadlineExceeded(f"no answer within {timeout_ms:.0f} ms",
                                           "deadline_ms") from None
                if isinstance(item, EngineError):
                    raise item
                if item.result is not None:
                    left -= 1
                yield item
        finally:
            handle.cancel()  # finished, failed or the client went away: rows leave


def _consume(fut: asyncio.Future[Any]) -> None:
    """Read a finished future's exception so nobody logs it as never retrieved."""
    if not fut.cancelled():
        fut.exception()


def _hashable(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    return v
