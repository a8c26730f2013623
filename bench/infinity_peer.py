"""Infinity (`infinity-emb`), the embedding server KubeAI runs, as a peer of the mesh's benches.

`bench/mesh_tasks.py --peer infinity` serves the same all-MiniLM-L6-v2 folder with it and
measures it beside the mesh. Infinity pins its own dependency ranges (numpy < 2,
sentence-transformers < 4, uvicorn 0.32, typer 0.12, click < 8.2) that clash with the project's,
so it lives in a virtual environment of its own, created on first use under
`~/.cache/hfmesh/bench/infinity` (`$HFMESH_BENCH_CACHE` moves the parent folder) and reused
after; the project's `.venv` is never touched. The install is `infinity-emb[server,torch]`,
exactly the extras its docs name, under `CONSTRAINTS`: the set this bench was measured with.

Infinity runs as a real process on a free loopback port, with `HF_HUB_OFFLINE=1` (it loads
the local folder; nothing is fetched) and its usage statistics off, its torch engine on the CPU
with batch size 32 (its dynamic batching: requests queued while a batch runs form the next),
and is stopped with its whole process group like every other service a bench starts.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from services.launcher.processes import ServiceProcess, free_port, wait_ready

#: Tested together on Python 3.11 (CPU, 2 cores). Why each is pinned:
CONSTRAINTS = {
    "infinity-emb": "0.0.78",  # the release measured; its CLI flags below are 0.0.7x's
    # torch: the CPU build (the default PyPI wheel for Linux pulls CUDA, gigabytes of it). pip
    # finds it in a wheel folder (PIP_FIND_LINKS) or the CPU index (PIP_EXTRA_INDEX_URL=
    # https://download.pytorch.org/whl/cpu); the same version as the project's engines.
    "torch": "2.13.0+cpu",
    # Infinity's torch engine subclasses SentenceTransformer 3.x (it allows < 4).
    "sentence-transformers": "3.4.1",
    # Left open by Infinity's torch extra; the newest that sentence-transformers 3.4 takes (< 5),
    # with the tokenizers and huggingface_hub (< 1.0) it was released against.
    "transformers": "4.57.6",
    "tokenizers": "0.22.2",
    "huggingface-hub": "0.36.2",
    "numpy": "1.26.4",  # Infinity requires < 2
    # The server extra's ranges are open above (fastapi >= 0.103, pydantic < 3): the ones run.
    "fastapi": "0.165.0",
    "starlette": "1.10.0",
    "pydantic": "2.14.4",
    "uvicorn": "0.32.1",  # Infinity requires 0.32.x
}
BATCH_SIZE = 32
SERVED_NAME = "embed"  # the mesh's name for the model, so both get the same request body


def venv_dir() -> Path:
    base = os.environ.get("HFMESH_BENCH_CACHE") or Path.home() / ".cache/hfmesh/bench"
    return Path(base) / "infinity"


def _pins() -> str:
    return "".join(f"{name}=={version}\n" for name, version in sorted(CONSTRAINTS.items()))


def ensure_installed() -> Path:
    """Infinity's virtual environment, created and installed on first use (minutes: torch and
    transformers are large), again only when `CONSTRAINTS` change; its `infinity_emb` CLI."""
    venv = venv_dir()
    python = venv / "bin" / "python"
    marker = venv / "installed-constraints.txt"
    cli = venv / "bin" / "infinity_emb"
    if marker.is_file() and marker.read_text() == _pins() and cli.is_file():
        return cli
    venv.parent.mkdir(parents=True, exist_ok=True)
    if not python.is_file():
        # sys.executable may be a venv's interpreter: a venv is made from its base Python
        base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
        subprocess.run([str(base), "-m", "venv", str(venv)], check=True)
    constraints = venv / "constraints.txt"
    constraints.write_text(_pins())
    log = venv / "install.log"
    print(f"installing infinity-emb {CONSTRAINTS['infinity-emb']} into {venv} (log: {log})")
    command = [
        str(python),
        "-m",
        "pip",
        "install",
        "--constraint",
        str(constraints),
        f"torch=={CONSTRAINTS['torch']}",
        "infinity-emb[server,torch]",
    ]
    with open(log, "wb") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"installing Infinity failed ({done.returncode}):\n{tail}")
    marker.write_text(_pins())
    return cli


def start_infinity(
    cli: Path, model_folder: Path, log_dir: Path, env: dict[str, str] | None = None
) -> ServiceProcess:
    """`infinity_emb v2` on `model_folder` on a free loopback port, ready (its `/health`
    answers once the model is loaded and warmed up); `env` adds to its environment."""
    port = free_port()
    command = [
        str(cli),
        "v2",
        "--model-id",
        str(model_folder),
        "--served-model-name",
        SERVED_NAME,
        "--batch-size",
        str(BATCH_SIZE),
        "--engine",
        "torch",
        "--device",
        "cpu",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    full_env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "DO_NOT_TRACK": "1",
        "INFINITY_ANONYMOUS_USAGE_STATS": "0",
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / "infinity.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    service = ServiceProcess("infinity", command, port, process, log)
    try:
        wait_ready(service, "http", timeout=600, path="/health")
    except BaseException:
        service.stop()
        raise
    return service
