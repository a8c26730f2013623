# hfmesh vLLM engine, CUDA build (the `vllm` package). Build from the repository root:
#   docker build -f deploy/images/engine-vllm.Dockerfile -t hfmesh/engine-vllm .
# Run (GPU): docker run --gpus all -v /models:/models -p 8081:8081 -p 9090:9090 hfmesh/engine-vllm \
#   --model_dir /models/m --model_name m --metrics_port 9090 [any vLLM engine argument]
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    SAFETENSORS_FAST_GPU=1

# A C compiler for the kernels vLLM's dependencies build at run time (Triton, inductor).
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc g++ libnuma1 \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY services ./services
RUN pip install ".[engine-vllm]"

RUN useradd --create-home --uid 1000 hfmesh
USER hfmesh

# gRPC (OIP v2) and Prometheus /metrics (with --metrics_port 9090).
EXPOSE 8081 9090
ENTRYPOINT ["python", "-m", "services.engine_vllm", "--host", "0.0.0.0", "--port", "8081"]
