"""`eeserve serve` refuses bad flags and missing artifacts with one line, exit status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[3]


@pytest.mark.parametrize(("args", "words"), [
    (["/no/such/dir"], "no such artifact directory"),
    (["--port", "99999", "/tmp"], "--port"),
    (["--max-batch-size", "0", "/tmp"], "--max-batch-size"),
    (["--device", "tpu", "/tmp"], "--device"),
])
def test_bad_serve_arguments_end_with_one_line(args: list[str], words: str) -> None:
    res = subprocess.run([sys.executable, "-m", "service", "serve", *args], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("eeserve: error:") and words in lines[0]
    assert "Traceback" not in res.stderr
