"""Engine parameters: the subset of `Settings` the engine needs, as a frozen dataclass."""

from __future__ import annotations

from dataclasses import dataclass

from service.settings import Settings


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
    long_text: str = "truncate"  # or "reject"
    torch_threads: int | None = None
    backend: str = "torch"  # torch, onnx or auto (text models)
    precision: str = "fp32"  # onnx: fp32 or int8
    onnx_threads: int = 1
    onnx_spinning: bool = False

    @classmethod
    def from_settings(cls, s: Settings) -> EngineConfig:
        return cls(models=tuple(s.models), device=s.device, dtype=s.dtype,
                   max_batch_size=s.max_batch_size, max_queue_delay_ms=s.max_queue_delay_ms,
                   queue_limit=s.queue_limit, default_policy=s.default_policy,
                   admit_wait_rounds=s.admit_wait_rounds, catch_up_rounds=s.catch_up_rounds,
                   request_timeout_ms=s.request_timeout_ms, long_text=s.long_text,
                   torch_threads=s.torch_threads, backend=s.backend, precision=s.precision,
                   onnx_threads=s.onnx_threads, onnx_spinning=s.onnx_spinning)
