"""Child of `python -m bench.overload --refusal-cost`: CPU per refused and per answered request.

Run as `python -P bench/_refusal_child.py --requests N` with PYTHONPATH set to the checkout under
test, so `service` and the engine test double come from that checkout (its own protocol); this
file imports nothing from `bench`, which an older checkout does not have. The ASGI app is called
in-process, no sockets (uvicorn's own per-request cost is not in it), on
tests/integration/fake_engine.py's FakeEngine (a torch-free test double of the engine protocol,
deterministic answers) and on the same double reporting a full queue (every request refused).
Prints one JSON line: refused_us, refused_status, answered_us, answered_status (/v1/classify),
answered_v2_us, answered_v2_status (/v2 infer), service.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import logging.config
import os
import statistics
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import service
from service.app import create_app
from service.logging_setup import logging_config
from service.protocol import EngineStatus
from service.settings import Settings
from tests.integration.fake_engine import FakeEngine


class FullQueue(FakeEngine):
    """The test double with a queue that is always full: the app refuses every request."""

    def status(self) -> EngineStatus:
        return EngineStatus(queue_depth=10**6, active_rows=16, loaded_models=1)


V1 = ("/v1/classify", {"inputs": "a fine film", "policy": "beem"})
V2 = ("/v2/models/fake/infer", {"inputs": [{"name": "TEXT", "shape": [1], "datatype": "BYTES",
                                            "data": ["a fine film"]}],
                                "parameters": {"policy": "beem"}})


async def per_request_us(engine: FakeEngine, n: int,
                         route: tuple[str, dict[str, Any]] = V1) -> tuple[float, int]:
    """Median over 5 blocks of process CPU microseconds per request, and the last status."""
    app = create_app(Settings(log_json=True, shed_hold_ms=0), engine=engine)  # CPU, not the hold
    path, payload = route
    body = json.dumps(payload).encode()
    scope: dict[str, Any] = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(),
        "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2), "headers": [
            (b"host", b"x"), (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode())]}
    statuses: list[int] = []

    async def one() -> None:
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.sleep(3600)  # no disconnect while the answer is computed
            return {"type": "http.disconnect"}

        async def send(m: MutableMapping[str, Any]) -> None:
            if m["type"] == "http.response.start":
                statuses.append(m["status"])

        await app(dict(scope), receive, send)

    blocks = []
    async with app.router.lifespan_context(app):
        for _ in range(200):
            await one()
        for _ in range(5):
            t0 = time.process_time()
            for _ in range(n // 5):
                await one()
            blocks.append((time.process_time() - t0) / (n // 5) * 1e6)
    return statistics.median(blocks), statuses[-1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=3000)
    args = ap.parse_args()
    cfg = logging_config(True, "info")  # the server's JSON logging, written to /dev/null
    with open(os.devnull, "w") as null:
        for h in cfg.get("handlers", {}).values():
            if "stream" in h:
                h["stream"] = null
        logging.config.dictConfig(cfg)
        refused = asyncio.run(per_request_us(FullQueue(), args.requests))
        answered = asyncio.run(per_request_us(FakeEngine(), args.requests))
        oip = asyncio.run(per_request_us(FakeEngine(), args.requests, V2))
    print(json.dumps({"refused_us": round(refused[0], 1), "refused_status": refused[1],
                      "answered_us": round(answered[0], 1), "answered_status": answered[1],
                      "answered_v2_us": round(oip[0], 1), "answered_v2_status": oip[1],
                      "service": str(Path(service.__file__).parent)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
