"""Screenshots of the playground page in headless Chromium against a live `eeserve serve`.

    # the page after classifying a few sentences (any text artifact; docs/ used text-default):
    .venv/bin/python scripts/playground_screenshot.py --model artifacts/text-default \
        --out docs/figures/playground.png
    # the page during a first start (default models missing; stopped once training shows):
    .venv/bin/python scripts/playground_screenshot.py --building \
        --out docs/figures/playground-building.png

`--building` serves with the default model directories pointed at an empty temporary folder,
so the real text-default build starts in the background; the shot is taken once its training
steps show, then the server is stopped (which ends the build). Needs Debian `chromium` and the
`playwright` package (no browser download).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.browser import browser_page  # noqa: E402
from tests.e2e.server import free_port  # noqa: E402

SENTENCES = ["a gorgeous, witty, seductive movie.",
             "the plot is nothing but boilerplate",
             "it's a film, with actors in it.",
             "not as bad as i feared, but not good either"]


def serve(models: list[str], env: dict[str, str], log: Path) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    cmd = [sys.executable, "-m", "service", "serve", *models, "--port", str(port),
           "--device", "cpu", "--plain-logs"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **env},
                            stdout=log.open("w"), stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("server did not answer")


def until(check: object, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():  # type: ignore[operator]
            return
        time.sleep(1.0)
    raise SystemExit(f"timed out waiting for {what}")


def shoot_results(url: str, out: Path, policy: str | None) -> None:
    with browser_page(url, height=700) as (page, offline):
        page.goto(url + "/")
        page.wait_for_selector("#status.ready", timeout=120_000)
        page.wait_for_function("document.querySelectorAll('#policy option').length > 1")
        if policy:
            page.select_option("#policy", policy)
        page.fill("#texts", "\n".join(SENTENCES))
        page.click("#run")
        page.wait_for_selector(".result .strip", timeout=60_000)
        page.screenshot(path=str(out), full_page=True)
    assert not offline.external, offline.external


def shoot_building(url: str, out: Path) -> None:
    def training() -> bool:
        body = httpx.get(url + "/readyz", timeout=5).json()
        return any("step" in (m.get("progress") or "") for m in body["models"])

    until(training, 1200, "the training steps of the build")
    with browser_page(url, height=420) as (page, offline):
        page.goto(url + "/")
        page.wait_for_selector("#status .bar i", timeout=30_000)
        page.wait_for_timeout(2500)  # one more poll, so the bar shows a pace-based estimate
        page.screenshot(path=str(out), full_page=True)
    assert not offline.external, offline.external


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="artifact directory to serve")
    p.add_argument("--building", action="store_true", help="shoot a first start instead")
    p.add_argument("--policy", help="policy to select (default: the model's own)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    if not args.building and not args.model:
        p.error("give --model DIR or --building")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        env = {"EESERVE_DEFAULT_MODEL_DIR": f"{tmp}/text-default",
               "EESERVE_CAPTION_MODEL_DIR": f"{tmp}/caption-default"} if args.building else {}
        proc, url = serve([] if args.building else [args.model], env, Path(tmp) / "server.log")
        try:
            if args.building:
                shoot_building(url, args.out)
            else:
                shoot_results(url, args.out, args.policy)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
