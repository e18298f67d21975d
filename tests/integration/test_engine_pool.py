"""`workers=2`: the app with two text engine processes and a caption engine process of its own
(service/pool.py) on tiny trained models. Metrics add up exactly across processes, readiness
covers every process, the queue limit is global, a killed engine process is replaced and its
requests are answered 503, caption work runs apart from classification."""

from __future__ import annotations

import base64
import io
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from models.build.caption_data import generated_scenes
from service.app import create_app
from service.pool import EnginePool, available_cores, resolve_workers
from service.settings import Settings


def pool_of(client: TestClient) -> EnginePool:
    engine = client.app.state.engine  # type: ignore[attr-defined]
    assert isinstance(engine, EnginePool)
    return engine


def metric(client: TestClient, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    total = 0.0
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def wait_until(cond: object, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if callable(cond) and cond():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def b64_scene(i: int = 0) -> str:
    buf = io.BytesIO()
    generated_scenes(4, 1, 1, image_size=32).train.image(i).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def client(tiny_artifact: Path, tiny_caption_artifact: Path) -> Iterator[TestClient]:
    settings = Settings(models=[str(tiny_artifact), str(tiny_caption_artifact)], workers=2,
                        device="cpu", log_json=False, max_caption_tokens=4)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def classify(client: TestClient, texts: list[str], policy: str) -> int:
    return client.post("/v1/classify", json={"inputs": texts, "policy": policy}).status_code


def test_a_known_mix_adds_up_exactly_in_one_metrics_view(client: TestClient) -> None:
    pool = pool_of(client)
    before = {p: metric(client, "eeserve_exit_layer_count", policy=p) for p in ("beem", "none")}
    ok_before = metric(client, "eeserve_requests_total", endpoint="classify", status="ok")
    sent_before = {p.name: p.dispatched for p in pool._procs("text")}
    jobs = [(["a fine film"], "beem")] * 30 + [(["dull", "boring plot"], "none")] * 20
    with ThreadPoolExecutor(8) as ex:
        codes = list(ex.map(lambda j: classify(client, *j), jobs))
    assert codes == [200] * 50
    assert metric(client, "eeserve_exit_layer_count", policy="beem") - before["beem"] == 30
    assert metric(client, "eeserve_exit_layer_count", policy="none") - before["none"] == 40
    assert metric(client, "eeserve_requests_total", endpoint="classify",
                  status="ok") - ok_before == 50
    sent = {p.name: p.dispatched - sent_before[p.name] for p in pool._procs("text")}
    assert sorted(sent) == ["text-0", "text-1"] and all(n > 0 for n in sent.values()), sent
    for name in ("text-0", "text-1", "caption-0"):
        assert metric(client, "eeserve_engine_process_up", process=name) == 1
        assert metric(client, "eeserve_engine_resident_memory_bytes", process=name) > 0


def test_ready_covers_every_process_and_models_are_one_view(client: TestClient) -> None:
    assert client.get("/readyz").status_code == 200
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert set(models) == {"tiny-text", "tiny-caption"}
    assert all(m["ready"] for m in models.values())
    assert models["tiny-text"]["details"]["engine_processes"] == 2
    assert models["tiny-caption"]["details"]["engine_processes"] == 1


def test_captions_run_in_their_own_process(client: TestClient) -> None:
    pids = pool_of(client).pids()
    assert len({pids["text-0"], pids["text-1"], pids["caption-0"], os.getpid()}) == 4
    r = client.post("/v1/caption", json={"images": [b64_scene(0), b64_scene(1)],
                                         "policy": "none", "max_tokens": 3})
    assert r.status_code == 200, r.text
    assert len(r.json()["results"]) == 2
    with client.stream("POST", "/v1/caption", json={"images": [b64_scene(2)], "stream": True,
                                                    "policy": "none", "max_tokens": 3}) as s:
        text = "".join(s.iter_text())
    assert "event: result" in text and "event: done" in text
    assert classify(client, ["still classifying"], "beem") == 200


def test_a_killed_engine_process_answers_503_and_is_replaced(client: TestClient) -> None:
    pool = pool_of(client)
    victim = next(p for p in pool._procs("text") if p.name == "text-0")
    os.kill(victim.proc.pid, signal.SIGSTOP)  # it holds what it is sent
    restarts = metric(client, "eeserve_engine_restarts_total", role="text")
    with ThreadPoolExecutor(6) as ex:
        futures = [ex.submit(client.post, "/v1/classify",
                             json={"inputs": [f"text {i}"], "policy": "none"})
                   for i in range(6)]
        wait_until(lambda: victim.pending, 10)
        os.kill(victim.proc.pid, signal.SIGKILL)
        answers = [f.result(timeout=20) for f in futures]
    codes = sorted(a.status_code for a in answers)
    assert 503 in codes and set(codes) <= {200, 503}, codes
    held = [a.json() for a in answers if a.status_code == 503]
    assert all("engine process text-0 exited" in b["error"] for b in held), held
    wait_until(lambda: client.get("/readyz").status_code == 200, 60)
    assert pool.pids()["text-0"] != victim.proc.pid
    assert metric(client, "eeserve_engine_restarts_total", role="text") == restarts + 1
    assert classify(client, ["after the restart"], "beem") == 200


def test_the_queue_limit_counts_every_process(tiny_artifact: Path) -> None:
    settings = Settings(models=[str(tiny_artifact)], workers=2, device="cpu", log_json=False,
                        queue_limit=3, max_inflight_requests=64, shed_hold_ms=0)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        pool = pool_of(c)
        procs = pool._procs("text")
        for p in procs:
            os.kill(p.proc.pid, signal.SIGSTOP)  # nothing they are sent starts
        try:
            with ThreadPoolExecutor(6) as ex:
                held = [ex.submit(classify, c, [f"t{i}"], "none") for i in range(3)]
                wait_until(lambda: sum(p.outstanding for p in procs) == 3, 10)
                assert pool.status().texts_queued == 3
                assert {p.outstanding for p in procs} == {1, 2}  # spread over both
                r = c.post("/v1/classify", json={"inputs": ["one more"], "policy": "none"})
                assert r.status_code == 429 and r.headers["retry-after"]
                assert "queue" in r.json()["error"]
                for p in procs:
                    os.kill(p.proc.pid, signal.SIGCONT)
                assert [f.result(timeout=20) for f in held] == [200, 200, 200]
        finally:
            for p in procs:
                os.kill(p.proc.pid, signal.SIGCONT)


def test_workers_auto_is_the_usable_cores() -> None:
    assert resolve_workers("auto") == available_cores() >= 1
    assert available_cores() <= len(os.sched_getaffinity(0))
    assert resolve_workers(3) == 3


def test_shadow_checks_of_every_process_meet_in_one_window(client: TestClient) -> None:
    """Every request asks for a shadow check of rows forced out at exit 1; the judge process
    (text-0) holds the checks of both processes: one window, one alarm, one view."""
    pool = pool_of(client)
    sent_before = {p.name: p.dispatched for p in pool._procs("text")}
    body = {"inputs": ["a fine film", "dull plot"], "policy": "maxprob",
            "params": {"threshold": 0.0}, "shadow": True}
    # one at a time: no live work waits, so no shadow row is dropped; ties go in turn
    codes = [client.post("/v1/classify", json=body).status_code for _ in range(24)]
    assert codes == [200] * 24
    assert all(p.dispatched - sent_before[p.name] >= 6 for p in pool._procs("text"))
    exits: dict = {}
    end = time.monotonic() + 60  # the checks run while each engine is idle
    while time.monotonic() < end:
        live = client.get("/v1/models/tiny-text").json()["details"]["live_agreement"]
        key = next((k for k in live["policies"] if k.startswith("maxprob~")), None)
        exits = live["policies"][key]["exits"] if key else {}
        if exits.get("1", {}).get("checks") == 48:
            break
        time.sleep(0.1)
    assert exits.get("1", {}).get("checks") == 48, exits
    checks = metric(client, "eeserve_shadow_checks_total", exit="1")
    assert checks >= 48


async def test_a_model_built_while_serving_starts_its_engine_processes(tiny_artifact: Path) -> None:
    """`make run` on a first start: no model yet, then the built one is added."""
    from service.metrics import PrometheusStatLogger
    from service.protocol import ClassifyRequest

    pool = EnginePool(Settings(models=[], workers=2, device="cpu", log_json=False),
                      PrometheusStatLogger(), 2)
    await pool.start()
    try:
        assert not pool.ready() and pool.models() == []
        await pool.add_model(str(tiny_artifact))
        assert pool.ready() and len(pool.pids()) == 2
        out = await pool.classify(ClassifyRequest(texts=["fine"], policy="beem"))
        assert out[0].label in ("negative", "positive")
    finally:
        await pool.shutdown(5)
