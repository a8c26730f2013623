# hfmesh vLLM engine on CUDA (the `vllm` package, which pins its CUDA torch).
# Build from the repository root (docs/deploy.md has the offline variant):
#   docker build -f deploy/images/engine-vllm-cuda.Dockerfile -t hfmesh/engine-vllm-cuda .
# Build arguments: BASE_IMAGE (a Python 3.11 image), PIP_INDEX_URL, PIP_EXTRA_INDEX_URL,
# PIP_FIND_LINKS and PIP_CA_BUNDLE (a CA file for pip, e.g. behind a TLS-inspecting proxy).
# Run: docker run --gpus all -v hfmesh-models:/models:ro -p 8081:8081 --shm-size 2g IMAGE \
#   --model_dir /models/M --model_name M [any vLLM engine argument]
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

# A C compiler and Python.h for the kernels vLLM's dependencies build at run time (Triton,
# inductor); the slim image has the headers, a Debian base gets libpython3-dev.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc g++ libc6-dev libnuma1 \
 && include=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])') \
 && if [ ! -e "$include/Python.h" ]; then \
      apt-get install -y --no-install-recommends libpython3-dev; fi \
 && rm -rf /var/lib/apt/lists/*

# A virtual environment works on the slim image and on a Debian one (whose system Python refuses
# pip installs); the service runs as an unprivileged user.
RUN python3 -m venv /opt/venv \
 && useradd --create-home --uid 1000 hfmesh

# Dependencies first (this layer is rebuilt only when pyproject.toml changes): install the extra
# against an empty package, then drop the package itself; the source is copied afterwards.
WORKDIR /app
COPY pyproject.toml README.md ./
RUN mkdir services && touch services/__init__.py \
 && pip install ${PIP_CA_BUNDLE:+--cert "$PIP_CA_BUNDLE"} ".[engine-vllm]" \
 && pip uninstall -y hfmesh \
 && rm -rf services build hfmesh.egg-info
COPY services ./services

USER hfmesh
# gRPC (OIP v2) and Prometheus /metrics (with --metrics_port 9090).
EXPOSE 8081 9090
HEALTHCHECK --interval=10s --timeout=5s --start-period=600s --retries=3 \
  CMD ["python", "-m", "services.common.healthcheck", "grpc", "8081"]
ENTRYPOINT ["python", "-m", "services.engine_vllm"]
CMD ["--host", "0.0.0.0", "--port", "8081", "--metrics_port", "9090"]
