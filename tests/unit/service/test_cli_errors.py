"""Every CLI path ends in its result or one line of reason (tools/cli.py)."""

from __future__ import annotations

import pytest

from tools import cli
from tools.commands import bench


def test_an_unexpected_error_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    def boom(args: object) -> int:
        raise TypeError("bool() undefined when iterable == total == None\nmore")

    monkeypatch.setattr(bench, "run", boom)
    monkeypatch.delenv("EESERVE_DEBUG", raising=False)
    assert cli.main(["bench", "http://127.0.0.1:9"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("eeserve: error: TypeError: bool() undefined")


def test_debug_shows_the_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(args: object) -> int:
        raise TypeError("x")

    monkeypatch.setattr(bench, "run", boom)
    monkeypatch.setenv("EESERVE_DEBUG", "1")
    with pytest.raises(TypeError):
        cli.main(["bench", "http://127.0.0.1:9"])


def test_a_bad_duration_is_an_expected_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "http://127.0.0.1:9", "-d", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("eeserve: error: --duration"), err
