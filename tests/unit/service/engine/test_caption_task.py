"""The caption runner: per-token exits with state propagation, budgets, and the engine API."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from PIL import Image

from models.build.caption_data import generated_scenes
from models.build.recipes import BuildOptions, build
from models.caption_loading import load_caption_artifact
from policies import build_policy
from service.engine import EngineConfig, InProcessEngine
from service.engine.caption_decode import decode_token
from service.protocol import BadRequest, CaptionRequest, UnknownModel


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cap") / "tiny-caption"
    build("tiny-caption", BuildOptions(out=out, device="cpu", progress=False))
    return out


def png(i: int = 0) -> bytes:
    buf = io.BytesIO()
    generated_scenes(4, 1, 1, image_size=32).train.image(i).save(buf, format="PNG")
    return buf.getvalue()


def test_decode_token_full_depth_and_early_exit_with_propagation(artifact: Path) -> None:
    model = load_caption_artifact(artifact).model
    L = model.num_exits
    px = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        state = model.encode_images(px, capacity=4)
        full = decode_token(model, state, build_policy("none", L))
        assert full.exit_layer.tolist() == [L] * 3 and full.propagated == 0
        assert full.layer_rows == [3] * L and state.pos.tolist() == [1, 1, 1]
        early = decode_token(model, state, build_policy("maxprob", L, {"threshold": 0.0}))
        assert early.exit_layer.tolist() == [1] * 3
        assert early.propagated == 3 * (L - 1) and early.layer_rows == [3]
        assert all(float(k[:, :, 1].abs().sum()) > 0 for k in state.keys)  # cache complete
        forced = decode_token(model, state, build_policy("none", L),
                              budget_s=torch.tensor([0.0, 1e9, 0.0]), layer_cost_s=1.0)
    assert forced.exit_layer.tolist() == [1, L, 1]
    assert forced.forced.tolist() == [True, False, True]


async def test_engine_captions_and_streams(artifact: Path) -> None:
    eng = InProcessEngine(EngineConfig(models=(str(artifact),), device="cpu"))
    await eng.start()
    try:
        assert eng.ready()
        info = eng.models()[0]
        assert info.kind == "captioner" and info.num_exits == 3
        res = await eng.caption(CaptionRequest(images=[png(0), png(1)], policy="none",
                                               max_tokens=6))
        assert len(res) == 2
        for r in res:
            assert r.num_layers == 3 and r.mean_exit_layer == 3.0
            assert len(r.tokens) <= 6 and r.total_ms >= r.time_to_first_token_ms > 0
            assert r.caption == " ".join(t.text for t in r.tokens)
        events = [ev async for ev in eng.caption_stream(CaptionRequest(
            images=[png(2)], policy="maxprob", params={"threshold": 0.0}, max_tokens=4))]
        assert events[-1].result is not None and all(e.token for e in events[:-1])
        assert [e.token.exit_layer for e in events[:-1]] == [1] * (len(events) - 1)  # type: ignore
        assert events[-1].result.mean_exit_layer == 1.0
        with pytest.raises(BadRequest) as e:
            await eng.caption(CaptionRequest(images=[b"not an image"]))
        assert e.value.field == "images[0]"
        with pytest.raises(BadRequest) as e:
            await eng.caption(CaptionRequest(images=[png()], policy="bogus"))
        assert e.value.field == "policy"
        with pytest.raises(UnknownModel):
            await eng.caption(CaptionRequest(images=[png()], model="nope"))
        with pytest.raises(UnknownModel):  # no text model loaded
            from service.protocol import ClassifyRequest

            await eng.classify(ClassifyRequest(texts=["x"]))
    finally:
        await eng.shutdown(2.0)


def test_decoded_images_are_preprocessed_to_the_model_size(artifact: Path) -> None:
    from service.engine.images import decode_images

    model = load_caption_artifact(artifact).model
    big = io.BytesIO()
    Image.new("RGB", (64, 48), (255, 0, 0)).save(big, format="JPEG")
    px = decode_images([png(), big.getvalue()], model.config.image)
    assert px.shape == (2, 3, 32, 32)


def test_token_shadow_checks_match_full_depth_and_leave_the_state_unchanged(
        artifact: Path) -> None:
    """Early tokens are checked against the token the last layer picks from the same cache,
    and the cache after a checked step equals the cache after an unchecked one."""
    model = load_caption_artifact(artifact).model
    L = model.num_exits
    px = torch.randn(3, 3, 32, 32)
    early = build_policy("maxprob", L, {"threshold": 0.0})
    with torch.inference_mode():
        a, b, c = (model.encode_images(px, capacity=4) for _ in range(3))
        for s in (a, b, c):  # the same first token everywhere, at full depth
            decode_token(model, s, build_policy("none", L))
        plain = decode_token(model, a, early)
        checked = decode_token(model, b, early, shadow=torch.tensor([True, False, True]))
        full = decode_token(model, c, build_policy("none", L))
    assert plain.checks == []
    assert [k for k, _ in checked.checks] == [1, 1]
    assert torch.equal(plain.tokens, checked.tokens)
    for ka, kb in zip(a.keys + a.values, b.keys + b.values, strict=True):
        assert torch.equal(ka, kb)
    expected = [bool(full.tokens[i] == checked.tokens[i]) for i in (0, 2)]
    assert [ok for _, ok in checked.checks] == expected


async def test_the_caption_adapter_on_the_engine_loop(artifact: Path) -> None:
    """Admission merges requests into one cohort, a cancelled request's captions leave before
    the next token, the others finish, overload is refused and the gauges rest at 0."""
    import asyncio

    from models.loading import load_artifact
    from service.engine.caption_cohort import CaptionHandle
    from service.engine.caption_task import CaptionTask
    from service.engine.cost import StepCost
    from service.engine.handles import PolicyKey, now
    from service.engine.images import decode_images
    from service.engine.served import ServedModel
    from service.protocol import Overloaded
    from tests.unit.service.engine.test_text_task import GaugeSink

    loaded = load_artifact(artifact, "cpu", "float32")
    served = ServedModel(loaded, "none", "cpu", StepCost(0.001))
    sink = GaugeSink()
    runner = CaptionTask(max_rows=4, queue_limit=6, sink=sink)
    key = PolicyKey("none", ())
    loop = asyncio.get_running_loop()

    def submit(name: str) -> CaptionHandle:
        t = now()
        h = CaptionHandle(served=served, policy=key, policy_obj=served.policy(key),
                          pixels=decode_images([png(0), png(1)], served.captioner.config.image),
                          max_tokens=5, events=asyncio.Queue(), loop=loop, request_id=name,
                          arrival=t, deadline=t + 30, budget_s=None)
        runner.reserve(h.size)
        runner.submit(h)
        return h

    gone, stays = submit("gone"), submit("stays")
    with pytest.raises(Overloaded, match=r"4 images waiting, limit 6 \(caption_queue_limit\)"):
        runner.reserve(3)
    assert runner.run_once()
    assert [len(c) for c in runner.cohorts] == [4] and sink.active[-1] == 4  # one cohort
    gone.cancel()
    assert runner.run_once()
    assert {h.request_id for h in runner.in_flight()} <= {"stays"}  # gone before the token
    for _ in range(10):
        if runner.idle():
            break
        runner.run_once()
    assert runner.idle() and (sink.queue[-1], sink.active[-1]) == (0, 0)
    await asyncio.sleep(0)
    results = [stays.events.get_nowait() for _ in range(stays.events.qsize())]
    assert sorted(ev.index for ev in results if ev.result is not None) == [0, 1]
    assert gone.events.qsize() == 0  # nobody listens: nothing is sent
