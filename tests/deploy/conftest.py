"""Fixtures of the deployment checks: the checked-in compose file, Kubernetes base and images.

`tests/deploy/test_*.py` run in `make test` without containers; `test_stack.py` is the
`make test-deploy` tier and runs only against a stack `scripts/test_deploy.sh` brought up.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "deploy" / "compose" / "compose.yaml"
IMAGES = ROOT / "deploy" / "images"


@pytest.fixture(scope="session")
def compose_doc() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="session")
def mesh_doc() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "deploy" / "compose" / "mesh.yaml").read_text())


def dockerfile(image: str) -> dict[str, Any]:
    """The instructions of `deploy/images/<image>.Dockerfile` that the checks read."""
    text = (IMAGES / f"{image}.Dockerfile").read_text().replace("\\\n", " ")
    found: dict[str, Any] = {"ARG": [], "ENV": "", "COPY": [], "RUN": [], "FROM": []}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        keyword, _, rest = line.strip().partition(" ")
        if keyword in ("ENTRYPOINT", "CMD"):
            found[keyword] = json.loads(rest)
        elif keyword == "HEALTHCHECK":
            options, _, command = rest.partition("CMD ")
            found[keyword] = (shlex.split(options), json.loads(command) if command else None)
        elif keyword in ("ARG", "COPY", "RUN", "FROM"):
            found[keyword].append(rest)
        elif keyword == "ENV":
            found["ENV"] += " " + rest
        else:
            found[keyword] = rest
    return found
