"""Pure parts of the bench: percentiles, summaries, URL checks, arrivals, bodies, reports."""

from __future__ import annotations

import argparse
import json

import pytest

from tools.commands.bench import parse_param
from tools.loadtest.driver import Bound, poisson_arrivals
from tools.loadtest.net import UrlError, base_url, is_loopback_host
from tools.loadtest.records import LoadSpec, RequestOutcome, SampleOutcome
from tools.loadtest.report import format_table, write_json, write_plot
from tools.loadtest.runner import BenchReport
from tools.loadtest.summary import percentile, summarize
from tools.loadtest.workloads import BadResponse, ClassifyWorkload, RequestOptions, TextPool


def test_percentile_matches_linear_interpolation():
    xs = [float(x) for x in range(1, 101)]
    assert percentile(xs, 50) == pytest.approx(50.5)
    assert percentile(xs, 99) == pytest.approx(99.01)
    assert percentile(xs, 0) == 1.0 and percentile(xs, 100) == 100.0
    assert percentile([3.0], 99) == 3.0
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile(xs, 101)


def _ok(start: float, lat: float, exits: list[int], correct: list[bool | None]) -> RequestOutcome:
    samples = tuple(SampleOutcome(float(k), 4, c, budget_forced=(k == 1))
                    for k, c in zip(exits, correct, strict=True))
    return RequestOutcome(start, lat, "200", samples, server_total_ms=lat * 900)


def test_summary_counts_errors_accuracy_histogram_and_goodput():
    outcomes = [
        _ok(0.0, 0.010, [1, 4], [True, False]),
        _ok(0.5, 0.030, [2], [True]),
        _ok(1.0, 0.100, [4], [None]),
        RequestOutcome(1.2, 0.001, "429", error_code="overloaded"),
        RequestOutcome(1.5, 0.002, "500", error_code="internal"),
        RequestOutcome(1.6, 0.4, "client_timeout"),
    ]
    s = summarize("beem", LoadSpec("closed", 2), outcomes, slo_ms=50)
    assert (s.requests, s.ok, s.samples, s.labelled) == (6, 3, 4, 3)
    assert s.errors == {"429": 1, "500": 1, "client_timeout": 1}
    assert s.error_codes == {"internal": 1, "overloaded": 1}
    assert s.accuracy == pytest.approx(2 / 3)
    assert s.exit_histogram == {1: 1, 2: 1, 4: 2}
    assert s.mean_exit_layer == pytest.approx(11 / 4)
    assert s.num_layers == 4 and s.budget_forced == 1
    assert s.duration_s == pytest.approx(2.0)  # 0.0 .. 1.6 + 0.4
    assert s.throughput_rps == pytest.approx(1.5)
    assert s.slo_met == 2 and s.goodput_rps == pytest.approx(1.0)
    assert s.latency_ms.p50 == pytest.approx(30.0)
    assert s.latency_ms.max == pytest.approx(100.0)
    assert s.server_total_ms_p50 == pytest.approx(27.0)


def test_summary_of_nothing_and_of_only_errors():
    empty = summarize("none", LoadSpec("open", 5), [])
    assert empty.requests == 0 and empty.throughput_rps == 0 and empty.latency_ms.p50 is None
    failed = summarize("none", LoadSpec("open", 5), [RequestOutcome(0, 0.1, "503")])
    assert failed.ok == 0 and failed.accuracy is None and failed.errors == {"503": 1}
    assert failed.goodput_rps == 0 and failed.exit_histogram == {}


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.1", "localhost", "[::1]", "::1"])
def test_loopback_hosts(host):
    assert is_loopback_host(host)


@pytest.mark.parametrize("host", ["10.0.0.1", "example.com", "0.0.0.0", "192.168.1.5"])
def test_non_loopback_hosts(host):
    assert not is_loopback_host(host)


def test_base_url_normalises_and_refuses_remote():
    assert base_url("http://127.0.0.1:8000/") == "http://127.0.0.1:8000"
    assert base_url("127.0.0.1:9000/v1/classify") == "http://127.0.0.1:9000"
    assert base_url("http://u:p@localhost:1/api/v1/caption") == "http://localhost:1/api"
    with pytest.raises(UrlError, match="--allow-remote"):
        base_url("http://example.com:8000")
    assert base_url("http://example.com:8000", allow_remote=True) == "http://example.com:8000"
    with pytest.raises(UrlError):
        base_url("ftp://127.0.0.1/")


