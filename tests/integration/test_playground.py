"""The playground page and the offline API docs, served from the package (no CDN)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from fastapi.testclient import TestClient
from pydantic import SecretStr

from service.app import create_app
from service.settings import Settings
from tests.integration.fake_engine import FakeEngine

ROOT = Path(__file__).parents[2]
EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", re.I)


def _client(**settings: object) -> TestClient:
    s = Settings(log_json=False, **settings)  # type: ignore[arg-type]
    return TestClient(create_app(s, engine=FakeEngine()), raise_server_exceptions=False)


def test_the_page_and_its_files_are_served_without_external_references() -> None:
    with _client() as c:
        page = c.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert 'id="texts"' in page.text and 'id="policy"' in page.text
        assert not EXTERNAL.search(page.text)
        for asset in re.findall(r'(?:src|href)="(static/[^"]+)"', page.text):
            r = c.get("/" + asset)
            assert r.status_code == 200 and r.content, asset
        js = c.get("/static/playground.js").text
        assert "return_trace: true" in js and "v1/classify" in js and "readyz" in js
        assert "http://" not in js and "https://" not in js


def test_docs_load_swagger_ui_from_the_package() -> None:
    with _client() as c:
        for path in ("/docs", "/redoc"):
            html = c.get(path).text
            assert not EXTERNAL.search(html), html
            assets = re.findall(r"""['"](/static-offline-docs/[^'"]+)['"]""", html)
            assert assets, html
            for a in assets:
                r = c.get(a)
                assert r.status_code == 200 and len(r.content) > 1000, a
        assert c.get("/openapi.json").status_code == 200


def test_page_and_docs_stay_open_when_an_api_key_is_required() -> None:
    with _client(api_key=SecretStr("k")) as c:
        assert c.get("/").status_code == 200
        assert c.get("/static/playground.css").status_code == 200
        assert c.get("/static-offline-docs/swagger-ui.css").status_code == 200
        assert c.get("/v1/models").status_code == 401
        assert c.get("/static/../v1/models").status_code in (401, 404)


def test_page_module_imports_no_torch() -> None:
    code = "import sys, service.ui, service.progressive, service.building; " \
           "assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)
