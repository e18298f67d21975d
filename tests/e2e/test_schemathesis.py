"""Property-based fuzzing of every documented route of a live server: never a 5xx.

The real schemathesis CLI generates valid and invalid requests from /openapi.json against the
live uvicorn; every answer must be a non-5xx that the OpenAPI document declares (the one 5xx
allowed is the documented 504 for a request whose own `deadline_ms` passed; tests/e2e/st_hooks).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.server import Server

ROOT = Path(__file__).parents[2]
CHECKS = "no_unexpected_server_error,status_code_conformance,content_type_conformance," \
         "response_schema_conformance"


def test_schemathesis_finds_no_server_errors(server: Server, tmp_path: Path) -> None:
    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("schemathesis is not installed")
    res = subprocess.run(
        [exe, "run", f"{server.url}/openapi.json", "--checks", CHECKS, "--max-examples", "30",
         "--seed", "1", "--request-timeout", "30", "--phases", "examples,coverage,fuzzing"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "SCHEMATHESIS_HOOKS": "tests.e2e.st_hooks"})
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-6000:]
    assert "no_unexpected_server_error" not in out.split("SUMMARY")[-1] or "Failures" not in out
