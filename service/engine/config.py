"""Engine parameters: the subset of `Settings` the engine needs, as a frozen dataclass."""

from __future__ import annotations

from dataclasses import dataclass

from service.settings import Settings


@dataclass(frozen=True, kw_only=True)
class ShadowConfig:
    """Shadow checks and guarded retuning (service/engine/shadow.py, policies/agreement.py)."""

    rate: float = 0.0  # share of rows checked (0: only rows whose request asks for it)
    model_rates: tuple[tuple[str, float], ...] = ()  # per-model overrides
    max_rows: int = 64  # shadow rows waiting at most; more are dropped
    max_age_s: float = 10.0  # older shadow rows are dropped
    window: int = 2000  # latest checks per (model, policy, exit) in the bounds
    confidence: float = 0.95
    min_support: int = 100
    adapt: bool = False
    adapt_step: float = 0.25
    seed: int | None = None  # sampling seed (tests)

    def rate_for(self, model: str) -> float:
        return dict(self.model_rates).get(model, self.rate)


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    models: tuple[str, ...]  # artifact directories
    device: str = "cpu"  # cpu, cuda, cuda:N or auto
    dtype: str = "float32"
    max_batch_size: int = 16  # rows in flight across all cohorts
    max_queue_delay_ms: float = 2.0  # batching window when the engine is idle
    queue_limit: int = 256  # queued rows before Overloaded
    admit_wait_rounds: int = 2  # rounds queued rows may wait for half the batch to free up
    catch_up_rounds: int = 0  # rounds a deeper cohort may wait for younger ones to merge (0: off)
    default_policy: str | None = None  # overrides each model's own default
    request_timeout_ms: float = 30_000  # default and largest deadline
    deadline_admission: bool = False  # 429 when the expected queue wait misses the deadline
    long_text: str = "truncate"  # or "reject"
    torch_threads: int | None = None
    backend: str = "torch"  # torch, onnx or auto (text models)
    precision: str = "fp32"  # onnx: fp32 or int8
    onnx_threads: int = 1
    onnx_spinning: bool = False
    parallel_steps: int = 2  # model calls of one round run this many at a time (onnx only)
    shadow: ShadowConfig = ShadowConfig()
    max_image_pixels: int = 16_000_000  # header pixels of one image (service/engine/images.py)
    max_image_aspect: float = 20.0  # long side / short side of one image
    caption_queue_limit: int = 32  # images queued or decoding before Overloaded
    image_threads: int = 1  # image decoding pool
    tokenize_threads: int = 1  # tokenisation pool

    @classmethod
    def from_settings(cls, s: Settings) -> EngineConfig:
        return cls(models=tuple(s.models), device=s.device, dtype=s.dtype,
                   max_batch_size=s.max_batch_size, max_queue_delay_ms=s.max_queue_delay_ms,
                   queue_limit=s.queue_limit, default_policy=s.default_policy,
                   admit_wait_rounds=s.admit_wait_rounds, catch_up_rounds=s.catch_up_rounds,
                   request_timeout_ms=s.request_timeout_ms, long_text=s.long_text,
                   deadline_admission=s.deadline_admission,
                   torch_threads=s.torch_threads, backend=s.backend, precision=s.precision,
                   onnx_threads=s.onnx_threads, onnx_spinning=s.onnx_spinning,
                   parallel_steps=s.parallel_steps, max_image_pixels=s.max_image_pixels,
                   max_image_aspect=s.max_image_aspect,
                   caption_queue_limit=s.caption_queue_limit, image_threads=s.image_threads,
                   tokenize_threads=s.tokenize_threads, shadow=ShadowConfig(
                       rate=s.shadow_rate, model_rates=tuple(sorted(s.shadow_model_rates.items())),
                       max_rows=s.shadow_max_rows, max_age_s=s.shadow_max_age_s,
                       window=s.shadow_window, confidence=s.shadow_confidence,
                       min_support=s.shadow_min_support, adapt=s.adapt,
                       adapt_step=s.adapt_step))
