"""Screenshots of the playground page in headless Chromium against a live `eeserve serve`.

    # the page after classifying a few sentences (any text artifact; docs/ used text-default):
    python -m bench.reliability.screenshots --model artifacts/text-default \\
        --out docs/figures/playground.png
    # the page during a first start (default models missing; stopped once training shows):
    python -m bench.reliability.screenshots --building --out docs/figures/playground-building.png

`--building` serves with the default model directories pointed at an empty temporary folder,
so the real text-default build starts in the background; the shot is taken once its training
steps show, then the server is stopped (which ends the build). Needs Debian `chromium` and the
`playwright` package (no browser download). Every request the page makes outside the server
under test is refused and fails the shot.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import serve, wait_ready
from bench.reliability._common import first_start_env, progress_lines

DESCRIPTION = __doc__.splitlines()[0] if __doc__ else ""
SENTENCES = ["a gorgeous, witty, seductive movie.",
             "the plot is nothing but boilerplate",
             "it's a film, with actors in it.",
             "not as bad as i feared, but not good either"]


def chromium_path() -> str | None:
    """The system Chromium (`EESERVE_CHROMIUM` overrides), or None when none is installed."""
    given = os.environ.get("EESERVE_CHROMIUM")
    if given:
        return given if os.access(given, os.X_OK) else None
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class Offline:
    """Requests outside `allowed` that the page tried (each was aborted)."""

    allowed: str
    external: list[str] = field(default_factory=list)

    def route(self, route: Any) -> None:
        url = route.request.url
        if url.startswith(self.allowed) or url.startswith("data:"):
            route.continue_()
        else:
            self.external.append(url)
            route.abort()


@contextmanager
def browser_page(base_url: str, width: int = 1000,
                 height: int = 760) -> Iterator[tuple[Any, Offline]]:
    """A fresh page whose requests may only go to `base_url`."""
    from playwright.sync_api import sync_playwright

    exe = chromium_path()
    if exe is None:
        raise SystemExit("screenshots: error: no Chromium found (install Debian `chromium` "
                         "or set EESERVE_CHROMIUM)")
    offline = Offline(base_url)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox",
                                                               "--disable-dev-shm-usage"])
        try:
            context = browser.new_context(viewport={"width": width, "height": height},
                                          device_scale_factor=1)
            context.route("**/*", offline.route)
            yield context.new_page(), offline
        finally:
            browser.close()


def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
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
    if offline.external:
        raise SystemExit(f"the page reached outside the server: {offline.external}")


def shoot_building(url: str, out: Path) -> None:
    def training() -> bool:
        return any("step" in line for line in progress_lines(url, timeout=5)[1])

    until(training, 1200, "the training steps of the build")
    with browser_page(url, height=420) as (page, offline):
        page.goto(url + "/")
        page.wait_for_selector("#status .bar i", timeout=30_000)
        page.wait_for_timeout(2500)  # one more poll, so the bar shows a pace-based estimate
        page.screenshot(path=str(out), full_page=True)
    if offline.external:
        raise SystemExit(f"the page reached outside the server: {offline.external}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.reliability.screenshots",
                                description=DESCRIPTION)
    p.add_argument("--model", help="artifact directory to serve")
    p.add_argument("--building", action="store_true", help="shoot a first start instead")
    p.add_argument("--policy", help="policy to select (default: the model's own)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if not args.building and not args.model:
        p.error("give --model DIR or --building")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        env = first_start_env(tmp) if args.building else {}
        server = wait_ready(serve([] if args.building else [args.model],
                                  Path(tmp) / "server.log", env=env, wait=False),
                            "/healthz", timeout=600)  # answering; /readyz is 503 while building
        try:
            if args.building:
                shoot_building(server.url, args.out)
            else:
                shoot_results(server.url, args.out, args.policy)
        finally:
            server.stop(timeout=60)  # SIGTERM also ends a first start's build
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
