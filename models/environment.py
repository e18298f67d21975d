"""The library versions that shape a model's answers, recorded in its manifest per stage.

A tokenizer, an ONNX exporter or an ONNX Runtime kernel that changes between the build and the
server can change served answers without a line of ours changing. Each stage that writes what
serves (`build`: weights and tokenizer; `onnx`: the exported graphs; `calibrate`: the fitted
thresholds) records `versions()` under `manifest["environment"][stage]`; at load,
`environment_drift` lists every recorded version that differs from the serving environment,
one line each, for the server to warn with (the artifact still loads: the parity check and the
calibration are what refuse a graph that no longer decides alike).

torch-free (importlib.metadata only): the server's loaders and the builders both use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import metadata
from typing import Any, Final

ANSWER_SHAPING: Final = ("torch", "transformers", "tokenizers", "safetensors", "numpy", "onnx",
                         "onnxruntime")
STAGES: Final = ("build", "onnx", "calibrate")
ABSENT: Final = "absent"


def versions(packages: tuple[str, ...] = ANSWER_SHAPING) -> dict[str, str]:
    """{distribution: installed version, or "absent"} for each package."""
    out = {}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = ABSENT
    return out


def stamp(manifest: dict[str, Any], stage: str) -> dict[str, Any]:
    """Record this environment as the one that ran `stage`; returns the same manifest."""
    if stage not in STAGES:
        raise ValueError(f"stage {stage!r}: choose one of {list(STAGES)}")
    recorded = dict(manifest.get("environment") or {})
    recorded[stage] = versions()
    manifest["environment"] = recorded
    return manifest


def environment_drift(manifest: Mapping[str, Any],
                      current: Mapping[str, str] | None = None) -> list[str]:
    """One line per package whose recorded version (at any stage) differs from `current`
    (default: this environment). Empty for artifacts that recorded nothing (older builds)."""
    now = dict(current) if current is not None else versions()
    recorded = manifest.get("environment")
    if not isinstance(recorded, Mapping):
        return []
    seen: dict[str, list[str]] = {}
    for stage in STAGES:
        env = recorded.get(stage)
        if not isinstance(env, Mapping):
            continue
        for name, then in env.items():
            if name in now and str(then) != now[name]:
                seen.setdefault(f"{name} {then}", []).append(stage)
    lines = []
    for key, stages in seen.items():
        name, then = key.split(" ", 1)
        lines.append(f"{name} {now[name]} serves, {then} ran {'/'.join(stages)}")
    return lines
