"""Headless Chromium for the page tests: the system browser (Debian `chromium`) driven by
Playwright, with every request that leaves the server under test recorded and refused."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


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
def browser_page(base_url: str, width: int = 1000, height: int = 760) -> Iterator[tuple[Any,
                                                                                        Offline]]:
    """A fresh page whose requests may only go to `base_url`."""
    from playwright.sync_api import sync_playwright

    exe = chromium_path()
    assert exe is not None
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
