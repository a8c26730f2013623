#!/usr/bin/env bash
# The third-party clients the test suite drives from environments of their own, because their
# pins conflict with the project's (kserve 0.21 wants older kubernetes, psutil and
# python-dateutil): tests/integration/test_kserve_clients.py runs the `kserve` SDK from here.
# Safe to run again: it only installs what is missing.
set -euo pipefail
PYTHON=${PYTHON:-python3}
KSERVE_SDK_VENV=${KSERVE_SDK_VENV:-$HOME/.cache/hfmesh/venvs/kserve-sdk}
KSERVE_SDK_VERSION=0.21.0

if ! "$KSERVE_SDK_VENV/bin/python" -c "import kserve" 2>/dev/null; then
  echo "==> installing the kserve SDK $KSERVE_SDK_VERSION into $KSERVE_SDK_VENV"
  "$PYTHON" -m venv "$KSERVE_SDK_VENV"
  "$KSERVE_SDK_VENV/bin/python" -m pip install -q --upgrade pip
  "$KSERVE_SDK_VENV/bin/python" -m pip install -q "kserve==$KSERVE_SDK_VERSION"
fi
