"""Recipe studies: calibrated builds side by side, the joint recipe's last head, your own model.

- `compare`: calibrated builds of one task: per-exit accuracy, calibrated points, seed spread.
  Each argument is `LABEL=DIR` (a calibrated artifact). For every build it reads the per-exit
  accuracy from the manifest, replays every calibrated policy on test (the serving path,
  through `policies.fit.evaluation.evaluate`), and measures the validation wall: the best layer
  speed-up of one global max-prob threshold whose *point* loss on validation is <= 0.5 points
  (no guard can certify more than that on this validation split). Builds that share a label
  prefix (LABEL up to the first '@', e.g. `d0@s42`, `d0@s1`) are summarised as median / min /
  max. Nothing here is fitted on test; test is only replayed.
- `joint-last-head`: would an HF-standard last head (BERT pooler + classifier on token 0) cost
  the joint recipe accuracy? Trains the joint model with its mean-pooling last exit and with the
  standard head (same data, settings and seeds) and prints test accuracy per exit. Tiny: the
  tiny-text recipe's random BERT on generated sentences. Real (`--real KIND`): MiniLM-L6 on the
  fine-food reviews, one head kind per process (run two at once), the pretrained pooler moved
  into the hf head.
- `byom`: the second-dataset table: a user's classifier + `--from-classifier` vs the joint
  `--backbone` path. Reads what the runs wrote (the plain HF fine-tune's JSON, both artifacts'
  manifests and their `eeserve evaluate --json` reports on the test split) and prints one
  Markdown table: last-exit test accuracy, every calibrated policy's accuracy change (points)
  and layer speed-up, and the wall-clock of both paths. Nothing is re-fitted here.

    python -m bench.studies.recipes compare base@s42=artifacts/text-default \\
        d0@s42=artifacts/td-d0-s42 --json docs/figures/recipe_compare.json
    python -m bench.studies.recipes joint-last-head --seeds 0 1 2 \\
        --json docs/figures/joint_last_head_tiny.json
    python -m bench.studies.recipes joint-last-head --real exit \\
        --json docs/figures/joint_last_head_exit.json
    python -m bench.studies.recipes joint-last-head --real hf-bert \\
        --json docs/figures/joint_last_head_hf-bert.json
    python -m bench.studies.recipes byom --hf-json docs/figures/fine_foods_hf.json \\
        --from-classifier artifacts/ff-exits docs/figures/fine_foods_exits_test.json \\
        --joint artifacts/ff-joint docs/figures/fine_foods_joint_test.json \\
        --json docs/figures/fine_foods_byom.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.harness import record
from bench.studies._common import CACHED, load_splits, markdown_table, median_range, one_thread

if TYPE_CHECKING:
    from policies.fit.calibration import Split

DESCRIPTION = __doc__.splitlines()[0] if __doc__ else ""
POLICIES = ("maxprob", "beem", "eenet", "patience")
TOL = 0.005
BYOM_POLICIES = ("beem", "beem-c", "beem-a", "eenet", "maxprob", "entropy", "patience", "static")


# ---- compare --------------------------------------------------------------------------------
def val_wall(val: Split) -> dict[str, float]:
    """Best layer speed-up of a global max-prob threshold with point loss <= TOL on validation."""
    from policies.base import probabilities
    from policies.fit.sweep import sweep_global

    taus: list[float | None] = [1.0 - 10 ** (-e / 20) for e in range(1, 81)]  # 0.11 .. 0.9999
    probs = probabilities(val.logits)  # (N, K, C)
    conf, preds = probs.max(dim=-1)  # (N, K) each
    pts = [s.point for s in sweep_global(conf, preds, val.labels, val.costs, taus, 0.8)]
    ok = [p for p in pts if p.loss <= TOL + 1e-12]
    best = max(ok, key=lambda p: p.layer_speedup)
    return {"layer_speedup": round(best.layer_speedup, 3), "loss_pt": round(best.loss * 100, 2)}


def one_build(label: str, path: Path) -> dict[str, Any]:
    from policies.fit.calibration import CalibrationConfig
    from policies.fit.evaluation import evaluate

    manifest, (val, test) = load_splits(path, "val", "test")
    rep = evaluate(val, test, "test", manifest.get("policies") or {}, list(POLICIES),
                   CalibrationConfig())
    pols: dict[str, Any] = {}
    for p in rep.policies:
        cal = p.calibrated
        best = p.best
        pols[p.name] = {
            "delta_pt": round((cal.point.accuracy - rep.last_accuracy) * 100, 2) if cal else None,
            "layer_x": round(cal.point.layer_speedup, 3) if cal else None,
            "kept": p.kept,
            "val_layer_x": round(float(((manifest.get("policies") or {}).get(p.name) or {})
                                       .get("operating_point", {}).get("layer_speedup", 0.0)), 3),
            "hindsight_layer_x": round(best.point.layer_speedup, 3) if best else None}
    recipe = manifest.get("recipe") or {}
    return {"label": label, "dir": str(path), "default_policy": manifest.get("default_policy"),
            "steps": recipe.get("steps"), "train": recipe.get("train"),
            "exit_accuracy": {k: [round(a * 100, 2) for a in v]
                              for k, v in manifest["exit_accuracy"].items()},
            "val_wall_maxprob": val_wall(val), "policies": pols}


def spread(builds: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for b in builds:
        groups.setdefault(b["label"].split("@")[0], []).append(b)
    out: dict[str, dict[str, Any]] = {}
    for name, bs in groups.items():
        row: dict[str, Any] = {"n": len(bs),
                               "last_test": median_range([b["exit_accuracy"]["test"][-1]
                                                          for b in bs])}
        for pol in POLICIES:
            vs = [b["policies"][pol]["val_layer_x"] for b in bs]
            xs = [b["policies"][pol]["layer_x"] for b in bs if b["policies"][pol]["layer_x"]]
            ds = [b["policies"][pol]["delta_pt"] for b in bs
                  if b["policies"][pol]["delta_pt"] is not None]
            if xs:
                row[pol] = {"val_layer_x": median_range(vs), "layer_x": median_range(xs),
                            "delta_pt": median_range(ds)}
        out[name] = row
    return out


def show(builds: list[dict[str, Any]]) -> None:
    for b in builds:
        ea = b["exit_accuracy"]
        print(f"\n{b['label']} ({b['dir']}, {b['steps']} steps, default {b['default_policy']})")
        print("  val  exits: " + " / ".join(f"{a:.2f}" for a in ea["val"]))
        print("  test exits: " + " / ".join(f"{a:.2f}" for a in ea["test"]))
        w = b["val_wall_maxprob"]
        print(f"  val wall (max-prob, point loss <= 0.5 pt): {w['layer_speedup']:.2f}x "
              f"at {w['loss_pt']:.2f} pt")
        for name, p in b["policies"].items():
            print(f"  {name:9s} val (guarded fit) {p['val_layer_x']:.2f}x;"
                  f" test: {p['delta_pt']:+.2f} pt / {p['layer_x']:.2f}x "
                  f"kept={p['kept']}  hindsight {p['hindsight_layer_x']}x")


def compare(args: argparse.Namespace) -> int:
    builds = []
    for item in args.builds:
        label, _, path = item.partition("=")
        builds.append(one_build(label, Path(path)))
    show(builds)
    groups = spread(builds)
    print("\nspread over builds of one recipe (median [min, max]):")
    for name, row in groups.items():
        lt = row["last_test"]
        parts = [f"last exit test {lt['median']:.2f} [{lt['min']:.2f}, {lt['max']:.2f}] %"]
        for pol in POLICIES:
            if pol in row:
                x, d, v = row[pol]["layer_x"], row[pol]["delta_pt"], row[pol]["val_layer_x"]
                parts.append(f"{pol} val {v['median']:.2f}x, test {x['median']:.2f}x "
                             f"[{x['min']:.2f}, {x['max']:.2f}] "
                             f"{d['median']:+.2f} pt [{d['min']:+.2f}, {d['max']:+.2f}]")
        print(f"  {name} (n={row['n']}): " + "; ".join(parts))
    record("studies.recipes.compare", args.json, {"builds": builds, "spread": groups}, **CACHED)
    return 0


# ---- joint-last-head ------------------------------------------------------------------------
def run_tiny(last_head: str, seed: int) -> list[float]:
    """The tiny-text recipe's random 3-layer BERT on generated sentences, one head kind."""
    from dataclasses import replace

    import torch

    from models.build.data import tiny_sentiment
    from models.build.tiny import tiny_backbone_config, tiny_tokenizer
    from models.build.training import TrainConfig, exit_accuracy, exit_logits, train
    from models.text_classifier import MultiExitTextClassifier, TextClassifierConfig

    data = tiny_sentiment(1200, seed=seed)
    torch.manual_seed(seed)
    tok = tiny_tokenizer()
    bcfg = tiny_backbone_config("bert", layers=3, vocab_size=len(tok))
    bcfg.num_labels = 2
    head = TextClassifierConfig(num_labels=2, max_length=32, dropout=0.0, last_head=last_head)
    model = MultiExitTextClassifier.from_config(bcfg, tok, head)
    cfg = TrainConfig(epochs=6, batch_size=32, lr=3e-3, head_lr=3e-3, distill=0.0, patience=4,
                      max_length=32, warmup=0.05, seed=seed)
    train(model, data, replace(cfg), progress=False)
    return exit_accuracy(exit_logits(model, data.test, 32), data.test.labels)


