import pytest
from pydantic import BaseModel, Field

from services.common.settings import build_parser, parse_settings


class Example(BaseModel):
    model_name: str = Field("model", description="name clients use")
    max_model_len: int | None = Field(
        None, description="context limit", json_schema_extra={"aliases": ["--max_length"]}
    )
    disable_lower_case: bool = Field(False, description="keep case")
    port: int = Field(0, description="port")


def test_flags_aliases_and_env():
    settings, extra = parse_settings(
        Example,
        ["--max_length", "128", "--disable_lower_case", "--enforce-eager"],
        prog="x",
        description="d",
        allow_unknown=True,
        env={"HFMESH_PORT": "9"},
    )
    assert settings.max_model_len == 128 and settings.disable_lower_case and settings.port == 9
    assert extra == ["--enforce-eager"]


def test_help_comes_from_descriptions():
    text = build_parser(Example, prog="x", description="d").format_help()
    assert "name clients use" in text and "HFMESH_MODEL_NAME" in text


def test_invalid_value_names_the_flag(capsys):
    with pytest.raises(SystemExit):
        parse_settings(Example, ["--port", "abc"], prog="x", description="d", env={})
    assert "--port" in capsys.readouterr().err


def test_both_engines_take_the_same_kserve_flags():
    from services.common.engine import Task
    from services.common.settings import KServeRuntimeFlags, TokenizerFlags
    from services.engine_hf.settings import HFEngineSettings
    from services.engine_vllm.settings import VLLMEngineSettings
    from services.tokenizer.settings import TokenizerSettings

    shared = KServeRuntimeFlags.model_fields
    for engine in (HFEngineSettings, VLLMEngineSettings):
        for name, field in shared.items():
            mine = engine.model_fields[name]
            assert (mine.annotation, mine.default) == (field.annotation, field.default)
            assert mine.description == field.description
        argv = ["--model_dir", "/m", "--task", "rerank", "--max-length", "64"]
        settings, _ = parse_settings(engine, argv, prog="x", description="d", env={})
        assert settings.task is Task.RERANK and settings.max_model_len == 64
        assert settings.metrics_port is None
    assert set(TokenizerFlags.model_fields) <= set(TokenizerSettings.model_fields)


async def test_replicas_register_only_with_a_control_plane():  # registrars make aio channels
    from services.common.registration import Registration
    from services.engine_hf.settings import HFEngineSettings
    from services.tokenizer.settings import TokenizerSettings

    argv = ["--model_dir", "/m", "--model_name", "m"]
    alone, _ = parse_settings(HFEngineSettings, argv, prog="x", description="d", env={})
    assert alone.registration(service="engine", models=["m"], backend="huggingface") is None
    env = {"HFMESH_CONTROL_PLANE": "cp:18000"}
    engine, _ = parse_settings(HFEngineSettings, argv, prog="x", description="d", env=env)
    assert engine.registration(service="engine", models=["m"], backend="huggingface") == (
        Registration("cp:18000", "engine", ("m",), "huggingface")
    )
    argv = ["--model_dir", "/m", "--control_plane", "cp:1", "--advertise_host", "tok.svc"]
    tokenizer, _ = parse_settings(TokenizerSettings, argv, prog="x", description="d", env={})
    registration = tokenizer.registration(service="tokenizer", models=["a", "b"])
    assert registration == Registration("cp:1", "tokenizer", ("a", "b"), "", "tok.svc")
    assert registration.registrar("0.0.0.0", 50051).address == "tok.svc:50051"


def test_engines_take_model_id_in_the_model_source_syntax(capsys):
    from services.engine_hf.settings import HFEngineSettings
    from services.engine_vllm.settings import VLLMEngineSettings

    for engine in (HFEngineSettings, VLLMEngineSettings):
        argv = ["--model_id", "hf://org/name@v1", "--task", "text_generation"]
        settings, _ = parse_settings(engine, argv, prog="x", description="d", env={})
        assert (settings.model_id, settings.model_revision) == ("org/name", "v1")
        argv += ["--model_revision", "main"]
        settings, _ = parse_settings(engine, argv, prog="x", description="d", env={})
        assert (settings.model_id, settings.model_revision) == ("org/name", "main")
    with pytest.raises(SystemExit):
        argv = ["--model_id", "s3://models/tiny", "--task", "text_generation"]
        parse_settings(HFEngineSettings, argv, prog="x", description="d", env={})
    assert "python -m services.models fetch" in capsys.readouterr().err
