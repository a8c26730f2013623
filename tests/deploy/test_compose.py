"""deploy/compose/compose.yaml against the Compose Specification and against the services.

`compose-spec.json` is the Compose Specification's JSON schema (draft 2019-09), as shipped
in docker-compose 1.29.2 (`compose/config/compose_spec.json`, Apache-2.0), vendored so the
check needs no network.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema

from services.common.settings import parse_settings
from services.control_plane.settings import ControlPlaneSettings
from services.engine_hf.settings import HFEngineSettings
from services.engine_vllm.settings import VLLMEngineSettings, split_argv
from services.gateway.settings import GatewaySettings
from services.tokenizer.settings import TokenizerSettings
from tests.deploy.conftest import ROOT, dockerfile

SCHEMA = Path(__file__).with_name("compose-spec.json")
#: image (without registry, tag and -cpu/-cuda) → the settings its entry point parses
SETTINGS = {
    "gateway": GatewaySettings,
    "tokenizer": TokenizerSettings,
    "control-plane": ControlPlaneSettings,
    "engine-hf": HFEngineSettings,
    "engine-vllm": VLLMEngineSettings,
}


def image_of(service: dict[str, Any]) -> str:
    return service["image"].rsplit("/", 1)[1].split(":")[0]


def settings_of(service: dict[str, Any]) -> Any:
    image = image_of(service).removesuffix("-cpu").removesuffix("-cuda")
    argv = [str(a) for a in service["command"]]
    if image == "engine-vllm":
        argv, rest = split_argv(argv)
        assert rest == [], f"vLLM engine arguments {rest} in {service['command']}"
    settings, _ = parse_settings(SETTINGS[image], argv, prog="check", description="", env={})
    return settings


def mesh_services(compose_doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """hfmesh's own services (not the model build, not the observability or redis profiles')."""
    return {
        name: s
        for name, s in compose_doc["services"].items()
        if name != "models" and not {"observability", "redis"} & set(s.get("profiles", []))
    }


def test_tenants_file_and_redis_are_optional(compose_doc):
    from services.gateway.tenants import parse_tenants

    gateway = compose_doc["services"]["gateway"]
    assert gateway["environment"]["HFMESH_TENANTS_FILE"] == "${HFMESH_TENANTS_FILE:-}"
    assert gateway["environment"]["HFMESH_REDIS_URL"] == "${HFMESH_REDIS_URL:-}"
    mount = next(v for v in gateway["volumes"] if str(v).startswith("./tenants:"))
    assert mount.endswith(":ro")
    assert compose_doc["services"]["redis"]["profiles"] == ["redis"]
    example = ROOT / "deploy" / "compose" / "tenants" / "example.yaml"
    assert {t.name for _, t in parse_tenants(example.read_text(), "example")} == {
        "team-a",
        "team-b",
    }


def test_valid_against_the_compose_specification(compose_doc):
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft201909Validator(schema)  # its $schema: draft 2019-09
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(compose_doc)]
    assert errors == []


def test_every_service_parses_its_command_and_probes_its_port(compose_doc):
    for name, service in mesh_services(compose_doc).items():
        settings = settings_of(service)
        test = service["healthcheck"]["test"]
        assert test[:4] == ["CMD", "python", "-m", "services.common.healthcheck"], name
        assert int(test[5]) == settings.port, name
        assert test[4] == ("http" if image_of(service) == "gateway" else "grpc"), name
        assert settings.host == "0.0.0.0", name
        assert service["restart"] == "unless-stopped"
        # the image's own entry point and default health check agree with the compose service
        found = dockerfile(image_of(service))
        assert found["HEALTHCHECK"][1][-2:] == test[-2:], name


def test_engines_serve_the_model_list(compose_doc, mesh_doc):
    services = mesh_services(compose_doc)
    models_built = compose_doc["services"]["models"]["command"]
    served: dict[str, set[str]] = {}
    for entry in mesh_doc["models"]:
        for backend in ("vllm", "huggingface"):
            for address in entry["endpoints"].get(backend, []):
                host, port = address.split(":")
                settings = settings_of(services[host])
                assert settings.model_name == entry["name"] and settings.port == int(port)
                assert settings.model_dir == entry["source"]
                assert entry["source"].removeprefix("/models/") in models_built
                assert services[host]["labels"]["hfmesh.io/role"] == backend
                served.setdefault(entry["name"], set()).add(host)
        tokenizer_host, port = entry["endpoints"]["tokenizer"][0].split(":")
        assert settings_of(services[tokenizer_host]).port == int(port)
    engines = {n for n, s in services.items() if "hfmesh.io/model" in s.get("labels", {})}
    assert {n for n in engines if "cpu" in profiles_of(services[n])} == set().union(
        *served.values()
    )


def test_replicas_register_under_the_address_the_model_list_names(compose_doc, mesh_doc):
    """One endpoint per container: registered under its container IP, an engine would also
    be published at that IP beside its model-list name, and count as two replicas."""
    services = mesh_services(compose_doc)
    listed = {
        address
        for entry in mesh_doc["models"]
        for addresses in entry["endpoints"].values()
        for address in addresses
    }
    registering = {
        name: s
        for name, s in services.items()
        if "HFMESH_CONTROL_PLANE" in s["environment"] and image_of(s) != "gateway"
    }
    assert "tokenizer" in registering and "hf-tiny-sentiment" in registering
    for name, service in registering.items():
        host = service["environment"].get("HFMESH_ADVERTISE_HOST")
        assert host is not None, f"{name} registers without HFMESH_ADVERTISE_HOST"
        assert f"{host}:{settings_of(service).port}" in listed, name
        # a GPU twin answers under its CPU twin's name (its network alias)
        assert host == name.removesuffix("-gpu"), name
        if name.endswith("-gpu"):
            assert host in service["networks"]["default"]["aliases"], name


def profiles_of(service: dict[str, Any]) -> list[str]:
    return service.get("profiles", [])


def test_start_order_volumes_and_profiles(compose_doc):
    services = compose_doc["services"]
    assert services["models"]["restart"] == "no"
    assert services["models"]["volumes"][0]["source"] == "models"
    assert services["gateway"]["ports"] == ["${HFMESH_GATEWAY_PORT:-8080}:8080"]
    assert services["gateway"]["depends_on"]["tokenizer"] == {"condition": "service_healthy"}
    for name, service in mesh_services(compose_doc).items():
        settings = settings_of(service)
        model_volumes = [v for v in service["volumes"] if isinstance(v, dict)]
        if getattr(settings, "model_dir", None) or name == "tokenizer":
            assert model_volumes == [
                {"type": "volume", "source": "models", "target": "/models", "read_only": True}
            ]
            assert service["depends_on"]["models"] == {
                "condition": "service_completed_successfully"
            }
        if image_of(service).startswith("engine-vllm"):
            assert service["shm_size"]
        profiles = profiles_of(service)
        if image_of(service).endswith("-cuda"):
            assert profiles == ["gpu"]
            twin = name.removesuffix("-gpu")
            assert service["networks"]["default"]["aliases"] == [twin]
            assert service["command"] == services[twin]["command"]
            devices = service["deploy"]["resources"]["reservations"]["devices"]
            assert devices[0]["capabilities"] == ["gpu"]
        elif image_of(service).startswith("engine"):
            assert profiles == ["cpu"]
        else:
            assert profiles == []


def test_env_file_sets_the_default_profile_and_every_variable(compose_doc):
    env_path = Path(__file__).resolve().parents[2] / "deploy" / "compose" / ".env"
    env = dict(line.split("=", 1) for line in env_path.read_text().splitlines() if "=" in line)
    assert env["COMPOSE_PROFILES"] == "cpu"
    text = json.dumps(compose_doc)
    used = set(re.findall(r"\$\{([A-Z_]+):-", text))
    assert used <= set(env), used - set(env)
