# hfmesh gateway: OpenAI + KServe V1/V2 REST in front of the gRPC mesh. No torch.
# Build from the repository root (docs/deploy.md has the offline variant):
#   docker build -f deploy/images/gateway.Dockerfile -t hfmesh/gateway .
# Build arguments: BASE_IMAGE (a Python 3.11 image), PIP_INDEX_URL, PIP_EXTRA_INDEX_URL,
# PIP_FIND_LINKS and PIP_CA_BUNDLE (a CA file for pip, e.g. behind a TLS-inspecting proxy).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG PIP_INDEX_URL=https://pypi.org/simple
ARG PIP_EXTRA_INDEX_URL=
ARG PIP_FIND_LINKS=
ARG PIP_CA_BUNDLE=

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    HF_HUB_OFFLINE=1 \
    SAFETENSORS_FAST_GPU=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# A virtual environment works on the slim image and on a Debian one (whose system Python refuses
# pip installs); the service runs as an unprivileged user.
RUN python3 -m venv /opt/venv \
 && useradd --create-home --uid 1000 hfmesh

# xds-protos overwrites opentelemetry-proto's modules with old ones: that package goes in last.
# Dependencies first (this layer is rebuilt only when pyproject.toml changes): install the extra
# against an empty package, then drop the package itself; the source is copied afterwards.
# pip and setuptools go too: nothing is installed into this image at run time.
WORKDIR /app
COPY pyproject.toml README.md ./
RUN mkdir services && touch services/__init__.py \
 && pip install ${PIP_CA_BUNDLE:+--cert "$PIP_CA_BUNDLE"} ".[gateway]" \
 && pip install ${PIP_CA_BUNDLE:+--cert "$PIP_CA_BUNDLE"} --no-deps --force-reinstall \
      "opentelemetry-proto==1.45.*" \
 && pip uninstall -y hfmesh setuptools pip \
 && rm -rf services build hfmesh.egg-info
COPY services ./services

USER hfmesh
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-m", "services.common.healthcheck", "http", "8080"]
ENTRYPOINT ["python", "-m", "services.gateway"]
CMD ["--host", "0.0.0.0", "--port", "8080"]
