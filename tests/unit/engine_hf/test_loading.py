"""Settings and model loading: KServe flags, task inference, dtype, clear load failures."""

from __future__ import annotations

import pytest
import torch

from services.common.engine import ModelState, Task
from services.common.settings import parse_settings
from services.engine_hf.core import HFEngine
from services.engine_hf.loading import ModelLoadError, torch_dtype
from services.engine_hf.settings import HFEngineSettings


def test_dtype_auto_is_float32_on_cpu():
    cpu = torch.device("cpu")
    assert torch_dtype("auto", cpu, torch.bfloat16) is torch.float32
    assert torch_dtype("half", cpu) is torch.float16
    assert torch_dtype("bfloat16", cpu) is torch.bfloat16


def test_kserve_flags_parse(tmp_path):
    settings, _ = parse_settings(
        HFEngineSettings,
        [
            "--model_dir",
            str(tmp_path),
            "--model_name",
            "m",
            "--task",
            "rerank",
            "--max_length",
            "128",
            "--return_probabilities",
            "--disable_lower_case",
            "--tensor_input_names",
            "input_ids,attention_mask",
        ],
        prog="t",
        description="t",
        env={},
    )
    assert settings.task is Task.RERANK and settings.max_model_len == 128
    assert (
        settings.return_probabilities
        and settings.disable_lower_case
        and not settings.trust_remote_code
    )
    assert settings.tensor_inputs == ("input_ids", "attention_mask")


def test_a_model_source_is_required():
    with pytest.raises(SystemExit):
        parse_settings(HFEngineSettings, ["--model_name", "m"], prog="t", description="t", env={})


async def test_model_id_without_a_hub_fails_clearly():
    engine = HFEngine(HFEngineSettings(model_id="someone/not-here", model_name="m"))
    with pytest.raises(ModelLoadError, match="no model hub is reachable; use --model_dir"):
        await engine.start()
    assert engine.models()[0].state is ModelState.UNAVAILABLE
    await engine.shutdown()


async def test_rerank_needs_a_single_label_model(model_path):
    engine = HFEngine(
        HFEngineSettings(model_dir=model_path("tiny-bert-sentiment"), task=Task.RERANK)
    )
    with pytest.raises(ModelLoadError, match="num_labels=1"):
        await engine.start()
    await engine.shutdown()


async def test_single_label_model_is_classification_unless_rerank_is_asked(engine):
    served = await engine("tiny-bert-reranker")
    assert served.models()[0].task is Task.SEQUENCE_CLASSIFICATION


async def test_max_model_len_cannot_exceed_the_model(model_path):
    engine = HFEngine(HFEngineSettings(model_dir=model_path("tiny-llama"), max_model_len=100000))
    with pytest.raises(ModelLoadError, match="exceeds the model's limit 512"):
        await engine.start()
    await engine.shutdown()


def test_backend_vllm_is_refused_with_a_reason(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse_settings(
            HFEngineSettings,
            ["--model_dir", str(tmp_path), "--backend", "vllm"],
            prog="t",
            description="t",
            env={},
        )
    assert "run services.engine_vllm instead" in capsys.readouterr().err
