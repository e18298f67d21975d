"""The playground page: `GET /` and its files under `/static/` (shipped with the package).

Plain HTML, CSS and JavaScript with no external requests: it reads /readyz and /v1/models
(build progress while models are built, then each model's policies) and calls /v1/classify with
`return_trace: true` to draw, per sentence, the label, the exit layer and a per-layer confidence
strip. Torch-free.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"


def install(app: FastAPI) -> None:
    """Mount the page at `/` and its files at `/static/`."""
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def playground() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")
