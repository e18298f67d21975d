"""`python -m bench.compare` on a tiny artifact: the one-worker and two-worker ONNX Runtime peers
and eeserve, k6 closed loop, one short round; the record says what ran and what it measured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import compare


def test_compare_record_names_every_target_and_measures_answers(tiny_artifact: Path,
                                                                 tmp_path: Path) -> None:
    out = tmp_path / "compare.json"
    rc = compare.main([str(tiny_artifact), "--targets", "peer-onnx", "peer-onnx-w2",
                       "onnx:none", "--rounds", "1", "--duration", "2", "--vus", "4",
                       "--logs", str(tmp_path / "logs"), "--json", str(out)])
    assert rc == 0
    rec = json.loads(out.read_text())
    assert rec["benchmark"] == "compare" and rec["machine"]["cpus"] >= 1
    targets = rec["settings"]["targets"]
    assert targets["peer-onnx-w2"]["workers"] == 2 and targets["peer-onnx"]["workers"] == 1
    assert targets["onnx:none"] | {"policy": "none"} == targets["onnx:none"]
    for t in ("peer-onnx", "peer-onnx-w2", "onnx:none"):
        m = rec["results"]["median"][t]
        assert m["req_s"] > 0 and m["failed"] == 0, (t, m)
        assert 0.0 <= m["accuracy"] <= 1.0 and m["server_cores"] > 0


def test_unknown_server_is_refused_with_the_known_names(tiny_artifact: Path) -> None:
    with pytest.raises(SystemExit, match="unknown server 'onnx3'.*-wN for N worker"):
        compare.main([str(tiny_artifact), "--targets", "onnx3:beem"])


def test_medians_skip_missing_figures() -> None:
    runs = {"a": [{"req_s": 1.0, "accuracy": None}, {"req_s": 3.0, "accuracy": 0.5},
                  {"req_s": 2.0, "accuracy": None}]}
    assert compare.medians(runs) == {"a": {"req_s": 2.0, "accuracy": 0.5}}
