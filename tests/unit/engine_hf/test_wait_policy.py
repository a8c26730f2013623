"""The HF engine's OpenMP wait policy reaches OpenMP: it is set from the settings before torch
loads (OpenMP reads it once, when torch loads it), so the entry point must not import torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from services.engine_hf.settings import HFEngineSettings

PROBE = """
import os, sys
import services.engine_hf.__main__ as entry
assert "torch" not in sys.modules, "the entry point imported torch before reading its settings"
entry.set_wait_policy(entry.HFEngineSettings(model_dir="/nowhere", omp_wait_policy=sys.argv[1]))
import torch  # noqa: F401
print(os.environ.get("OMP_WAIT_POLICY", "unset"))
"""


def _policy(policy: str, env: dict[str, str] | None = None) -> str:
    import os

    full = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | (env or {})
    out = subprocess.run(
        [sys.executable, "-c", PROBE, policy],
        capture_output=True,
        text=True,
        env=full,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_the_entry_point_reads_settings_before_torch_loads():
    assert HFEngineSettings(model_dir="/nowhere").omp_wait_policy == "default"
    assert _policy("default") == "unset"  # OpenMP's own bounded spinning
    assert _policy("passive") == "PASSIVE"
    assert _policy("active") == "ACTIVE"
    assert _policy("passive", {"OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"  # the environment wins


def test_unknown_policies_are_refused():
    with pytest.raises(ValueError, match="omp_wait_policy"):
        HFEngineSettings(model_dir="/nowhere", omp_wait_policy="sometimes")
