import json

import pytest

from services.common.engine import Task
from services.common.errors import InvalidArgument
from services.common.model_list import load_model_list, model_dicts
from services.launcher.plan import (
    plan_model_list,
    plan_models,
    plan_processes,
    resolve_backend,
    with_metrics_ports,
)


def test_backend_resolution_without_vllm():
    assert (
        resolve_backend("auto", Task.TEXT_GENERATION, "LlamaForCausalLM", vllm_available=False)
        == "huggingface"
    )
    with pytest.raises(
        InvalidArgument, match="--backend vllm cannot serve this model: vLLM is not installed"
    ):
        resolve_backend("vllm", Task.TEXT_GENERATION, "LlamaForCausalLM", vllm_available=False)
    with pytest.raises(InvalidArgument, match="backend must be one of"):
        resolve_backend("triton", Task.TEXT_GENERATION, "LlamaForCausalLM", vllm_available=False)
    with pytest.raises(InvalidArgument, match="task fill_mask is served by the HF engine"):
        resolve_backend("vllm", Task.FILL_MASK, "BertForMaskedLM")


def _folder(tmp_path, name, architecture):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": [architecture]}))
    return str(folder)


def test_plan_assigns_ports_and_round_trips_for_the_gateway(tmp_path):
    document = {
        "models": [
            {
                "name": "chat",
                "source": _folder(tmp_path, "c", "LlamaForCausalLM"),
                "fallback": "huggingface",
            },
            {"name": "emb", "source": _folder(tmp_path, "e", "BertModel"), "replicas": 2},
        ]
    }
    plan = plan_models(model_dicts(document), vllm_available=False)
    assert plan.model("chat").backends == ["huggingface"]
    specs = plan_processes(plan, host="127.0.0.1", base_port=6000, mesh_file="m.yaml")
    assert [s.port for s in specs] == [6000, 6001, 6002, 6003]
    assert plan.endpoints["emb"].engines["huggingface"] == ["127.0.0.1:6002", "127.0.0.1:6003"]
    path = tmp_path / "mesh.yaml"
    path.write_text(plan.to_yaml())
    planned = load_model_list(path)
    assert planned.model("emb").task is Task.TEXT_EMBEDDING
    assert planned.endpoints["chat"].tokenizer == ["127.0.0.1:6000"]
    assert plan_model_list(path, vllm_available=False).models == planned.models
    # every planned process exports /metrics on its own port, after its other flags
    assert with_metrics_ports(specs, 9100, free=lambda: 0) == {
        "tokenizer": 9100,
        "huggingface-chat": 9101,
        "huggingface-emb-0": 9102,
        "huggingface-emb-1": 9103,
    }
    assert specs[3].args[-2:] == ["--metrics_port", "9103"]


def test_bad_lists(tmp_path):
    source = _folder(tmp_path, "x", "BertModel")
    with pytest.raises(InvalidArgument, match="listed twice"):
        plan_models(
            model_dicts(
                {"models": [{"name": "a", "source": source}, {"name": "a", "source": source}]}
            )
        )
    with pytest.raises(InvalidArgument, match="cannot read"):
        plan_models([{"name": "a", "source": str(tmp_path / "missing")}])
    with pytest.raises(InvalidArgument, match="give 'model'"):
        plan_models([{"name": "a"}])


def test_sources_and_adapters_are_planned_and_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("HFMESH_PVC_ROOT", str(tmp_path / "pvc"))
    mounted = tmp_path / "pvc" / "store" / "llama"
    mounted.mkdir(parents=True)
    (mounted / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    raw = {
        "name": "chat",
        "source": "pvc://store/llama",
        "adapters": [{"name": "chat-sql", "source": str(adapter)}],
    }
    plan = plan_models([raw], vllm_available=None)
    entry = plan.model("chat")
    assert entry.source == str(mounted) and entry.storage_uri is None
    assert entry.backend == "vllm"  # auto, a Llama: adapters go to the vLLM engine
    specs = plan_processes(plan, host="127.0.0.1", base_port=6000, mesh_file="m.yaml")
    assert ["--lora-modules", f"chat-sql={adapter}"] == specs[1].args[-2:]
    # Containers fetch remote sources themselves: planning with fetch=False reads nothing.
    remote = {"name": "r", "source": "s3://models/x", "task": "fill_mask", "backend": "huggingface"}
    planned = plan_models([remote], fetch=False).model("r")
    assert (planned.storage_uri, planned.task) == ("s3://models/x", Task.FILL_MASK)
    path = tmp_path / "mesh.yaml"
    document = plan_models([raw, remote], fetch=False)
    plan_processes(document, host="127.0.0.1", base_port=6000, mesh_file=str(path))
    path.write_text(document.to_yaml())
    again = load_model_list(path)
    assert again.model("r").storage_uri == "s3://models/x"
    assert again.model("chat").adapters[0].source == str(adapter)


def test_bad_sources_and_adapters_name_the_model(tmp_path):
    with pytest.raises(InvalidArgument, match="model 'a': model source 'ftp://x/y'"):
        plan_models([{"name": "a", "source": "ftp://x/y"}])
    folder = _folder(tmp_path, "b", "BertModel")
    with pytest.raises(InvalidArgument, match="adapters are served by the vLLM engine"):
        plan_models(
            [{"name": "b", "source": folder, "adapters": [{"name": "l", "source": folder}]}]
        )
    with pytest.raises(InvalidArgument, match="needs a 'name' and a 'source'"):
        plan_models([{"name": "b", "source": folder, "adapters": [{"name": "l"}]}])
