"""A real shift: the movie-review model served on SpamAssassin mails, shadow checks on.

1. Offline truth: every exit's logits on every mail (and on the movie-review test split, the
   in-distribution control), replayed through the policy: the *true* agreement of early answers
   with the last exit, and the layer speed-up, per setting.
2. Live: for each setting, start `eeserve serve ART` (EESERVE_SHADOW_RATE, EESERVE_ADAPT), send
   the texts one request at a time over HTTP in a fixed shuffled order, poll /v1/models every
   `--poll` requests, and note when the alarm's verdict first turned "broken". At the end: the
   live agreement (shadow checks) against the offline truth on the same texts; per quarter of
   the stream, the share of answers equal to the full-depth answer and the mean exit layer.

Settings: calibrated BEEM on movie reviews (control: the promise should hold), calibrated BEEM
on mails, BEEM with one global threshold (`--loosen` times the lowest calibrated one) on mails
(the promise broken on purpose), and the same with EESERVE_ADAPT=true. The mails have no
sentiment labels, so "accuracy" here is agreement with the full-depth answer. The record goes
to `--json` (default docs/figures/shift_alarm.json).

    EESERVE_DATA_DIR=.eeserve python -m bench.reliability.shift_alarm artifacts/text-default \\
        --limit 3000 --loosen 0.5 --rate 0.2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from bench.harness import ROOT, record, running
from bench.reliability._common import serve_port, served_settings

if TYPE_CHECKING:
    import torch

DESCRIPTION = __doc__.splitlines()[0] if __doc__ else ""
LOGS = ROOT / "logs"


def all_logits(art: str, texts: list[str], cache: Path) -> torch.Tensor:
    """(N, K, C) logits of every exit, cached."""
    import torch

    from models.loading import load_text_artifact

    if cache.exists():
        cached: torch.Tensor = torch.load(cache)
        return cached
    model = load_text_artifact(art, "cpu").model
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), 32):
            out.append(model.all_exit_logits(model.encode(texts[i:i + 32])).float())
    logits = torch.cat(out)
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(logits, cache)
    return logits


def loosened(cal: dict[str, Any], factor: float) -> float:
    """One global BEEM threshold: `factor` times the lowest calibrated one (request params
    carry scalars only)."""
    p = cal["params"]
    ts = [float(t) for t in p.get("thresholds", []) if t is not None] or [float(p["threshold"])]
    return round(min(ts) * factor, 6)


def offline(logits: torch.Tensor, num_exits: int, cal: dict[str, Any],
            params: dict[str, Any]) -> dict[str, Any]:
    from policies import build_policy
    from policies.replay import replay

    r = replay(build_policy("beem", num_exits, params, cal), logits)
    early = r.exit_layer < num_exits
    same = r.prediction == r.final_prediction
    return {"agreement": round(float(same.double().mean()), 5),
            "early_share": round(float(early.double().mean()), 5),
            "early_agreement": round(float(same[early].double().mean()), 5) if early.any()
            else None, "layer_speedup": round(r.layer_speedup(), 4),
            "exit_shares": [round(x, 4) for x in r.exit_shares()]}


def _verdict(c: httpx.Client, name: str) -> str | None:
    pols = c.get(f"/v1/models/{name}").json()["details"]["live_agreement"]["policies"]
    alls = [p["all"] for p in pols.values() if p.get("all")]
    return alls[0]["verdict"] if alls else None


def live_run(art: str, texts: list[str], full: list[int], params: dict[str, Any], rate: float,
             adapt: bool, poll: int, port: int | None,
             log: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """One setting on a fresh server: (its figures, the server's backend and precision)."""
    env = {"EESERVE_SHADOW_RATE": str(rate), "EESERVE_ADAPT": str(adapt).lower(),
           "EESERVE_MAX_CHARS_PER_TEXT": "2000"}
    fired_at, exits, labels = None, [], []
    with running(serve_port([art], log, env=env, port=port, timeout=600)) as server:
        served = served_settings(server.url)
        with httpx.Client(base_url=server.url, trust_env=False, timeout=30) as c:
            name = c.get("/v1/models").json()["models"][0]["name"]
            for i, t in enumerate(texts, 1):
                body = {"inputs": t, "policy": "beem", "params": params}
                res = c.post("/v1/classify", json=body).json()["results"][0]
                exits.append(res["exit_layer"])
                labels.append(res["label_id"])
                if fired_at is None and i % poll == 0:
                    time.sleep(0.05)  # idle: shadow work and judgements run
                    if _verdict(c, name) == "broken":
                        fired_at = i
            time.sleep(1.0)
            live = c.get(f"/v1/models/{name}").json()["details"]["live_agreement"]
            if fired_at is None and _verdict(c, name) == "broken":
                fired_at = len(texts)
    n, k = len(texts), max(exits)
    quarters = []
    for q in range(4):
        lo, hi = q * n // 4, (q + 1) * n // 4
        same = sum(int(labels[j] == full[j]) for j in range(lo, hi))
        quarters.append({"requests": f"{lo + 1}-{hi}", "agreement": round(same / (hi - lo), 4),
                         "mean_exit": round(sum(exits[lo:hi]) / (hi - lo), 3),
                         "layer_speedup": round(k * (hi - lo) / sum(exits[lo:hi]), 3)})
    pol: dict[str, Any] = next(iter(live["policies"].values()), {})
    return {"rate": rate, "adapt": adapt, "alarm_fired_at_request": fired_at,
            "live_all": pol.get("all"), "live_exits": pol.get("exits"),
            "retuning": pol.get("retuning"), "dropped": live.get("dropped"),
            "stream_agreement": round(sum(int(a == b) for a, b in zip(labels, full,
                                                                       strict=True)) / n, 4),
            "stream_layer_speedup": round(k * n / sum(exits), 4), "quarters": quarters}, served


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.reliability.shift_alarm",
                                 description=DESCRIPTION)
    ap.add_argument("artifact")
    ap.add_argument("--rate", type=float, default=0.2)
    ap.add_argument("--loosen", type=float, default=0.5)
    ap.add_argument("--threshold", type=float, default=None,
                    help="the loosened global threshold itself (overrides --loosen)")
    ap.add_argument("--limit", type=int, default=3000, help="mails streamed per setting")
    ap.add_argument("--poll", type=int, default=10)
    ap.add_argument("--offline-only", action="store_true", help="stop after the offline truth")
    ap.add_argument("--port", type=int, default=None, help="serve on this port (default: free)")
    ap.add_argument("--json", "--out", dest="json", type=Path,
                    default=ROOT / "docs/figures/shift_alarm.json",
                    help="write the run's record here (default %(default)s)")
    a = ap.parse_args(argv)

    import torch

    from models.build.data import load_movie_reviews
    from models.build.shift_data import load_spamassassin

    torch.set_num_threads(int(os.environ.get("EESERVE_TORCH_THREADS", "1")))
    manifest = json.loads((Path(a.artifact) / "manifest.json").read_text())
    cal = manifest["policies"]["beem"]
    k = int(manifest["num_exits"])
    rng = random.Random(0)
    mails = [m.text for m in load_spamassassin()]
    rng.shuffle(mails)
    mails = mails[:a.limit]
    movies = load_movie_reviews().test.texts
    tag = hashlib.sha1((Path(a.artifact) / "manifest.json").read_bytes()).hexdigest()[:10]
    cache = Path(os.environ.get("EESERVE_DATA_DIR", ".eeserve")) / "shift-cache" / tag
    lm = all_logits(a.artifact, mails, cache / f"mails-{a.limit}.pt")
    lv = all_logits(a.artifact, movies, cache / "movies-test.pt")
    loose = {"threshold": a.threshold if a.threshold is not None else loosened(cal, a.loosen)}
    truth = {"movies_calibrated": offline(lv, k, cal, {}),
             "mails_calibrated": offline(lm, k, cal, {}),
             "mails_loosened": offline(lm, k, cal, loose),
             "movies_loosened": offline(lv, k, cal, loose)}
    print(json.dumps(truth, indent=1), flush=True)
    if a.offline_only:
        return 0
    full_m = lm[:, -1].argmax(-1).tolist()
    full_v = lv[:, -1].argmax(-1).tolist()
    settings = [("movies_calibrated", movies, full_v, {}, False),
                ("mails_calibrated", mails, full_m, {}, False),
                ("mails_loosened", mails, full_m, loose, False),
                ("mails_loosened_adapt", mails, full_m, loose, True)]
    live = {}
    served: dict[str, Any] = {}
    LOGS.mkdir(exist_ok=True)
    for name, texts, full, params, adapt in settings:
        live[name], served = live_run(a.artifact, texts, full, params, a.rate, adapt, a.poll,
                                      a.port, LOGS / f"shift_alarm-serve-{name}.log")
        print(name, json.dumps(live[name])[:600], flush=True)
    record("reliability.shift_alarm", a.json,
           {"truth": truth, "live": live, "rate": a.rate, "loosen": a.loosen,
            "mails": len(mails), "movies": len(movies), "calibrated": cal["params"],
            "loosened": loose}, **served, artifact=a.artifact)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
