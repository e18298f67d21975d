"""`eeserve export` and backend calibration from the command line: one line per outcome."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tools.cli import main


@pytest.fixture()
def art(tiny_artifact: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "tiny"
    shutil.copytree(tiny_artifact, dst)
    return dst


def test_export_onnx_reports_parity(art: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(art), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "parity passed" in out and "policy mismatches" in out


def test_bad_format_and_bad_precision_are_one_line(art: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(art), "--format", "tflite"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("eeserve: error: --format 'tflite'") and "\n" not in err
    assert main(["export", str(art), "--precision", "int4"]) == 2
    assert "--precision 'int4'" in capsys.readouterr().err
    assert main(["calibrate", str(art), "--backend", "torch", "--precision", "int8"]) == 2
    assert "onnx backend only" in capsys.readouterr().err


def test_serving_int8_before_calibrating_it_is_refused(art: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(art), "--precision", "int8", "--quiet"]) == 0
    capsys.readouterr()
    from models.artifact import ArtifactError
    from models.loading import BackendChoice, load_text_artifact

    with pytest.raises(ArtifactError, match="eeserve calibrate .* --backend onnx --precision"):
        load_text_artifact(art, backend=BackendChoice("onnx", "int8"))
    assert main(["calibrate", str(art), "--backend", "onnx", "--precision", "int8"]) == 0
    assert "for onnx int8" in capsys.readouterr().out
    assert load_text_artifact(art, backend=BackendChoice("onnx", "int8")).backend == "onnx"
