"""`eeserve bench` against a tiny in-test server on 127.0.0.1 that mimics /v1/classify."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tools.cli import main
from tools.loadtest.driver import Bound
from tools.loadtest.records import LoadSpec
from tools.loadtest.runner import BenchPlan, run_bench_sync
from tools.loadtest.workloads import ClassifyWorkload, RequestOptions, TextPool

NUM_LAYERS = 4
pytestmark = pytest.mark.timeout(120)


def exit_of(text: str) -> int:
    return 1 + len(text) % NUM_LAYERS


def mimic_app() -> FastAPI:
    """Answers like eeserve: `boom` texts → 500, `busy` → 429, the rest classified by `great`."""
    app = FastAPI()
    app.state.bodies = []

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/classify")
    async def classify(request: Request) -> JSONResponse:
        body = await request.json()
        app.state.bodies.append(body)
        texts = body["inputs"] if isinstance(body["inputs"], list) else [body["inputs"]]
        if any("boom" in t for t in texts):
            return JSONResponse({"error": "it broke", "code": "internal"}, status_code=500)
        if any("busy" in t for t in texts):
            return JSONResponse({"error": "queue full", "code": "overloaded"}, status_code=429,
                                headers={"Retry-After": "1"})
        await asyncio.sleep(0.002)
        results = [{"label": "positive" if "great" in t else "negative",
                    "label_id": int("great" in t), "probabilities": [0.5, 0.5],
                    "exit_layer": exit_of(t), "num_layers": NUM_LAYERS, "confidence": 0.9,
                    "budget_forced": "forced" in t, "truncated": False} for t in texts]
        return JSONResponse({"request_id": "r", "model": "m",
                             "policy": body.get("policy") or "none", "results": results,
                             "timing": {"queue_ms": 0.1, "compute_ms": 2.0, "total_ms": 2.5}})

    return app


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, FastAPI]]:
    app = mimic_app()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline, "mimic server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", app
    srv.should_exit = True
    thread.join(timeout=10)
    sock.close()


# label 1 = "great" texts; "boom"/"busy" fail; "forced" is budget-forced; one text mislabelled
TEXTS = ["great fun", "dull", "great forced", "boom", "busy", "quite great", "bland", "mislabel"]
LABELS = [1, 0, 1, 0, 0, 1, 0, 1]


def _plan(url: str, loads: list[LoadSpec], requests: int) -> BenchPlan:
    return BenchPlan(url=url, policies=["beem", "none"], loads=loads,
                     bound=Bound(requests=requests), slo_ms=10_000)


def test_closed_loop_counts_errors_accuracy_and_histogram(server):
    url, app = server
    pool = TextPool(TEXTS, LABELS, ["negative", "positive"], "t")
    n = 3 * len(TEXTS)  # every text exactly three times per policy
    report = run_bench_sync(_plan(url, [LoadSpec("closed", 4)], n),
                            lambda p: ClassifyWorkload(pool, 1, RequestOptions(policy=p)))
    assert [r.policy for r in report.runs] == ["beem", "none"]
    good = [t for t in TEXTS if "boom" not in t and "busy" not in t]
    for r in report.runs:
        assert r.requests == n and r.ok == 3 * len(good)
        assert r.errors == {"429": 3, "500": 3}
        assert r.error_codes == {"internal": 3, "overloaded": 3}
        assert r.samples == r.labelled == 3 * len(good)
        assert r.accuracy == pytest.approx((len(good) - 1) / len(good))  # "mislabel" is wrong
        assert r.exit_histogram == {k: 3 * v for k, v in Counter(map(exit_of, good)).items()}
        assert r.num_layers == NUM_LAYERS and r.budget_forced == 3
        assert r.throughput_rps > 0 and r.goodput_rps == pytest.approx(r.throughput_rps)
        assert 0 < r.latency_ms.p50 <= r.latency_ms.p99 <= r.latency_ms.max
        assert r.server_total_ms_p50 == pytest.approx(2.5)
    sent = Counter(b.get("policy") for b in app.state.bodies[-2 * n:])
    assert sent == {"beem": n, "none": n}


def test_open_loop_batches_and_duration_bound(server):
    url, _ = server
    pool = TextPool(["great a", "dull b"], [1, 0], ["negative", "positive"], "t")
    plan = BenchPlan(url=url, policies=[None], loads=[LoadSpec("open", 40.0)],
                     bound=Bound(requests=1000, duration_s=1.0), seed=3)
    report = run_bench_sync(plan, lambda p: ClassifyWorkload(pool, 2, RequestOptions()))
    (r,) = report.runs
    assert r.policy == "default" and r.mode == "open"
    assert 15 <= r.requests <= 80  # ~40 Poisson arrivals in one second
    assert r.ok == r.requests and r.samples == 2 * r.ok and r.accuracy == 1.0


def test_cli_writes_json_and_plot(server, tmp_path, capsys):
    url, _ = server
    data = tmp_path / "d.csv"
    pairs = list(zip(TEXTS, LABELS, strict=True)) * 3
    rows = ["text,label"] + [f"{t},{'pos' if y else 'neg'}" for t, y in pairs]
    data.write_text("\n".join(rows) + "\n")
    out_json, out_png = tmp_path / "b.json", tmp_path / "b.png"
    rc = main(["bench", url, "--data", str(data), "--split", "train", "-c", "1,2", "-n", "12",
               "-p", "beem", "-p", "eenet", "--param", "alpha=0.5", "--warmup", "2",
               "--json", str(out_json), "--plot", str(out_png), "--quiet"])
    assert rc == 0
    report = json.loads(out_json.read_text())
    assert [(r["policy"], r["level"]) for r in report["runs"]] == [
        ("beem", 1.0), ("beem", 2.0), ("eenet", 1.0), ("eenet", 2.0)]
    for r in report["runs"]:
        assert r["requests"] == 12 and r["ok"] + sum(r["errors"].values()) == 12
    assert report["plan"]["params"] == {"alpha": 0.5}
    assert out_png.read_bytes()[:4] == b"\x89PNG"
    table = capsys.readouterr().out
    assert "eenet" in table and "p99 ms" in table


def test_cli_refuses_remote_and_unreachable(capsys):
    assert main(["bench", "http://192.0.2.1:8000", "-n", "1", "--quiet"]) == 2
    assert "--allow-remote" in capsys.readouterr().err
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    assert main(["bench", f"http://127.0.0.1:{port}", "-n", "1", "--quiet",
                 "--dataset", "tiny"]) == 2
    assert "cannot reach" in capsys.readouterr().err


def test_cli_rejects_bad_numbers(capsys):
    assert main(["bench", "http://127.0.0.1:1", "-n", "0"]) == 2
    assert "--requests must be > 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "http://127.0.0.1:1", "-c", "0"])


def test_caption_bench_skips_without_caption_model(server, capsys):
    url, _ = server
    assert main(["bench", url, "--task", "caption", "-n", "2", "--quiet"]) == 0
    assert "caption bench skipped" in capsys.readouterr().err
