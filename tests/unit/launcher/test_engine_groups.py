"""Engine groups as planned: which HF engine models share a process, its flags and port, the
endpoints of its models, the planned list's round trip, and replicas of a grouped model."""

from __future__ import annotations

import json

import pytest
import yaml

from services.common.errors import InvalidArgument
from services.common.model_list import load_model_list
from services.launcher import plan as planning
from services.launcher.plan import DEFAULT_ENGINE_GROUP, plan_models, plan_processes
from services.launcher.replicas import Replicas
from tests.unit.launcher.test_scale_commands import _Recorder


def _folder(tmp_path, name: str, architecture: str) -> str:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": [architecture]}))
    return str(folder)


@pytest.fixture
def raw(tmp_path) -> list[dict]:
    """The default list's shape: a chat model on vLLM with an HF fallback, encoders, and one
    model that scales (which never joins a group)."""
    return [
        {"name": "chat", "source": _folder(tmp_path, "c", "LlamaForCausalLM")},
        {"name": "emb", "source": _folder(tmp_path, "e", "BertModel")},
        {"name": "fill", "source": _folder(tmp_path, "f", "BertForMaskedLM")},
        {"name": "big", "source": _folder(tmp_path, "b", "BertForMaskedLM"), "replicas": 2},
    ]


def test_the_launchers_default_groups_every_single_replica_hf_model(raw):
    raw[0]["fallback"] = "huggingface"
    plan = plan_models(raw, vllm_available=None, default_group=DEFAULT_ENGINE_GROUP)
    groups = {m.name: m.engine_group for m in plan.models}
    assert groups == {"chat": "shared", "emb": "shared", "fill": "shared", "big": None}
    specs = plan_processes(plan, host="127.0.0.1", base_port=6000, mesh_file="m.yaml")
    assert [(s.name, s.port) for s in specs] == [
        ("tokenizer", 6000),
        ("vllm-chat", 6001),
        ("huggingface-group-shared", 6002),  # at its first model's place
        ("huggingface-big-0", 6003),
        ("huggingface-big-1", 6004),
    ]
    group = specs[2]
    assert group.module == "services.engine_hf" and group.model is None
    assert group.args == ["--model_list", "m.yaml", "--models", "chat,emb,fill"]
    assert group.group == ["chat", "emb", "fill"] and group.backend == "huggingface"
    assert plan.endpoints["chat"].engines == {
        "vllm": ["127.0.0.1:6001"],
        "huggingface": ["127.0.0.1:6002"],
    }
    assert plan.endpoints["emb"].engines == plan.endpoints["fill"].engines
    assert plan.endpoints["fill"].engines == {"huggingface": ["127.0.0.1:6002"]}


def test_without_a_default_group_each_model_keeps_its_process(raw):
    plan = plan_models(raw, vllm_available=False)
    assert {m.engine_group for m in plan.models} == {None}
    specs = plan_processes(plan, host="127.0.0.1", base_port=6000, mesh_file="m.yaml")
    assert [s.name for s in specs] == [
        "tokenizer",
        "huggingface-chat",
        "huggingface-emb",
        "huggingface-fill",
        "huggingface-big-0",
        "huggingface-big-1",
    ]


def test_groups_written_in_the_list_win(raw):
    raw[1]["engine_group"] = "alone"  # a group of its own: its own process
    raw[2]["engine_group"] = None  # no group at all, whatever the default
    plan = plan_models(raw, vllm_available=False, default_group=DEFAULT_ENGINE_GROUP)
    assert [m.engine_group for m in plan.models] == ["shared", "alone", None, None]
    specs = plan_processes(plan, host="127.0.0.1", base_port=6000, mesh_file="m.yaml")
    assert [s.name for s in specs][:4] == [
        "tokenizer",
        "huggingface-group-shared",
        "huggingface-group-alone",
        "huggingface-fill",
    ]
    assert specs[2].args[-2:] == ["--models", "emb"]


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"replicas": 2}, "has one replica and no scaling"),
        ({"scaling": {"max_replicas": 2, "target_requests": 4}}, "has one replica"),
        ({"engine_group": "bad name"}, "engine_group must be a name"),
        ({"engine_group": ""}, "engine_group must be a name"),
    ],
)
def test_bad_groups_are_refused(raw, extra, message):
    entry = {**raw[1], "engine_group": "g", **extra}
    with pytest.raises(InvalidArgument, match=message):
        plan_models([entry], vllm_available=False)


def test_a_group_is_for_hf_engine_models(raw):
    with pytest.raises(InvalidArgument, match="groups HF engine processes.*vllm only"):
        plan_models([{**raw[0], "engine_group": "g"}], vllm_available=None)


def test_the_planned_list_keeps_the_groups(raw, tmp_path):
    plan = plan_models(raw, vllm_available=False, default_group=DEFAULT_ENGINE_GROUP)
    path = tmp_path / "mesh.yaml"
    plan_processes(plan, host="127.0.0.1", base_port=6000, mesh_file=str(path))
    path.write_text(plan.to_yaml())
    again = load_model_list(path)
    assert [m.engine_group for m in again.models] == [m.engine_group for m in plan.models]
    # the launcher plans the list it read back to the same processes and ports
    first = plan_processes(plan, host="127.0.0.1", base_port=6000, mesh_file=str(path))
    second = plan_processes(again, host="127.0.0.1", base_port=6000, mesh_file=str(path))
    assert [(s.name, s.port, s.args) for s in first] == [(s.name, s.port, s.args) for s in second]


def test_a_grouped_model_counts_its_group_and_scales_out_alone(raw):
    plan = plan_models(raw[1:3], vllm_available=False, default_group=DEFAULT_ENGINE_GROUP)
    specs = plan_processes(plan, host="127.0.0.1", base_port=7000, mesh_file="mesh.yaml")
    supervisor = _Recorder()
    for spec in specs:
        supervisor.entries[spec.name] = None  # type: ignore[assignment]
    replicas = Replicas(plan, supervisor, {}, planned=specs)
    assert replicas.count("emb") == replicas.count("fill") == 1
    added = replicas.add("emb")
    assert added.name == "huggingface-emb-1" and added.model == "emb"
    assert added.args[:4] == ["--model_dir", plan.model("emb").source, "--model_name", "emb"]
    assert replicas.remove("emb") == "huggingface-emb-1"
    with pytest.raises(InvalidArgument, match="one huggingface replica left"):
        replicas.remove("emb")


def test_the_planning_child_groups_unless_told_not_to(raw, tmp_path):
    listed = tmp_path / "list.yaml"
    listed.write_text(yaml.safe_dump({"models": raw[1:3]}))
    out = tmp_path / "mesh.yaml"
    common = ["--model_list", str(listed), "--out", str(out), "--base_port", "7000", "--no_vllm"]
    assert planning.main(common) == 0
    planned = load_model_list(out)
    assert {m.engine_group for m in planned.models} == {"shared"}
    assert planned.endpoints["emb"].engines == {"huggingface": ["127.0.0.1:7001"]}
    assert planning.main([*common, "--engine_per_model"]) == 0
    planned = load_model_list(out)
    assert {m.engine_group for m in planned.models} == {None}
    assert planned.endpoints["fill"].engines == {"huggingface": ["127.0.0.1:7002"]}