def run_real(last_head: str, epochs: int, max_length: int) -> dict[str, object]:
    """MiniLM-L6 on the fine-food reviews, with its mean-pooling last exit or the HF head."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from models.build.backbones import MINILM_L6, fetch_backbone
    from models.build.data import load_fine_foods
    from models.build.training import TrainConfig, exit_accuracy, exit_logits, train
    from models.text_classifier import MultiExitTextClassifier, TextClassifierConfig

    data = load_fine_foods()
    bdir = str(fetch_backbone(MINILM_L6))
    torch.manual_seed(42)
    backbone = AutoModel.from_pretrained(bdir)  # with its pretrained pooler
    head = TextClassifierConfig(num_labels=2, max_length=max_length)
    model = MultiExitTextClassifier(backbone, AutoTokenizer.from_pretrained(bdir), head)
    if last_head == "hf-bert":
        from models.hf_heads import BertHead

        std = BertHead(backbone.config)
        std.pooler = backbone.pooler
        model.heads[-1] = std
    backbone.pooler = None
    cfg = TrainConfig(epochs=epochs, max_length=max_length)
    start = time.perf_counter()
    res = train(model, data, cfg, progress=False)
    acc = exit_accuracy(exit_logits(model, data.test, max_length), data.test.labels)
    return {"last_head": last_head, "epochs": epochs, "max_length": max_length,
            "val_last": res.best_val_accuracy, "test_exits": acc,
            "seconds": round(time.perf_counter() - start, 1)}


def joint_last_head(args: argparse.Namespace) -> int:
    one_thread()
    if args.real:
        out = run_real(args.real, args.epochs, args.max_length)
        print(json.dumps(out))
        record("studies.recipes.joint_last_head", args.json, out, **CACHED)
        return 0
    res: dict[str, list[list[float]]] = {"exit": [], "hf-bert": []}
    for seed in args.seeds:  # interleaved, so drift hits both alike
        for kind in res:
            res[kind].append(run_tiny(kind, seed))
            print(kind, seed, [round(a, 4) for a in res[kind][-1]], flush=True)
    summary = {k: {"last_exit_median": statistics.median(r[-1] for r in v), "runs": v}
               for k, v in res.items()}
    print(json.dumps({k: v["last_exit_median"] for k, v in summary.items()}))
    record("studies.recipes.joint_last_head", args.json, summary, **CACHED)
    return 0


# ---- byom -----------------------------------------------------------------------------------
def path_row(artifact: Path, report: Path) -> dict[str, Any]:
    man = json.loads((artifact / "manifest.json").read_text())
    rep = json.loads(report.read_text())
    out: dict[str, Any] = {"artifact": str(artifact), "last_accuracy": rep["last_accuracy"],
                           "exit_accuracy_test": man["exit_accuracy"]["test"],
                           "train_seconds": man["recipe"]["train_seconds"],
                           "feature_cache_seconds": man["recipe"].get("feature_cache_seconds"),
                           "parity": man.get("last_exit_parity"), "policies": {}}
    for name in BYOM_POLICIES:
        cal = (rep["policies"].get(name) or {}).get("calibrated")
        if cal:
            out["policies"][name] = {"delta_points": round(100 * (cal["accuracy"]
                                                                  - cal["last_accuracy"]), 2),
                                     "layer_speedup": round(cal["layer_speedup"], 2),
                                     "mean_exit": round(cal["mean_exit"], 2)}
    return out


def byom_table(rows: dict[str, dict[str, Any]]) -> str:
    names = list(rows)
    body = [["last-exit test accuracy",
             *(f"{100 * rows[n]['last_accuracy']:.2f} %" for n in names)],
            ["per-exit test accuracy",
             *(" / ".join(f"{100 * a:.1f}" for a in rows[n]["exit_accuracy_test"])
               for n in names)]]
    for p in BYOM_POLICIES:
        cells = []
        for n in names:
            c = rows[n]["policies"].get(p)
            cells.append(f"{c['delta_points']:+.2f} pt, {c['layer_speedup']:.2f}×" if c else "–")
        body.append([f"{p}: Δ accuracy, layer speed-up", *cells])
    return markdown_table(["", *names], body)


def byom(args: argparse.Namespace) -> int:
    hf = json.loads(args.hf_json.read_text())
    rows = {"HF fine-tune + --from-classifier": path_row(*args.from_classifier),
            "joint --backbone": path_row(*args.joint)}
    fc = rows["HF fine-tune + --from-classifier"]
    fc["plain_hf_test_accuracy"] = hf["test_accuracy"]
    fc["hf_finetune_seconds"] = hf["train_seconds"]
    fc["total_seconds"] = round(hf["train_seconds"] + fc["train_seconds"], 1)
    rows["joint --backbone"]["total_seconds"] = rows["joint --backbone"]["train_seconds"]
    print(byom_table(rows))
    print(f"\nplain HF classifier test accuracy {100 * hf['test_accuracy']:.2f} %; "
          f"wall-clock: HF fine-tune {hf['train_seconds']:.0f} s + --from-classifier "
          f"{fc['train_seconds']:.0f} s (feature cache {fc['feature_cache_seconds']:.0f} s) = "
          f"{fc['total_seconds']:.0f} s; joint {rows['joint --backbone']['total_seconds']:.0f} s")
    record("studies.recipes.byom", args.json, {"hf": hf, "paths": rows})
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.studies.recipes", description=DESCRIPTION)
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare", help="calibrated builds of one task, side by side")
    c.add_argument("builds", nargs="+", metavar="LABEL=DIR")
    c.add_argument("--json", type=Path)
    c.set_defaults(run=compare)
    j = sub.add_parser("joint-last-head", help="mean-pooling last exit vs the HF-standard head")
    j.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    j.add_argument("--json", type=Path)
    j.add_argument("--real", choices=["exit", "hf-bert"])
    j.add_argument("--epochs", type=int, default=1)
    j.add_argument("--max-length", type=int, default=64)
    j.set_defaults(run=joint_last_head)
    b = sub.add_parser("byom", help="your classifier + --from-classifier vs the joint path")
    b.add_argument("--hf-json", type=Path, required=True)
    b.add_argument("--from-classifier", nargs=2, type=Path, metavar=("ARTIFACT", "REPORT"),
                   required=True)
    b.add_argument("--joint", nargs=2, type=Path, metavar=("ARTIFACT", "REPORT"), required=True)
    b.add_argument("--json", type=Path)
    b.set_defaults(run=byom)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    raise SystemExit(main())
