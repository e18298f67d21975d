"""Service configuration: one declarative `Settings` read from `EESERVE_*` environment variables.

Every field can be set as `EESERVE_<FIELD>` (e.g. `EESERVE_MAX_BATCH_SIZE=32`,
`EESERVE_MODELS=artifacts/a,artifacts/b`) or passed as a keyword (`eeserve serve` does that for
its flags; keywords win over the environment). Torch-free: the HTTP layer reads it directly and
the engine gets the subset it needs in the lifespan.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from policies.names import PolicyName

MiB = 1024 * 1024

Device = Literal["cpu", "cuda", "auto"]
Dtype = Literal["float32", "float16", "bfloat16"]
Backend = Literal["torch", "onnx", "auto"]
Precision = Literal["fp32", "int8"]
OnAlarm = Literal["none", "retune", "fallback"]


class Settings(BaseSettings):
    """All knobs of one eeserve process. Limits are enforced by the HTTP layer before the
    engine sees a request (image sizes from the image's header, before decoding); the engine
    checks the image limits again for its other callers."""

    model_config = SettingsConfigDict(env_prefix="EESERVE_", extra="ignore",
                                      validate_default=True)

    # ---- models and engine ------------------------------------------------------------------
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="artifact directories to serve (env: comma-separated); empty = the CLI "
                    "picks the default model")
    device: Device = "auto"
    dtype: Dtype = "float32"
    workers: int | Literal["auto"] = Field(
        "auto", description="engine processes: auto = one per available core (CPU affinity "
                            "and cgroup quota); 1 = the engine in the server's own process; "
                            "N >= 2: N text engine processes and, for captioners, one of their "
                            "own, behind this one front process and port (service/pool.py)")
    max_batch_size: int = Field(16, ge=1, le=4096, description="rows per engine step")
    max_queue_delay_ms: float = Field(2.0, ge=0, le=10_000,
                                      description="how long the batcher waits to fill a batch")
    queue_limit: int = Field(256, ge=1, description="queued rows before 429 Overloaded")
    max_inflight_requests: int | None = Field(
        32, ge=1, description="inference requests inside the app at once (about two batches "
                              "of one-text requests); more are answered 429 before their body "
                              "is read (None = no bound)")
    shed_hold_ms: float = Field(500.0, ge=0, le=10_000, description="how long an early 429 "
                                "is held before it is sent, so clients that ignore Retry-After "
                                "cannot turn refusals into a flood (0 = at once)")
    shed_max_held: int = Field(256, ge=0, le=100_000, description="early 429s held at once; "
                               "past it refusals go at once (an open-loop flood would otherwise "
                               "hold a connection per refusal)")
    deadline_admission: bool = Field(False, description="refuse (429) a request whose expected "
                                     "queue wait, from the rows ahead of it and the measured "
                                     "drain rate, would not leave it time to finish within its "
                                     "deadline (off by default: with clients that resend at once "
                                     "it lowered goodput: docs/benchmarks/overload.md)")
    admit_wait_rounds: int = Field(2, ge=0, le=64, description="layer rounds queued texts may "
                                   "wait for half the batch to free up (bigger cohorts)")
    catch_up_rounds: int = Field(0, ge=0, le=64, description="layer rounds a deeper cohort may "
                                 "wait for younger ones to reach it and merge; 0 = never wait")
    default_policy: PolicyName | None = Field(None, description="policy when a request names "
                                                                "none; None = each model's own "
                                                                "default")
    torch_threads: int | None = Field(None, ge=1, le=1024)
    backend: Backend = Field("auto", description="text models' layer runtime: torch (eager, "
                             "any device), onnx (ONNX Runtime on the CPU, per-layer graphs), "
                             "auto (onnx on a CPU when its graphs exist and passed parity)")
    precision: Precision = Field("fp32", description="onnx precision; int8 needs its own "
                                 "calibration (eeserve calibrate --backend onnx --precision int8)")
    onnx_threads: int = Field(1, ge=1, le=64, description="ONNX Runtime intra-op threads per "
                              "layer call (1 measured best on 2 cores: docs/benchmarks/serving.md)")
    onnx_spinning: bool = Field(False, description="let ONNX Runtime threads spin-wait")
    parallel_steps: int = Field(2, ge=1, le=16, description="onnx: layer calls of one engine "
                                "round (cohorts at different layers) run this many at a time; "
                                "1 = one after another on the worker thread")

    # ---- shadow checks, drift alarm and guarded retuning (service/engine/shadow.py) ----------
    shadow_rate: float = Field(0.01, ge=0.0, le=1.0, description="share of rows that, after "
                               "an early exit, run on to the last layer when the engine is idle "
                               "to check the early answer")
    shadow_model_rates: dict[str, float] = Field(
        default_factory=dict, description="per-model shadow rates (env: JSON object), "
                                          "overriding shadow_rate")
    shadow_max_rows: int = Field(64, ge=1, le=4096, description="shadow rows kept waiting; "
                                 "more are dropped (counted)")
    shadow_max_age_s: float = Field(10.0, gt=0, le=3600, description="shadow rows older than "
                                    "this are dropped (counted)")
    shadow_window: int = Field(2000, ge=10, le=10**6, description="latest checks per model, "
                               "policy and exit that the agreement bounds use")
    shadow_confidence: float = Field(0.95, ge=0.5, lt=1.0, description="one-sided confidence "
                                     "of the agreement bounds")
    shadow_min_support: int = Field(100, ge=1, description="checks before the alarm or "
                                    "retuning may act")
    adapt: bool = Field(False, description="raise an exit's threshold when the shadow checks "
                                           "prove its agreement promise broken (guarded retuning)")
    adapt_step: float = Field(0.25, gt=0.0, lt=1.0, description="share of an exit's validation "
                              "exits one retuning step removes")
    on_alarm: OnAlarm = Field("none", description="what the drift alarm (the overall agreement "
                              "window of a policy proven below its promise) does: none (report "
                              "only), retune (guarded retuning, as adapt), fallback (every early "
                              "exit of that policy moves to the fallback point until the alarm "
                              "is reset: POST /v1/models/NAME/retuning/reset)")
    fallback_keep: float = Field(0.0, ge=0.0, lt=1.0, description="on_alarm=fallback: share of "
                                 "each exit's validation exits the fallback point still lets "
                                 "leave there (0 = every row runs to the last exit)")

    # ---- network and security ----------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key: SecretStr | None = Field(None, description="require `Authorization: Bearer <key>`")
    open_health_and_metrics: bool = Field(True, description="health, metrics and docs need no key")

    # ---- request limits ------------------------------------------------------------------------
    max_body_bytes: int = Field(1 * MiB, ge=1024, description="JSON bodies (413 above)")
    max_texts_per_request: int = Field(64, ge=1)
    max_chars_per_text: int = Field(2000, ge=1)
    long_text: Literal["truncate", "reject"] = Field(
        "truncate", description="texts over the model's max tokens: cut them (the result says "
                                "`truncated: true`) or answer 400")
    max_images_per_request: int = Field(8, ge=1)
    max_image_bytes: int = Field(5 * MiB, ge=1)
    max_image_pixels: int = Field(16_000_000, ge=1, description="pixels in an image's header "
                                  "(checked before decoding)")
    max_image_aspect: float = Field(20.0, ge=1.0, le=10_000, description="long side / short "
                                    "side of an image (checked before decoding)")
    caption_queue_limit: int = Field(32, ge=1, description="images queued or being decoded "
                                     "for captioning before 429 (checked before decoding)")
    image_threads: int = Field(1, ge=1, le=64, description="threads decoding images (their own "
                               "pool, apart from tokenisation)")
    tokenize_threads: int = Field(1, ge=1, le=64, description="threads tokenising texts (their "
                                  "own pool, apart from image decoding)")
    max_caption_tokens: int = Field(32, ge=1)
    request_timeout_ms: float = Field(30_000, gt=0, description="default (and largest) deadline")

    # ---- connections (service/serving.py) -----------------------------------------------------
    timeout_headers_s: float = Field(10.0, gt=0, le=3600, description="a request's head must "
                                     "arrive within this long (from connecting, or from its "
                                     "first byte); else 408 and the connection is closed")
    timeout_body_s: float = Field(30.0, gt=0, le=3600, description="a request's body must "
                                  "arrive within this long after its head; else 408 and close")
    timeout_keep_alive_s: float = Field(75.0, ge=1, le=3600, description="idle keep-alive "
                                        "connections are closed after this long (above "
                                        "common client and load-balancer pool expiry)")
    max_connections: int = Field(1024, ge=1, le=1_000_000, description="open connections; "
                                 "one more is answered 503 and closed")

    # ---- lifecycle and logging -------------------------------------------------------------------
    shutdown_grace_s: float = Field(10.0, ge=0, description="in-flight requests may finish for "
                                    "this long after SIGTERM; then they are answered 503")
    gil_switch_interval_ms: float | None = Field(
        None, gt=0, le=100, description="Python's thread switch interval (sys.setswitchinterval;"
        " None keeps Python's 5 ms): how soon the event loop gets the GIL back from the engine "
        "threads (0.5 vs 5 ms under a flood: within the noise here, docs/benchmarks/overload.md)")
    ready_when: Literal["all", "any"] = Field(
        "all", description="/readyz and /v2/health/ready answer 200 when every configured model "
                           "serves (all) or at least one does (any); either way a model that "
                           "failed to load answers 503 with its reason and the others serve")
    artifact_check_s: float = Field(
        5.0, ge=0, le=3600, description="how often the server checks that each served model's "
        "artifact directory is still the one it loaded (one stat of its manifest.json); a "
        "directory removed or replaced is logged once and named in /readyz and /v1/models, and "
        "the model keeps serving from memory (0 = no checks)")
    log_json: bool = True
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("models", mode="before")
    @classmethod
    def _split_models(cls, v: object) -> object:
        if isinstance(v, str):
            return [p.strip() for p in v.split(",") if p.strip()]
        return v

    @field_validator("shadow_model_rates")
    @classmethod
    def _rates(cls, v: dict[str, float]) -> dict[str, float]:
        for name, rate in v.items():
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"shadow_model_rates[{name!r}]={rate} must be within [0, 1]")
        return v

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, v: object) -> object:
        return None if v == "" else v

    @model_validator(mode="after")
    def _finite(self) -> Settings:
        for name in ("max_queue_delay_ms", "request_timeout_ms", "shutdown_grace_s",
                     "timeout_headers_s", "timeout_body_s", "timeout_keep_alive_s"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite")
        return self

    @property
    def max_caption_body_bytes(self) -> int:
        """Body limit of caption requests: every image at its limit, base64-inflated, + slack."""
        return self.max_images_per_request * self.max_image_bytes * 4 // 3 + 64 * 1024

    def public_dict(self) -> dict[str, object]:
        """The settings as JSON-able values with the API key hidden (for logs and /v2)."""
        d = self.model_dump(mode="json")
        d["api_key"] = "***" if self.api_key else None
        return d
