import json

import pytest

from services.common.engine import Task
from services.common.errors import InvalidArgument
from services.common.mesh import load_mesh, parse_mesh, resolve_backend, task_from_architecture
from services.launcher.plan import plan_processes


@pytest.mark.parametrize(
    "architecture, task",
    [
        ("LlamaForCausalLM", Task.TEXT_GENERATION),
        ("T5ForConditionalGeneration", Task.TEXT2TEXT_GENERATION),
        ("BertForMaskedLM", Task.FILL_MASK),
        ("BertForTokenClassification", Task.TOKEN_CLASSIFICATION),
        ("BertForSequenceClassification", Task.SEQUENCE_CLASSIFICATION),
        ("BertModel", Task.TEXT_EMBEDDING),
    ],
)
def test_task_from_architecture(architecture, task):
    assert task_from_architecture(architecture) is task


def test_unknown_architecture_needs_task():
    with pytest.raises(InvalidArgument, match="pass --task"):
        task_from_architecture("Whatever")


def test_backend_resolution_without_vllm():
    assert resolve_backend("auto", Task.TEXT_GENERATION, "LlamaForCausalLM", vllm_available=False) == "huggingface"
    with pytest.raises(InvalidArgument, match="--backend vllm cannot serve this model: vLLM is not installed"):
        resolve_backend("vllm", Task.TEXT_GENERATION, "LlamaForCausalLM", vllm_available=False)
    with pytest.raises(InvalidArgument, match="backend must be one of"):
        resolve_backend("triton", Task.TEXT_GENERATION, "LlamaForCausalLM", vllm_available=False)


def _folder(tmp_path, name, architecture):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": [architecture]}))
    return str(folder)


def test_plan_assigns_ports_and_round_trips_for_the_gateway(tmp_path):
    document = {
        "models": [
            {"name": "chat", "source": _folder(tmp_path, "c", "LlamaForCausalLM"), "fallback": "huggingface"},
            {"name": "emb", "source": _folder(tmp_path, "e", "BertModel"), "replicas": 2},
        ]
    }
    plan = parse_mesh(document, vllm_available=False)
    assert plan.model("chat").backends == ["huggingface"]
    specs = plan_processes(plan, host="127.0.0.1", base_port=6000, mesh_file="m.yaml")
    assert [s.port for s in specs] == [6000, 6001, 6002, 6003]
    assert plan.endpoints["emb"].engines["huggingface"] == ["127.0.0.1:6002", "127.0.0.1:6003"]
    path = tmp_path / "mesh.yaml"
    path.write_text(plan.to_yaml())
    planned = load_mesh(path, vllm_available=False)
    assert planned.model("emb").task is Task.TEXT_EMBEDDING
    assert planned.endpoints["chat"].tokenizer == ["127.0.0.1:6000"]


def test_bad_lists(tmp_path):
    with pytest.raises(InvalidArgument, match="no 'models'"):
        parse_mesh({})
    source = _folder(tmp_path, "x", "BertModel")
    with pytest.raises(InvalidArgument, match="listed twice"):
        parse_mesh({"models": [{"name": "a", "source": source}, {"name": "a", "source": source}]})
    with pytest.raises(InvalidArgument, match="cannot read"):
        parse_mesh({"models": [{"name": "a", "source": str(tmp_path / "missing")}]})
