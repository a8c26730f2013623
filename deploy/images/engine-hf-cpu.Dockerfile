# hfmesh transformers engine on CPU torch: every task of a Hugging Face model over OIP v2 gRPC.
# Build from the repository root (docs/deploy.md has the offline variant):
#   docker build -f deploy/images/engine-hf-cpu.Dockerfile -t hfmesh/engine-hf-cpu .
# Build arguments: BASE_IMAGE (a Python 3.11 image), PIP_INDEX_URL, PIP_EXTRA_INDEX_URL,
# PIP_FIND_LINKS and PIP_CA_BUNDLE (a CA file for pip, e.g. behind a TLS-inspecting proxy).
# Run: docker run -v hfmesh-models:/models:ro -p 8081:8081 IMAGE --model_dir /models/M --model_name M
# CPU torch comes from PyTorch's CPU index (the default PIP_EXTRA_INDEX_URL) or PIP_FIND_LINKS.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG PIP_INDEX_URL=https://pypi.org/simple
ARG PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
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

# Dependencies first (this layer is rebuilt only when pyproject.toml changes): install the extra
# against an empty package, then drop the package itself; the source is copied afterwards.
# xgrammar pulls in triton on x86-64 Linux; its CPU path does not use it, so it goes too.
WORKDIR /app
COPY pyproject.toml README.md ./
RUN mkdir services && touch services/__init__.py \
 && pip install ${PIP_CA_BUNDLE:+--cert "$PIP_CA_BUNDLE"} ".[engine-hf]" \
 && pip uninstall -y hfmesh triton \
 && rm -rf services build hfmesh.egg-info
COPY services ./services

USER hfmesh
# gRPC (OIP v2) and Prometheus /metrics (with --metrics_port 9090).
EXPOSE 8081 9090
HEALTHCHECK --interval=10s --timeout=5s --start-period=600s --retries=3 \
  CMD ["python", "-m", "services.common.healthcheck", "grpc", "8081"]
ENTRYPOINT ["python", "-m", "services.engine_hf"]
CMD ["--host", "0.0.0.0", "--port", "8081", "--metrics_port", "9090"]
