"""deploy/images/*.Dockerfile: one per service, built alike (build args, non-root, layer order),
started with the entry point and probed with the health check of that service."""

from __future__ import annotations

import pytest

from services.launcher.topology import ENGINE_IMAGES
from tests.deploy.conftest import IMAGES, dockerfile

#: image → (module it runs, port, probe kind, the pyproject extra it installs)
SERVICES = {
    "gateway": ("services.gateway", 8080, "http", "gateway"),
    "tokenizer": ("services.tokenizer", 50051, "grpc", "tokenizer"),
    "control-plane": ("services.control_plane", 18000, "grpc", "control-plane"),
    "engine-hf-cpu": ("services.engine_hf", 8081, "grpc", "engine-hf"),
    "engine-hf-cuda": ("services.engine_hf", 8081, "grpc", "engine-hf"),
    "engine-vllm-cpu": ("services.engine_vllm", 8081, "grpc", "engine-vllm-cpu"),
    "engine-vllm-cuda": ("services.engine_vllm", 8081, "grpc", "engine-vllm"),
}


def test_one_dockerfile_per_service_and_the_models_job():
    names = {path.name.removesuffix(".Dockerfile") for path in IMAGES.glob("*.Dockerfile")}
    assert names == {*SERVICES, "models"}
    assert set(ENGINE_IMAGES.values()) <= names


@pytest.mark.parametrize("image", sorted(SERVICES))
def test_service_image(image):
    module, port, probe, extra = SERVICES[image]
    found = dockerfile(image)
    assert found["ARG"][0] == "BASE_IMAGE=python:3.11-slim"
    assert found["FROM"] == ["${BASE_IMAGE}"]
    for arg in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_CA_BUNDLE"):
        assert any(a.split("=")[0] == arg for a in found["ARG"]), arg
    for variable in ("HF_HUB_DISABLE_TELEMETRY=1", "HF_HUB_OFFLINE=1", "SAFETENSORS_FAST_GPU=1"):
        assert variable in found["ENV"]
    assert found["USER"] == "hfmesh"
    # dependencies (pyproject only) are installed before the source is copied
    assert found["COPY"] == ["pyproject.toml README.md ./", "services ./services"]
    install = next(run for run in found["RUN"] if "pip install" in run)
    assert f'".[{extra}]"' in install
    assert found["ENTRYPOINT"] == ["python", "-m", module]
    assert found["CMD"][found["CMD"].index("--port") + 1] == str(port)
    assert f"EXPOSE {port}" in f"EXPOSE {found['EXPOSE']}"
    options, command = found["HEALTHCHECK"]
    assert command == ["python", "-m", "services.common.healthcheck", probe, str(port)]
    assert any(option.startswith("--start-period=") for option in options)


@pytest.mark.parametrize("image", ["gateway", "tokenizer"])
def test_torch_free_images_install_no_torch(image):
    install = next(run for run in dockerfile(image)["RUN"] if "pip install" in run)
    assert "torch" not in install and "engine" not in install


def test_vllm_cpu_image_removes_the_cuda_torch_packages():
    install = next(run for run in dockerfile("engine-vllm-cpu")["RUN"] if "pip install" in run)
    assert "pip uninstall -y hfmesh torchvision torchaudio torchcodec" in install


def test_models_image_builds_into_the_volume():
    found = dockerfile("models")
    assert found["FROM"] == ["${ENGINE_IMAGE}"]
    assert found["ENTRYPOINT"] == ["python", "-m", "services.models"]
    assert found["VOLUME"] == "/models" and "HFMESH_CACHE_DIR=/models" in found["ENV"]
    assert found["USER"] == "hfmesh"
