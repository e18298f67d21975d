"""A loaded model as the engine serves it: weights, manifest, labels, policies and cost model."""

from __future__ import annotations

import functools
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, cast

from models.artifact import ArtifactError, read_manifest
from models.base import StepModel
from models.captioner import MultiExitCaptioner
from models.environment import environment_drift
from models.loading import LoadedModel
from policies import ExitPolicy, PolicyError, build_policy
from policies.names import known_policy
from service.engine.cost import StepCost
from service.engine.handles import PolicyKey
from service.protocol import BadRequest, ModelInfo, ResolvedNames

if TYPE_CHECKING:  # the shadow checks' state, built by the engine only when they are on
    from service.engine.live import LiveAgreement

POLICY_CACHE = 256  # distinct (policy, params) objects kept per model
ServableModel = StepModel | MultiExitCaptioner
__all__ = ["ServedModel", "StepCost", "seed_step_cost"]


@dataclass
class ServedModel:
    loaded: LoadedModel
    default_policy: str
    device: str
    step_cost: StepCost
    live: LiveAgreement | None = None  # when shadow checks are on
    _policies: dict[PolicyKey, ExitPolicy] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def name(self) -> str:
        return self.loaded.name

    @property
    def model(self) -> ServableModel:
        """The loaded model, of either kind (`text_model` / `captioner` narrow it)."""
        model: ServableModel = self.loaded.model
        return model

    @property
    def text_model(self) -> StepModel:
        """The model as a text step model (any backend); TypeError when it is a captioner."""
        if self.loaded.kind == "captioner" or isinstance(self.model, MultiExitCaptioner):
            raise TypeError(f"model {self.name!r} is a {self.loaded.kind}, not a text classifier")
        return cast(StepModel, self.model)  # any backend's step model (models/base.py)

    @property
    def captioner(self) -> MultiExitCaptioner:
        """The model as a captioner; TypeError when it is a text classifier."""
        model = self.model
        if not isinstance(model, MultiExitCaptioner):
            raise TypeError(f"model {self.name!r} is a {self.loaded.kind}, not a captioner")
        return model

    @property
    def manifest(self) -> dict[str, Any]:
        return self.loaded.manifest

    @property
    def num_exits(self) -> int:
        return int(self.model.num_exits)

    @functools.cached_property
    def labels(self) -> list[str]:
        labels = self.manifest.get("labels") or []
        return [str(x) for x in labels]

    def calibration(self, name: str) -> Mapping[str, Any] | None:
        return (self.manifest.get("policies") or {}).get(name)

    def names(self, policy: str | None) -> ResolvedNames:
        """This model's name and the policy a request asking for `policy` (None: this model's
        default) runs under; the policy is None when it is no known policy name."""
        return ResolvedNames(self.name, known_policy(policy or self.default_policy))

    def policy(self, key: PolicyKey) -> ExitPolicy:
        """The policy for `key`, built once and cached; BadRequest on bad names or params."""
        with self._lock:
            hit = self._policies.get(key)
            if hit is not None:
                return hit
        try:
            pol = build_policy(key.name, self.num_exits, dict(key.params),
                               self.calibration(key.name))
        except PolicyError as e:
            field_name = "params" if key.params else "policy"
            raise BadRequest(str(e), field_name) from None
        if not pol.online:
            raise BadRequest(f"policy {key.name!r} is offline only", "policy")
        with self._lock:
            if len(self._policies) >= POLICY_CACHE:
                self._policies.pop(next(iter(self._policies)))
            self._policies[key] = pol
        return pol

    def info(self) -> ModelInfo:
        """The manifest's view of the model (built once) plus the live step-time estimate and
        the live agreement of shadow checks (beside the calibrated operating points)."""
        static = self._static_info
        extra: dict[str, Any] = {"live_step_ms": round(self.step_cost.seconds * 1e3, 4)}
        if self.live is not None:
            extra["live_agreement"] = self.live.snapshot()
        return replace(static, details={**static.details, **extra})

    @functools.cached_property
    def _static_info(self) -> ModelInfo:
        m = self.manifest
        policies = {name: (cal or {}).get("params", {})
                    for name, cal in (m.get("policies") or {}).items()}
        latency = m.get("latency") or {}
        details = {
            "exit_accuracy": m.get("exit_accuracy"),
            "backbone": m.get("backbone"),
            "recipe": {k: v for k, v in (m.get("recipe") or {}).items() if k != "history"},
            "operating_points": {name: (cal or {}).get("operating_point")
                                 for name, cal in (m.get("policies") or {}).items()},
            "latency_profile": {k: latency.get(k) for k in ("device", "machine", "seq_len",
                                                            "embed_ms", "head_ms")},
            "path": str(self.loaded.path),
            "backend": self.loaded.backend,
            "precision": getattr(self.model, "precision", None),
            "backend_choice": self.loaded.why,
            "calibrated_on": (m.get("serving") or {}).get("calibrated_on")
            or m.get("calibrated_on"),
            "environment": m.get("environment"),
            "environment_drift": environment_drift(m),
        }
        return ModelInfo(name=self.name, kind=self.loaded.kind, ready=True,
                         num_exits=self.num_exits, labels=self.labels,
                         default_policy=self.default_policy, policies=policies,
                         per_layer_ms=dict(latency.get("per_layer_ms") or {}),
                         device=self.device, details=details)


def seed_step_cost(manifest: Mapping[str, Any]) -> StepCost:
    """Batch-1 layer + head time from the manifest's profile, or 5 ms when none was measured."""
    lat = manifest.get("latency") or {}
    layers = (lat.get("per_layer_ms") or {}).get("1")
    head = float((lat.get("head_ms") or {}).get("1", 0.0) or 0.0)
    if isinstance(layers, list) and layers:
        return StepCost((sum(float(x) for x in layers) / len(layers) + head) / 1e3)
    return StepCost(0.005)


def failed_info(path: str, why: str) -> ModelInfo:
    """A model that did not load, under the name and kind its manifest gives (the folder name
    and "unknown" when even the manifest cannot be read), so requests naming it are answered
    503 with `why` while the other models serve."""
    name, kind = path.rstrip("/").rsplit("/", 1)[-1] or path, "unknown"
    try:
        manifest = read_manifest(path, verify=False)
    except (ArtifactError, OSError):
        return ModelInfo(name=name, kind=kind, ready=False, error=why)
    return ModelInfo(name=str(manifest.get("name") or name),
                     kind=str(manifest.get("kind") or kind), ready=False, error=why)
