"""bench.reliability.soak against a real server: a few seconds on the tiny-text artifact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.reliability import soak


@pytest.mark.slow
def test_a_short_soak_records_windows_memory_files_and_threads(tiny_artifact: Path,
                                                               tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    rc = soak.main(["--serve", str(tiny_artifact), "--policy", "none", "--minutes", "0.1",
                    "--window-s", "2", "--rate", "30", "--json", str(out)])
    rec = json.loads(out.read_text())
    assert rec["benchmark"] == "reliability.soak" and rec["machine"]["cpus"]
    res = rec["results"]
    assert rc == 0, res["by_kind_status"]
    assert res["5xx"] == 0 and res["unexpected"] == 0
    assert res["sent"] > 50 and any(k.startswith("valid 200") for k in res["by_kind_status"])
    assert any(k.startswith("empty-list 400") for k in res["by_kind_status"])
    windows = res["windows"]
    assert [w["window"] for w in windows] == [0, 1, 2]
    for w in windows:
        assert w["5xx"] == 0 and w["ok"] > 0
        assert w["processes"] >= 1 and w["rss_mb"] > 10 and w["fds"] > 0 and w["threads"] > 0
        assert all(mb > 0 for mb in w["rss_mb_by_pid"].values())
        assert all(n > 0 for n in w["fds_by_pid"].values())
    assert res["rss_mb_end"] > 0 and res["end"]["fds"] > 0