def test_poisson_arrivals_rate_and_bounds():
    times = poisson_arrivals(50.0, Bound(requests=2000), seed=1)
    assert len(times) == 2000 and times == sorted(times)
    assert 2000 / times[-1] == pytest.approx(50.0, rel=0.1)
    short = poisson_arrivals(50.0, Bound(duration_s=1.0), seed=1)
    assert short and short[-1] < 1.0 and 25 < len(short) < 80
    assert poisson_arrivals(50.0, Bound(requests=5, duration_s=100), seed=1) == times[:5]
    with pytest.raises(ValueError):
        Bound()
    with pytest.raises(ValueError):
        poisson_arrivals(0, Bound(requests=1))


def test_classify_bodies_cycle_inputs_and_carry_options():
    pool = TextPool(["a", "b", "c"], [0, 1, 0], ["neg", "pos"], "t")
    opts = RequestOptions(policy="beem", params={"alpha": 0.5}, latency_budget_ms=20)
    w = ClassifyWorkload(pool, batch=2, options=opts, seed=0)
    bodies = [w.body(i) for i in range(3)]
    sent = [t for b, _ in bodies for t in b["inputs"]]
    assert sorted(sent[:3]) == ["a", "b", "c"] and sent[3:] == sent[:3]
    body, expected = bodies[0]
    assert body["policy"] == "beem" and body["params"] == {"alpha": 0.5}
    assert body["latency_budget_ms"] == 20 and "model" not in body
    assert expected == tuple(pool.labels[pool.texts.index(t)] for t in body["inputs"])
    single, _ = ClassifyWorkload(pool, 1, RequestOptions()).body(0)
    assert isinstance(single["inputs"], str) and set(single) == {"inputs"}


def test_classify_parse_checks_shape_and_labels():
    pool = TextPool(["a", "b"], [0, 1], ["neg", "pos"], "t")
    w = ClassifyWorkload(pool, 2, RequestOptions())
    payload = {"results": [
        {"label": "neg", "label_id": 0, "exit_layer": 2, "num_layers": 6},
        {"label": "LABEL_0", "label_id": 0, "exit_layer": 6, "num_layers": 6,
         "budget_forced": True}]}
    s = w.parse(payload, (0, 1))
    assert [x.correct for x in s] == [True, False]  # by name, then by id
    assert [x.exit_layer for x in s] == [2.0, 6.0] and s[1].budget_forced
    with pytest.raises(BadResponse):
        w.parse({"results": payload["results"][:1]}, (0, 1))
    with pytest.raises(BadResponse):
        w.parse({"results": [{"label": "neg"}, {"label": "neg"}]}, (0, 1))


@pytest.mark.parametrize("text,value", [("k=1", 1), ("k=0.5", 0.5), ("k=true", True),
                                        ("k=abc", "abc"), ("k=", "")])
def test_parse_param(text, value):
    key, v = parse_param(text)
    assert key == "k" and v == value and type(v) is type(value)


def test_parse_param_rejects_missing_key():
    with pytest.raises(argparse.ArgumentTypeError):
        parse_param("novalue")


def test_table_json_and_plot(tmp_path):
    runs = [summarize(p, LoadSpec("closed", c), [_ok(0, 0.01 * c, [2], [True])])
            for p in ("none", "beem") for c in (1, 4)]
    runs.append(summarize("beem", LoadSpec("open", 5.0), [RequestOutcome(0, 1, "429")]))
    table = format_table(runs)
    assert table.count("\n") == len(runs) + 1 and "429:1" in table and "c=4" in table
    report = BenchReport(plan={"url": "x"}, runs=runs)
    write_json(report, tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert len(data["runs"]) == 5 and data["runs"][0]["exit_histogram"] == {"2": 1}
    write_plot(runs, tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_caption_bodies_are_pngs_and_parse_mean_exit_layers():
    import base64

    from tools.loadtest.workloads import CaptionWorkload

    w = CaptionWorkload(batch=2, options=RequestOptions(policy="maxprob"), max_tokens=8)
    body, expected = w.body(0)
    assert expected == (None, None) and body["max_tokens"] == 8 and body["policy"] == "maxprob"
    assert all(base64.b64decode(x)[:8] == b"\x89PNG\r\n\x1a\n" for x in body["images"])
    payload = {"results": [
        {"caption": "a red box", "tokens": [{"exit_layer": 1}, {"exit_layer": 3}],
         "mean_exit_layer": 2.0, "num_layers": 4},
        {"caption": "x", "tokens": [{"exit_layer": 4}], "mean_exit_layer": 4.0,
         "num_layers": 4}]}
    s = w.parse(payload, expected)
    assert [(x.exit_layer, x.tokens, x.correct) for x in s] == [(2.0, 2, None), (4.0, 1, None)]
    summary = summarize("maxprob", LoadSpec("closed", 1), [RequestOutcome(0, 0.1, "200", s)])
    assert summary.extra == {"mean_tokens_per_caption": 1.5} and summary.accuracy is None
    with pytest.raises(BadResponse):
        w.parse({"results": [{"caption": "x"}, {"caption": "y"}]}, expected)
