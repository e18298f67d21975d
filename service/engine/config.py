"""Engine parameters: the subset of `Settings` the engine needs, as a frozen dataclass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.settings import Settings


def _default(name: str) -> Any:
    """`Settings`' default of a field: the one place a default is declared."""
    return Settings.model_fields[name].default


@dataclass(frozen=True, kw_only=True)
class ShadowConfig:
    """Shadow checks and guarded retuning (service/engine/shadow.py, policies/agreement.py)."""

    rate: float = _default("shadow_rate")  # share of rows checked (0: only rows that ask)
    model_rates: tuple[tuple[str, float], ...] = ()  # per-model overrides
    max_rows: int = _default("shadow_max_rows")  # shadow rows waiting at most; more dropped
    max_age_s: float = _default("shadow_max_age_s")  # older shadow rows are dropped
    window: int = _default("shadow_window")  # latest checks per (model, policy, exit)
    confidence: float = _default("shadow_confidence")
    min_support: int = _default("shadow_min_support")
    adapt: bool = _default("adapt")
    adapt_step: float = _default("adapt_step")
    on_alarm: str = _default("on_alarm")  # none, retune or fallback (service/engine/live.py)
    fallback_keep: float = _default("fallback_keep")
    seed: int | None = None  # sampling seed (tests)
    # engine processes (service/pool.py): "alone" judges its own checks; a "follower" sends
    # its checks to the "judge" (through the front) and applies the judge's threshold changes
    role: str = "alone"

    @property
    def retunes(self) -> bool:
        """Guarded retuning is on (`adapt`, or `on_alarm="retune"`)."""
        return self.adapt or self.on_alarm == "retune"

    def rate_for(self, model: str) -> float:
        return dict(self.model_rates).get(model, self.rate)


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    """What the engine reads; every default is `Settings`' (service/settings.py documents them)."""

    models: tuple[str, ...]  # artifact directories
    device: str = _default("device")  # cpu, cuda, cuda:N or auto
    dtype: str = _default("dtype")
    max_batch_size: int = _default("max_batch_size")  # rows in flight across all cohorts
    max_queue_delay_ms: float = _default("max_queue_delay_ms")  # batching window when idle
    queue_limit: int = _default("queue_limit")  # queued rows before Overloaded
    admit_wait_rounds: int = _default("admit_wait_rounds")
    catch_up_rounds: int = _default("catch_up_rounds")
    default_policy: str | None = _default("default_policy")  # overrides each model's own
    request_timeout_ms: float = _default("request_timeout_ms")  # default and largest deadline
    deadline_admission: bool = _default("deadline_admission")
    long_text: str = _default("long_text")  # truncate or reject
    torch_threads: int | None = _default("torch_threads")
    backend: str = _default("backend")  # torch, onnx or auto (text models)
    precision: str = _default("precision")  # onnx: fp32 or int8
    onnx_threads: int = _default("onnx_threads")
    onnx_spinning: bool = _default("onnx_spinning")
    parallel_steps: int = _default("parallel_steps")  # onnx: layer calls of a round at a time
    shadow: ShadowConfig = ShadowConfig()
    max_image_pixels: int = _default("max_image_pixels")
    max_image_aspect: float = _default("max_image_aspect")
    caption_queue_limit: int = _default("caption_queue_limit")
    image_threads: int = _default("image_threads")
    tokenize_threads: int = _default("tokenize_threads")

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
                       adapt_step=s.adapt_step, on_alarm=s.on_alarm,
                       fallback_keep=s.fallback_keep))
