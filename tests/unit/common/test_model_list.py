import pytest
import yaml

from services.common.engine import Task
from services.common.errors import InvalidArgument
from services.common.model_list import (
    Endpoints,
    MeshPlan,
    ModelEntry,
    Scaling,
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


PLANNED = {
    "name": "emb",
    "source": "/m",
    "task": "text_embedding",
    "backend": "huggingface",
    "endpoints": {"tokenizer": ["h:1"], "huggingface": ["h:2"]},
}


def test_scaling_round_trips_through_the_planned_list(tmp_path):
    scaling = {"min_replicas": 0, "max_replicas": 3, "target_requests": 4}
    plan = parse_model_list({"models": [{**PLANNED, "scaling": scaling}]})
    entry = plan.model("emb")
    assert entry.scaling == Scaling(
        min_replicas=0, max_replicas=3, target_requests=4, scale_up_delay=0.0, scale_down_delay=30
    )
    assert entry.replicas == 1  # the starting count defaults to 1 within the bounds
    path = tmp_path / "mesh.yaml"
    path.write_text(plan.to_yaml())
    assert load_model_list(path) == plan
    assert yaml.safe_load(path.read_text())["models"][0]["scaling"] == {
        "min_replicas": 0,
        "max_replicas": 3,
        "target_requests": 4,
        "scale_up_delay": 0.0,
        "scale_down_delay": 30.0,
    }
    starting = parse_model_list(
        {"models": [{**PLANNED, "scaling": {**scaling, "min_replicas": 2}}]}
    )
    assert starting.model("emb").replicas == 2
    assert parse_model_list({"models": [PLANNED]}).model("emb").scaling is None


@pytest.mark.parametrize(
    "scaling,message",
    [
        (
            {"min_replicas": 3, "max_replicas": 2, "target_requests": 1},
            r"min_replicas \(3\) must not exceed scaling.max_replicas \(2\)",
        ),
        ({"max_replicas": 2, "target_requests": 0}, "target_requests must be a number > 0"),
        ({"max_replicas": 2, "target_requests": -1.5}, "target_requests must be a number > 0"),
        ({"max_replicas": 2, "target_requests": "4"}, "target_requests must be a number > 0"),
        (
            {"max_replicas": 2, "target_requests": 1, "scale_up_delay": -1},
            "scale_up_delay must be seconds >= 0",
        ),
        (
            {"max_replicas": 2, "target_requests": 1, "scale_down_delay": "soon"},
            "scale_down_delay must be seconds >= 0",
        ),
        ({"max_replicas": 1.5, "target_requests": 1}, "max_replicas must be a whole number"),
        (
            {"min_replicas": -1, "max_replicas": 1, "target_requests": 1},
            "min_replicas must be a whole number",
        ),
        (
            {"min_replicas": 0, "max_replicas": 0, "target_requests": 1},
            "max_replicas must be at least 1",
        ),
        ({"max_replicas": 2}, "scaling needs target_requests"),
        ({"maxReplicas": 2, "max_replicas": 2, "target_requests": 1}, "unknown key.*maxReplicas"),
        ([1, 2], "scaling must be a mapping"),
    ],
)
def test_bad_scaling_is_refused_with_a_clear_message(scaling, message):
    with pytest.raises(InvalidArgument, match=f"model 'emb': .*{message}"):
        parse_model_list({"models": [{**PLANNED, "scaling": scaling}]})


def test_replicas_must_lie_within_the_scaling_bounds():
    scaling = {"min_replicas": 1, "max_replicas": 3, "target_requests": 2}
    for replicas in (0, 4):
        with pytest.raises(InvalidArgument, match=r"replicas \(\d\) must lie within .*\[1, 3\]"):
            parse_model_list({"models": [{**PLANNED, "replicas": replicas, "scaling": scaling}]})
    zero = {**scaling, "min_replicas": 0}
    assert (
        parse_model_list({"models": [{**PLANNED, "replicas": 0, "scaling": zero}]})
        .model("emb")
        .replicas
        == 0
    )


def test_tool_parser_round_trips_and_a_bad_one_is_refused(tmp_path):
    entry = ModelEntry("chat", "/m/c", Task.TEXT_GENERATION, tool_parser="pythonic")
    plan = MeshPlan(
        models=[entry], endpoints={"chat": Endpoints(["h:1"], {"huggingface": ["h:2"]})}
    )
    path = tmp_path / "mesh.yaml"
    path.write_text(plan.to_yaml())
    assert load_model_list(path).model("chat").tool_parser == "pythonic"
    with pytest.raises(InvalidArgument, match="tool_parser must be one of hermes, pythonic"):
        ModelEntry("chat", "/m/c", Task.TEXT_GENERATION, tool_parser="xml")
