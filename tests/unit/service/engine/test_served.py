"""ServedModel: names, policy building and caching, the step-cost estimate and the model info."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.loading import load_artifact
from service.engine import served as served_mod
from service.engine.handles import PolicyKey
from service.engine.served import ServedModel, StepCost, seed_step_cost
from service.protocol import BadRequest, ResolvedNames


@pytest.fixture(scope="module")
def served(tiny_artifact: Path) -> ServedModel:
    loaded = load_artifact(tiny_artifact, "cpu", "float32")
    return ServedModel(loaded, "maxprob", "cpu", seed_step_cost(loaded.manifest))


def test_step_cost_takes_the_first_measure_then_averages() -> None:
    cost = StepCost(0.010, alpha=0.25)
    cost.update(0.020)
    assert cost.seconds == pytest.approx(0.020) and cost.observed == 1
    cost.update(0.040)
    assert cost.seconds == pytest.approx(0.75 * 0.020 + 0.25 * 0.040)


def test_seed_step_cost_is_mean_layer_plus_head_at_batch_1() -> None:
    manifest = {"latency": {"per_layer_ms": {"1": [2.0, 4.0], "8": [9.0, 9.0]},
                            "head_ms": {"1": 1.0}}}
    assert seed_step_cost(manifest).seconds == pytest.approx(0.004)
    assert seed_step_cost({}).seconds == pytest.approx(0.005)


def test_names_resolve_the_default_and_only_known_policies(served: ServedModel) -> None:
    assert served.names(None) == ResolvedNames(served.name, "maxprob")
    assert served.names("beem") == ResolvedNames(served.name, "beem")
    assert served.names("bogus") == ResolvedNames(served.name, None)


def test_policy_is_built_once_per_key(served: ServedModel) -> None:
    key = PolicyKey("maxprob", (("threshold", 0.7),))
    first = served.policy(key)
    assert served.policy(PolicyKey("maxprob", (("threshold", 0.7),))) is first
    assert served.policy(PolicyKey("maxprob", (("threshold", 0.8),))) is not first
    assert first.num_exits == served.num_exits


def test_bad_policy_names_the_field(served: ServedModel) -> None:
    with pytest.raises(BadRequest, match="unknown policy 'bogus'") as e:
        served.policy(PolicyKey("bogus", ()))
    assert e.value.field == "policy"
    with pytest.raises(BadRequest, match="threshold") as e:
        served.policy(PolicyKey("maxprob", (("threshold", 2.0),)))
    assert e.value.field == "params"


def test_policy_cache_is_bounded(served: ServedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(served_mod, "POLICY_CACHE", 2)
    served._policies.clear()
    keys = [PolicyKey("maxprob", (("threshold", t),)) for t in (0.6, 0.7, 0.8)]
    first = served.policy(keys[0])
    for k in keys[1:]:
        served.policy(k)
    assert len(served._policies) == 2 and keys[0] not in served._policies
    assert served.policy(keys[0]) is not first  # evicted, so rebuilt


def test_kind_accessors(served: ServedModel) -> None:
    assert served.text_model is served.model
    with pytest.raises(TypeError, match="not a captioner"):
        _ = served.captioner


def test_info_is_the_manifest_plus_the_live_step_time(served: ServedModel) -> None:
    info = served.info()
    assert (info.name, info.kind, info.ready) == (served.name, "text-classifier", True)
    assert info.num_exits == served.num_exits == served.text_model.num_exits
    assert info.labels == served.labels and info.default_policy == "maxprob"
    assert set(info.policies) == set(served.manifest.get("policies") or {})
    served.step_cost.seconds = 0.0123456
    assert served.info().details["live_step_ms"] == pytest.approx(12.3456)
    assert served.info().details["path"] == str(served.loaded.path)
