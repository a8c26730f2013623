import pytest
import yaml

from services.common.engine import Task
from services.common.errors import InvalidArgument
from services.common.model_list import (
    Endpoints,
    MeshPlan,
    ModelEntry,
    load_model_list,
    parse_model_list,
)


def test_round_trip(tmp_path):
    plan = MeshPlan(
        models=[
            ModelEntry(
                "chat",
                "/m/c",
                Task.TEXT_GENERATION,
                "vllm",
                fallback="huggingface",
                max_model_len=512,
                engine_args=["--enforce-eager"],
            ),
            ModelEntry("emb", "/m/e", Task.TEXT_EMBEDDING, replicas=2),
        ],
        endpoints={
            "chat": Endpoints(["h:1"], {"vllm": ["h:2"], "huggingface": ["h:3"]}),
            "emb": Endpoints(["h:1"], {"huggingface": ["h:4", "h:5"]}),
        },
    )
    path = tmp_path / "mesh.yaml"
    path.write_text(plan.to_yaml())
    assert load_model_list(path) == plan
    assert plan.model("chat").backends == ["vllm", "huggingface"]
    written = yaml.safe_load(path.read_text())["models"][0]
    assert written == {
        "name": "chat",
        "source": "/m/c",
        "task": "text_generation",
        "backend": "vllm",
        "fallback": "huggingface",
        "max_model_len": 512,
        "replicas": 1,
        "engine_args": ["--enforce-eager"],
        "endpoints": {"tokenizer": ["h:1"], "vllm": ["h:2"], "huggingface": ["h:3"]},
    }


def test_bad_lists(tmp_path):
    planned = {
        "source": "/m",
        "task": "fill_mask",
        "backend": "huggingface",
        "endpoints": {"tokenizer": []},
    }
    with pytest.raises(InvalidArgument, match="no 'models'"):
        parse_model_list({})
    with pytest.raises(InvalidArgument, match="listed twice"):
        parse_model_list({"models": [{"name": "a", **planned}, {"name": "a", **planned}]})
    with pytest.raises(InvalidArgument, match="needs a 'name'"):
        parse_model_list({"models": [planned]})
    with pytest.raises(InvalidArgument, match="cannot read model list"):
        load_model_list(tmp_path / "missing.yaml")


def test_an_unplanned_list_is_refused_without_reading_or_building():
    # deploy/models.yaml style: a built-in model name, no task, no endpoints.
    raw = {"name": "chat", "model": "smollm2-135m-instruct", "backend": "auto"}
    with pytest.raises(InvalidArgument, match="not planned .*services.launcher"):
        parse_model_list({"models": [raw]})
    planned = {
        "name": "a",
        "source": "/m",
        "task": "fill_mask",
        "backend": "auto",
        "endpoints": {"tokenizer": []},
    }
    with pytest.raises(InvalidArgument, match="vllm or huggingface, got 'auto'"):
        parse_model_list({"models": [planned]})
    with pytest.raises(InvalidArgument, match="fallback can only be 'huggingface'"):
        parse_model_list({"models": [{**planned, "backend": "vllm", "fallback": "vllm2"}]})
