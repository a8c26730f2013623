"""Which models a tokenizer process serves: flags, or the mesh model list."""

from __future__ import annotations

import pytest
import yaml

from services.common.engine import Task
from services.common.errors import InvalidArgument
from services.common.settings import parse_settings
from services.tokenizer.settings import TokenizerSettings, model_specs


def settings(argv: list[str]) -> TokenizerSettings:
    return parse_settings(TokenizerSettings, argv, prog="t", description="", env={})[0]


def test_flags_pair_folders_names_and_tasks(tmp_path):
    specs = model_specs(
        settings(
            [
                "--model_dir",
                "/m/a",
                "/m/b",
                "--model_name",
                "x",
                "y",
                "--task",
                "fill_mask",
                "rerank",
                "--max_length",
                "128",
            ]
        )
    )
    assert [(s.name, s.folder, s.task, s.max_model_len) for s in specs] == [
        ("x", "/m/a", Task.FILL_MASK, 128),
        ("y", "/m/b", Task.RERANK, 128),
    ]
    assert model_specs(settings(["--model_dir", "/m/tiny-llama"]))[0].name == "tiny-llama"
    with pytest.raises(InvalidArgument, match="--model_name"):
        model_specs(settings(["--model_dir", "/m/a", "/m/b", "--model_name", "x"]))
    with pytest.raises(InvalidArgument, match="no model"):
        model_specs(settings([]))
    with pytest.raises(SystemExit):
        settings(["--predictor_protocol", "v1"])


def test_model_list_serves_the_models_on_this_port(tmp_path, model_path):
    def entry(name: str, port: int) -> dict:
        return {
            "name": name,
            "source": model_path("tiny-bert-ner"),
            "task": "token_classification",
            "backend": "huggingface",
            "max_model_len": 64,
            "endpoints": {"tokenizer": [f"127.0.0.1:{port}"], "huggingface": ["127.0.0.1:1"]},
        }

    path = tmp_path / "mesh.yaml"
    path.write_text(
        yaml.safe_dump({"models": [entry("a", 7001), entry("b", 7002), entry("c", 7001)]})
    )
    specs = model_specs(settings(["--model_list", str(path), "--port", "7001"]))
    assert [(s.name, s.task, s.max_model_len) for s in specs] == [
        ("a", Task.TOKEN_CLASSIFICATION, 64),
        ("c", Task.TOKEN_CLASSIFICATION, 64),
    ]
    assert [
        s.name for s in model_specs(settings(["--model_list", str(path), "--port", "7002"]))
    ] == ["b"]
