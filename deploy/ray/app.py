"""eeserve as a Ray Serve application: `serve run deploy/ray/serve_config.yaml`.

The FastAPI app is `service.app.create_app`, unchanged; Ray builds it inside each replica
(`serve.ingress` with a builder function), so the engine, its batching and its lifespan run per
replica, with one engine process per CPU of the replica (`num_cpus` > 1; service/pool.py).
Configuration comes from `EESERVE_*` variables (serve_config.yaml `runtime_env`).
Batching stays in eeserve's engine (one batcher, not two): no `@serve.batch` here, and
`max_ongoing_requests` is well above the engine's batch size so Ray does not starve it.
"""

from __future__ import annotations

import os

from fastapi import FastAPI
from ray import serve

from deploy.ray.metrics import RayStatLogger

MAX_ONGOING = 64  # requests Ray hands one replica at once


def build_app() -> FastAPI:
    """Runs inside each replica: the eeserve app with metrics exported through Ray. The app's
    own in-flight bound follows Ray's `max_ongoing_requests` unless set explicitly, so the
    requests Ray hands a replica are not refused by the app's shedding."""
    from service.app import create_app
    from service.settings import Settings

    own: dict[str, object] = {} if "EESERVE_MAX_INFLIGHT_REQUESTS" in os.environ else \
        {"max_inflight_requests": MAX_ONGOING}
    if "EESERVE_WORKERS" not in os.environ:  # engine processes: the CPUs Ray gave the replica
        own["workers"] = replica_cpus()
    return create_app(Settings(**own), sink=RayStatLogger())


def replica_cpus() -> int:
    """The replica's `num_cpus` (engine processes per replica: 1 = the engine in-process;
    raise `num_cpus` for one engine process per CPU, as `eeserve serve --workers auto`)."""
    import ray

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    return max(1, int(cpus))


@serve.deployment(name="eeserve", max_ongoing_requests=MAX_ONGOING,
                  ray_actor_options={"num_cpus": 1}, graceful_shutdown_timeout_s=20)
@serve.ingress(build_app)
class EeserveDeployment:
    """Hosts the eeserve FastAPI app in one replica; all logic lives in service.app."""


app = EeserveDeployment.bind()
