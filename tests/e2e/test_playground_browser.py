"""The playground page and /docs in a real headless Chromium against a live server.

Skipped when no Chromium or Playwright is installed (`.ci/tools.sh` installs Debian's
`chromium`; Playwright comes with the dev extra and drives it, downloading no browser)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.browser import browser_page, chromium_path
from tests.e2e.server import Server

pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
pytestmark = pytest.mark.skipif(chromium_path() is None,
                                reason="no Chromium installed (.ci/tools.sh installs it)")


def test_typing_sentences_shows_label_exit_layer_and_confidence_strip(server: Server,
                                                                      tmp_path: Path) -> None:
    with browser_page(server.url) as (page, offline):
        page.goto(server.url + "/")
        page.wait_for_selector("#status.ready", timeout=30_000)
        page.wait_for_function("document.querySelectorAll('#policy option').length > 1")
        page.fill("#texts", "a great film\ndull and boring")
        page.select_option("#policy", "none")
        page.click("#run")
        page.wait_for_selector(".result .strip", timeout=30_000)
        cards = page.locator(".result")
        assert cards.count() == 2
        for i, text in enumerate(["a great film", "dull and boring"]):
            card = cards.nth(i)
            assert card.locator(".text").inner_text() == text
            assert card.locator(".label").inner_text() in ("negative", "positive")
            assert card.locator(".exit-layer").inner_text() == "exit 3 of 3"  # `none`: depth
            cells = card.locator(".strip .cell")
            assert cells.count() == 3 and card.locator(".cell.skipped").count() == 0
            assert card.locator(".cell.exit").get_attribute("data-layer") == "3"
            assert "confidence" in (cells.nth(0).get_attribute("title") or "")
        page.screenshot(path=str(tmp_path / "playground.png"), full_page=True)
        assert (tmp_path / "playground.png").stat().st_size > 10_000
    assert offline.external == []


def test_an_early_exit_greys_out_the_layers_never_computed(server: Server) -> None:
    with browser_page(server.url) as (page, offline):
        page.goto(server.url + "/")
        page.wait_for_function("document.querySelectorAll('#policy option').length > 1")
        page.select_option("#policy", "static")
        page.fill("#texts", "a great film")
        page.fill("#params", '{"layer": 1}')
        page.click("#run")
        page.wait_for_selector(".result .strip")
        card = page.locator(".result").first
        assert card.locator(".exit-layer").inner_text() == "exit 1 of 3"
        assert card.locator(".cell.skipped").count() == 2
        assert card.locator(".cell.exit").get_attribute("data-layer") == "1"
    assert offline.external == []


def test_api_docs_render_offline(server: Server) -> None:
    with browser_page(server.url) as (page, offline):
        page.goto(server.url + "/docs")
        title = page.wait_for_selector(".swagger-ui .info .title", timeout=30_000)
        assert title is not None and "eeserve" in title.inner_text()
        page.wait_for_selector('.opblock-summary-path[data-path="/v1/classify"]')
    assert offline.external == []


@pytest.fixture()
def building_server(tmp_path: Path) -> Iterator[str]:
    """A real uvicorn serving nothing yet, with the tiny-text model to build in the background."""
    import uvicorn

    from service.app import create_app
    from service.building import BuildJob
    from service.settings import Settings
    from tests.e2e.server import free_port

    job = BuildJob("tiny-text", "tiny-text", "text-classifier", tmp_path / "tiny-text",
                   estimate_s=60.0, after_s={"training": 5.0})
    app = create_app(Settings(models=[], device="cpu", log_json=False), builds=[job])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    end = time.monotonic() + 60
    while time.monotonic() < end:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    yield url
    server.should_exit = True
    thread.join(30)


def test_the_page_shows_build_progress_then_serves_the_built_model(building_server: str,
                                                                   tmp_path: Path) -> None:
    url = building_server
    with browser_page(url) as (page, offline):
        page.goto(url + "/")
        row = page.wait_for_selector("#status .build", timeout=30_000)
        assert row is not None and row.inner_text().startswith("tiny-text")
        assert page.locator("#run").is_disabled()  # nothing to classify with yet
        page.wait_for_selector("#status.ready", timeout=240_000)
        page.wait_for_function("document.querySelectorAll('#policy option').length > 1")
        page.fill("#texts", "a great film")
        page.select_option("#policy", "none")
        page.click("#run")
        page.wait_for_selector(".result .strip", timeout=30_000)
        assert page.locator(".result .exit-layer").inner_text() == "exit 3 of 3"
    assert offline.external == []
