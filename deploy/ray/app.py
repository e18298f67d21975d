"""eeserve as a Ray Serve application: `serve run deploy/ray/serve_config.yaml`.

The FastAPI app is `service.app.create_app`, unchanged; Ray builds it inside each replica
(`serve.ingress` with a builder function), so the engine, its batching and its lifespan run per
replica. Configuration comes from `EESERVE_*` variables (serve_config.yaml `runtime_env`).
Batching stays in eeserve's engine (one batcher, not two): no `@serve.batch` here, and
`max_ongoing_requests` is well above the engine's batch size so Ray does not starve it.
"""

from __future__ import annotations

from fastapi import FastAPI
from ray import serve

from deploy.ray.metrics import RayStatLogger


def build_app() -> FastAPI:
    """Runs inside each replica: the eeserve app with metrics exported through Ray."""
    from service.app import create_app
    from service.settings import Settings

    return create_app(Settings(), sink=RayStatLogger())


@serve.deployment(name="eeserve", max_ongoing_requests=64, ray_actor_options={"num_cpus": 1},
                  graceful_shutdown_timeout_s=20)
@serve.ingress(build_app)
class EeserveDeployment:
    """Hosts the eeserve FastAPI app in one replica; all logic lives in service.app."""


app = EeserveDeployment.bind()
