"""What the load generator sends and how it reads the answers: classify texts, caption images.

A workload turns a request index into a JSON body plus the expected labels, and an answer's JSON
into `SampleOutcome`s. Bodies cycle through a fixed, seeded order of the input pool, so every
policy of one bench sees the same inputs in the same order.
"""

from __future__ import annotations

import base64
import io
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from tools.loadtest.records import SampleOutcome

ParamValue = bool | int | float | str


class BadResponse(ValueError):
    """A 200 answer whose JSON does not have the expected shape."""


@dataclass(frozen=True)
class TextPool:
    """Texts to send, their integer labels (or None) and the label names."""

    texts: list[str]
    labels: list[int] | None
    label_names: list[str]
    source: str

    def __post_init__(self) -> None:
        if not self.texts:
            raise ValueError("the input pool is empty")
        if self.labels is not None and len(self.labels) != len(self.texts):
            raise ValueError("texts and labels differ in length")


@dataclass(frozen=True)
class RequestOptions:
    """Fields every request of a run carries (besides the inputs)."""

    policy: str | None = None
    params: Mapping[str, ParamValue] = field(default_factory=dict)
    model: str | None = None
    latency_budget_ms: float | None = None
    deadline_ms: float | None = None

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in ("policy", "model", "latency_budget_ms", "deadline_ms"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.params:
            out["params"] = dict(self.params)
        return out


class Workload(Protocol):
    path: str
    task: str

    def body(self, index: int) -> tuple[dict[str, Any], tuple[int | None, ...]]:
        """JSON body of request `index` and the expected label of each of its inputs."""
        ...

    def parse(self, payload: Any, expected: Sequence[int | None]) -> tuple[SampleOutcome, ...]:
        """Samples of a 200 answer; raises BadResponse when the shape is wrong."""
        ...


def _results(payload: Any, n: int) -> list[dict[str, Any]]:
    results = payload.get("results") if isinstance(payload, dict) else None
    if not isinstance(results, list) or len(results) != n:
        raise BadResponse(f"expected {n} results, got {type(results).__name__}")
    if not all(isinstance(r, dict) for r in results):
        raise BadResponse("a result is not an object")
    return results


class ClassifyWorkload:
    """`POST /v1/classify` with `batch` texts per request."""

    path = "/v1/classify"
    task = "classify"

    def __init__(self, pool: TextPool, batch: int, options: RequestOptions, seed: int = 0):
        if batch < 1:
            raise ValueError("batch must be >= 1")
        self.pool, self.batch, self.options = pool, batch, options
        self.order = list(range(len(pool.texts)))
        random.Random(seed).shuffle(self.order)

    def body(self, index: int) -> tuple[dict[str, Any], tuple[int | None, ...]]:
        n = len(self.order)
        idx = [self.order[(index * self.batch + j) % n] for j in range(self.batch)]
        texts = [self.pool.texts[i] for i in idx]
        labels = self.pool.labels
        expected = tuple(labels[i] if labels is not None else None for i in idx)
        inputs: str | list[str] = texts[0] if self.batch == 1 else texts
        return {"inputs": inputs, **self.options.fields()}, expected

    def parse(self, payload: Any, expected: Sequence[int | None]) -> tuple[SampleOutcome, ...]:
        out = []
        for r, y in zip(_results(payload, len(expected)), expected, strict=True):
            try:
                exit_layer, num_layers = float(r["exit_layer"]), int(r["num_layers"])
            except (KeyError, TypeError, ValueError) as e:
                raise BadResponse(f"result without exit_layer/num_layers ({e})") from None
            out.append(SampleOutcome(exit_layer, num_layers, self._correct(r, y),
                                     budget_forced=bool(r.get("budget_forced", False))))
        return tuple(out)

    def _correct(self, result: Mapping[str, Any], label: int | None) -> bool | None:
        if label is None:
            return None
        names = self.pool.label_names
        if result.get("label") in names:  # compare by name when the model uses the same names
            return bool(result["label"] == names[label])
        return bool(result.get("label_id") == label)


class CaptionWorkload:
    """`POST /v1/caption` with `batch` generated images (coloured shapes) per request."""

    path = "/v1/caption"
    task = "caption"

    def __init__(self, batch: int, options: RequestOptions, max_tokens: int | None = None,
                 seed: int = 0, pool_size: int = 32):
        if batch < 1:
            raise ValueError("batch must be >= 1")
        self.batch, self.options, self.max_tokens = batch, options, max_tokens
        self.images = [_scene_png(random.Random(seed * 1000 + i)) for i in range(pool_size)]

    def body(self, index: int) -> tuple[dict[str, Any], tuple[int | None, ...]]:
        n = len(self.images)
        images = [self.images[(index * self.batch + j) % n] for j in range(self.batch)]
        body: dict[str, Any] = {"images": images[0] if self.batch == 1 else images,
                                **self.options.fields()}
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        return body, (None,) * self.batch

    def parse(self, payload: Any, expected: Sequence[int | None]) -> tuple[SampleOutcome, ...]:
        out = []
        for r in _results(payload, len(expected)):
            try:
                out.append(SampleOutcome(float(r["mean_exit_layer"]), int(r["num_layers"]),
                                         None, tokens=len(r.get("tokens") or [])))
            except (KeyError, TypeError, ValueError) as e:
                raise BadResponse(f"caption result without mean_exit_layer ({e})") from None
        return tuple(out)


def _scene_png(rng: random.Random, size: int = 64) -> str:
    """A small base64 PNG: one or two coloured rectangles/ellipses on a plain background."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), tuple(rng.randrange(200, 256) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(1, 2)):
        x0, y0 = rng.randrange(0, size // 2), rng.randrange(0, size // 2)
        box = (x0, y0, x0 + rng.randrange(8, size // 2), y0 + rng.randrange(8, size // 2))
        colour = tuple(rng.randrange(0, 200) for _ in range(3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")
