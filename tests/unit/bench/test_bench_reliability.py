"""bench.reliability.soak against a real server: a few seconds on the tiny-text artifact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.reliability import soak, soak_plot


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
    assert res["sent"] > 50 and any(k.startswith("classify 200") for k in res["by_kind_status"])
    assert any(k.startswith("empty-list 400") for k in res["by_kind_status"])
    windows = res["windows"]
    assert [w["window"] for w in windows] == [0, 1, 2]
    for w in windows:
        assert w["5xx"] == 0 and w["ok"] > 0
        assert w["processes"] >= 1 and w["rss_mb"] > 10 and w["fds"] > 0 and w["threads"] > 0
        assert all(mb > 0 for mb in w["rss_mb_by_pid"].values())
        assert all(n > 0 for n in w["fds_by_pid"].values())
    assert res["rss_mb_end"] > 0 and res["end"]["fds"] > 0


@pytest.mark.slow
def test_a_mixed_soak_on_engine_processes_counts_every_kind_and_names_processes(
        tiny_artifact: Path, tiny_caption_artifact: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    out, cp = tmp_path / "soak.json", tmp_path / "checkpoint.json"
    rc = soak.main(["--serve", str(tiny_artifact), str(tiny_caption_artifact),
                    "--serve-args", "--workers 2", "--policy", "beem", "--minutes", "0.1",
                    "--window-s", "3", "--rate", "30", "--probe-s", "1",
                    "--mix", "classify=0.6,bad=0.2,oip=0.2", "--caption-share", "0.3",
                    "--scrape-s", "0.5", "--json", str(out), "--checkpoint", str(cp)])
    res = json.loads(out.read_text())["results"]
    partial = json.loads(cp.read_text())["results"]
    assert partial["partial"] is True and len(partial["windows"]) == len(res["windows"])
    assert rc == 0, res["by_kind_status"]
    kinds = {k.split()[0] for k in res["by_kind_status"]}
    assert {"classify", "oip", "caption", "scrape", "readyz"} <= kinds
    assert res["by_kind_status"].get("scrape 200", 0) >= 5
    assert res["caption_capacity_rps"] > 0 and res["caption_offered_rps"] > 0
    names = set(res["windows"][-1]["names_by_pid"].values())
    assert {"server", "text-0", "text-1", "caption-0"} <= names, names
    assert all(w["by_kind"]["oip"]["ok"] > 0 for w in res["windows"])

    png = tmp_path / "soak.png"
    assert soak_plot.main([str(out), str(png), "--markdown"]) == 0
    table = capsys.readouterr().out
    assert "| RSS text-0 MiB |" in table and "caption 200s" in table
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_soak_plot_refuses_a_record_without_windows(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "r.json"
    bad.write_text(json.dumps({"results": {}}))
    assert soak_plot.main([str(bad), str(tmp_path / "x.png")]) == 2
    assert "has no windows" in capsys.readouterr().err


@pytest.mark.parametrize("mix, msg", [("classify=x", "is not KIND=SHARE"),
                                      ("spam=1", "unknown kind 'spam'"),
                                      ("classify=0", "not all 0")])
def test_a_bad_mix_is_refused_with_its_reason(mix: str, msg: str) -> None:
    with pytest.raises(Exception, match=msg):
        soak.parse_mix(mix)
