"""Synthetic cached exit logits and artifacts for the policy tests (no downloads, no training)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from models.artifact import ExitLogits, save_exit_logits, write_manifest

Logits = tuple[torch.Tensor, torch.Tensor]  # (N, K, C) float64 logits, (N,) labels


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Policy tensors are tiny; on a busy 2-core machine extra intra-op threads only contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_logits(n: int = 1000, k: int = 6, c: int = 2, seed: int = 0,
                noise: float = 0.1) -> Logits:
    """Rows of varying difficulty; deeper exits are sharper and more often right, and each row's
    logits drift between exits so argmaxes disagree now and then (BEEM's streaks break). A
    `noise` share of gold labels is wrong, so even the last exit errs (~noise)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, c, (n,), generator=g)
    difficulty = torch.rand(n, generator=g) * 3.0  # (N,)
    base = torch.randn(n, c, generator=g)  # (N, C)
    drift = torch.zeros(n, c, dtype=torch.float64)
    out = torch.zeros(n, k, c, dtype=torch.float64)
    for j in range(k):
        drift = drift + 0.5 * torch.randn(n, c, generator=g, dtype=torch.float64)
        strength = (j + 1) / k * 4.0 - difficulty + 1.0  # (N,)
        layer = 0.5 * base.double() + 0.5 * drift  # (N, C)
        layer[torch.arange(n), labels] += strength.double()
        out[:, j] = layer
    flip = torch.rand(n, generator=g) < noise  # (N,)
    shift = torch.randint(1, max(c, 2), (n,), generator=g)  # (N,)
    noisy = torch.where(flip & (c > 1), (labels + shift) % c, labels)  # (N,)
    return out, noisy


@pytest.fixture(scope="session")
def val_logits() -> Logits:
    return make_logits(1000, 6, 2, seed=0)


@pytest.fixture(scope="session")
def test_logits() -> Logits:
    return make_logits(1000, 6, 2, seed=1)


def write_fake_artifact(root: Path, k: int = 4, n: int = 400, c: int = 2,
                        latency: bool = True) -> Path:
    """An artifact directory with cached logits and a manifest (the weights are a stub file)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.safetensors").write_bytes(b"stub weights")
    splits = {name: ExitLogits(*(t.float() if t.is_floating_point() else t
                                 for t in make_logits(n, k, c, seed)))
              for name, seed in (("val", 0), ("test", 1))}
    save_exit_logits(root, splits)
    manifest = {"name": "fake", "kind": "text", "num_exits": k, "labels": [str(i) for i in
                                                                         range(c)],
                "policies": {}, "default_policy": "none"}
    if latency:
        manifest["latency"] = {"device": "cpu", "machine": "test", "per_layer_ms":
                               {"1": [1.0] * k, "8": [4.0] * k}, "embed_ms": {"1": 0.5, "8": 2.0},
                               "head_ms": {"1": 0.1, "8": 0.4}}
    write_manifest(root, manifest)
    assert json.loads((root / "manifest.json").read_text())["num_exits"] == k
    return root


@pytest.fixture()
def fake_artifact(tmp_path: Path) -> Path:
    return write_fake_artifact(tmp_path / "art")


@pytest.fixture(scope="session")
def logits_factory() -> Callable[..., Logits]:
    return make_logits
