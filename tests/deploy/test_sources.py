"""Deployments of a model list with remote and mounted sources: compose's `models` service and
the Kubernetes init containers run the storage initializer into the model volume, the engines
and the tokenizer read the folders it writes, `pvc://` claims are mounted; all valid against
the Compose Specification and the Kubernetes schemas. Nothing is fetched to generate them
(each entry gives its task and backend)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from services.common.model_source import parse_source
from services.launcher import manifests
from services.models.cache import _parser as models_cli
from tests.deploy.test_compose import SCHEMA, settings_of
from tests.deploy.test_k8s import KUBERNETES_VERSION

CHAT = "hf://HuggingFaceTB/SmolLM2-135M-Instruct@main"
LORA = "s3://adapters/chat-lora"
EMBEDDER = "s3://models/minilm"
MOUNTED = "pvc://model-store/bert-ner"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[Path, str]:
    model_list = tmp_path_factory.mktemp("sources") / "models.yaml"
    models = [
        {
            "name": "chat",
            "source": CHAT,
            "task": "text_generation",
            "backend": "vllm",
            "adapters": [{"name": "chat-lora", "source": LORA}],
        },
        {"name": "emb", "source": EMBEDDER, "task": "text_embedding", "backend": "huggingface"},
        {
            "name": "ner",
            "source": MOUNTED,
            "task": "token_classification",
            "backend": "huggingface",
        },
    ]
    model_list.write_text(yaml.safe_dump({"models": models}))
    return manifests.render("all", model_list)


def _folder(source: str) -> str:
    return f"/models/sources/{parse_source(source).cache_name()}"


def test_compose_fetches_in_the_models_service(files):
    document = yaml.safe_load(files[manifests.COMPOSE_DIR / "compose.yaml"])
    validator = jsonschema.Draft201909Validator(json.loads(SCHEMA.read_text()))
    assert [e.message for e in validator.iter_errors(document)] == []
    models = document["services"]["models"]
    args = models_cli().parse_args(models["command"])
    assert args.command == "build" and args.fetch == [CHAT, EMBEDDER, LORA]
    assert models["environment"]["AWS_SECRET_ACCESS_KEY"] is None  # passed through, never written
    services = document["services"]
    assert settings_of(services["vllm-chat"]).model_dir == _folder(CHAT)
    assert settings_of(services["vllm-chat"]).lora_modules == [f"chat-lora={_folder(LORA)}"]
    assert settings_of(services["hf-emb"]).model_dir == _folder(EMBEDDER)
    assert settings_of(services["hf-ner"]).model_dir == "/mnt/pvc/model-store/bert-ner"
    assert {"type": "volume", "source": "model-store", "target": "/mnt/pvc/model-store"} | {
        "read_only": True
    } in services["hf-ner"]["volumes"]
    assert document["volumes"]["model-store"] == {"external": True}
    for name in ("vllm-chat", "hf-emb", "tokenizer"):
        assert services[name]["depends_on"]["models"]["condition"] == (
            "service_completed_successfully"
        )
    mesh = yaml.safe_load(files[manifests.COMPOSE_DIR / "mesh.yaml"])
    chat = next(m for m in mesh["models"] if m["name"] == "chat")
    assert chat["storage_uri"] == CHAT and chat["source"] == _folder(CHAT)


def _objects(files: dict[Path, str]) -> list[dict[str, Any]]:
    return [
        document
        for path, text in files.items()
        if path.parent == manifests.K8S_BASE
        and path.name not in ("kustomization.yaml", "mesh.yaml")
        for document in yaml.safe_load_all(text)
        if document
    ]


def test_kubernetes_init_containers_fetch_into_the_model_volume(files):
    import kubernetes_validate

    objects = _objects(files)
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    pods = {
        o["metadata"]["name"]: o["spec"]["template"]["spec"]
        for o in objects
        if o["kind"] == "Deployment"
    }
    fetched: dict[str, list[list[str]]] = {}
    for name, pod in pods.items():
        for init in pod.get("initContainers", []):
            args = models_cli().parse_args(init["args"])
            assert args.command == "fetch"
            assert str(args.dest) == _folder(args.source)
            assert init["volumeMounts"] == [{"name": "models", "mountPath": "/models"}]
            assert init["envFrom"][0]["secretRef"]["optional"] is True
            fetched.setdefault(name, []).append(args.source)
    assert fetched == {
        "vllm-chat": [CHAT, LORA],
        "hf-emb": [EMBEDDER],
        "tokenizer": [CHAT, EMBEDDER],
    }
    ner = pods["hf-ner"]
    assert "initContainers" not in ner
    claim = {"claimName": "model-store", "readOnly": True}
    assert {"name": "pvc-model-store", "persistentVolumeClaim": claim} in ner["volumes"]
    mount = {"name": "pvc-model-store", "mountPath": "/mnt/pvc/model-store", "readOnly": True}
    assert mount in ner["containers"][0]["volumeMounts"]
    assert mount in pods["tokenizer"]["containers"][0]["volumeMounts"]
