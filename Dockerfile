# syntax=docker/dockerfile:1
# retserve with the shipped model inside: `retserve serve` on 0.0.0.0:8000, settings by
# RETSERVE_* environment variables (or flags after the image name).
#
#   docker build -t retserve .                                   # CPU torch (the default)
#   docker build -t retserve:cuda \
#       --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04 \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#   docker run -p 8000:8000 -e RETSERVE_STORE_URL=redis://redis:6379/0 retserve
#
# CUDA wheels of torch carry their CUDA libraries, so a CUDA "base" image (driver settings,
# no toolkit) is enough; the host needs the NVIDIA container toolkit (`--gpus all`).

ARG BASE_IMAGE=python:3.11-slim-bookworm

# ---- base: one Python for both stages, so the virtualenv built below runs unchanged ----------
FROM ${BASE_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
SHELL ["/bin/sh", "-eu", "-c"]
# python:*-slim has Python; the Ubuntu-based CUDA images do not (their own 3.12 is taken).
# Versions are the distribution's: the base image's tag pins them.
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null 2>&1; then \
        apt-get update; \
        apt-get install -y --no-install-recommends python3 python3-venv; \
        rm -rf /var/lib/apt/lists/*; \
    fi

# ---- build: torch first (CPU or CUDA wheel, by build argument), then retserve ----------------
FROM base AS build
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# a layer of its own: the largest, and it changes least often (pinned by TORCH_SPEC)
# hadolint ignore=DL3013
RUN pip install --index-url "${TORCH_INDEX_URL}" "${TORCH_SPEC}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY engine ./engine
COPY state_store ./state_store
COPY server ./server
COPY bench ./bench
COPY training ./training
# torch is already there, so `torch>=2.4` is satisfied and the chosen build stays; retserve
# comes from the source tree, its dependency ranges from pyproject.toml
RUN pip install . && pip check

# ---- runtime: the virtualenv, the model, a non-root user -------------------------------------
FROM base AS runtime
# retserve's CPU kernels are compiled for the CPU the container runs on, at its first start
# (~0.5 s, kept in ~/.cache): a C compiler; without one the engine runs oneDNN's, slower
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 retserve \
    && useradd --system --uid 10001 --gid retserve --create-home --home-dir /home/retserve \
        retserve \
    && mkdir -p /data \
    && chown retserve:retserve /data
COPY --from=build /opt/venv /opt/venv
COPY models/retnet-tiny-chat /opt/retserve/models/retnet-tiny-chat
COPY deploy/docker/healthcheck.py /opt/retserve/healthcheck.py
# The embedded store (sqlite) lives in /data when no RETSERVE_STORE_URL is given: mount a volume
# there to keep it, or point the store at Redis to share states between replicas.
ENV PATH=/opt/venv/bin:$PATH \
    RETSERVE_HOST=0.0.0.0 \
    RETSERVE_PORT=8000 \
    RETSERVE_MODEL=/opt/retserve/models/retnet-tiny-chat \
    RETSERVE_DATA_DIR=/data \
    RETSERVE_LOG_FORMAT=json
USER 10001:10001
WORKDIR /home/retserve
EXPOSE 8000
# /health is 200 once the model is loaded; loading takes seconds on CPU, longer on a cold GPU
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "/opt/retserve/healthcheck.py"]
# exec form: retserve is PID 1 and gets SIGTERM itself (it drains in-flight requests first)
ENTRYPOINT ["retserve", "serve"]
