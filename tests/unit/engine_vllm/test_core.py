"""The pieces of `VLLMEngine` that need no loaded model: deltas, adapter checks, model state.

The context-length rule it applies is `llm_tensors.check_context_length` (tests/unit/common)."""

from __future__ import annotations

import json

import pytest

from services.common.engine import ModelState, Task
from services.common.errors import InvalidArgument, Unavailable
from services.engine_vllm.adapters import adapter_rank
from services.engine_vllm.core import VLLMEngine, _delta
from services.engine_vllm.settings import build_config

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm


def _completion(token_ids, logprobs=None, finish_reason=None, index=0, text="x"):
    from vllm.outputs import CompletionOutput

    return CompletionOutput(
        index=index,
        text=text,
        token_ids=token_ids,
        cumulative_logprob=None,
        logprobs=logprobs,
        finish_reason=finish_reason,
    )


def test_delta_carries_increment_counts_and_reason():
    delta = _delta(_completion([5, 6], finish_reason="length", index=1, text="ab"), 4, 9, None)
    assert (delta.index, delta.text, delta.token_ids) == (1, "ab", [5, 6])
    assert (delta.num_input_tokens, delta.num_output_tokens, delta.finish_reason) == (
        4,
        9,
        "length",
    )
    assert delta.logprobs is None and delta.top_logprobs is None


def test_delta_logprobs_keep_the_sampled_token_and_the_real_top_k():
    from vllm.logprobs import Logprob

    # vLLM adds the sampled token (here rank 3) beside the top-2.
    step = {9: Logprob(-2.5, rank=3), 1: Logprob(-0.5, rank=1), 2: Logprob(-1.0, rank=2)}
    delta = _delta(_completion([9], logprobs=[step]), 3, 1, 2)
    assert delta.logprobs == [-2.5]
    assert delta.top_logprobs == [{1: -0.5, 2: -1.0}]


def test_adapter_rank_reads_the_peft_config(tmp_path, model_path):
    assert adapter_rank(model_path("tiny-llama-lora")) == 8
    with pytest.raises(InvalidArgument, match="no adapter_config.json"):
        adapter_rank(str(tmp_path))
    (tmp_path / "adapter_config.json").write_text(
        json.dumps({"r": 4, "rank_pattern": {"q_proj": 32}})
    )
    assert adapter_rank(str(tmp_path)) == 32
    (tmp_path / "adapter_config.json").write_text("{nope")
    with pytest.raises(InvalidArgument, match="not valid JSON"):
        adapter_rank(str(tmp_path))


@pytest.fixture
def engine(model_path):
    return VLLMEngine(
        build_config(["--model_dir", model_path("tiny-llama"), "--model_name", "tiny"], on_cpu=True)
    )


def test_before_loading_the_model_is_listed_as_loading(engine):
    [info] = engine.models()
    assert (info.name, info.task, info.state) == ("tiny", Task.TEXT_GENERATION, ModelState.LOADING)
    assert {"text_input", "input_ids", "sampling_parameters"} <= {spec.name for spec in info.inputs}
    assert engine.healthy()
    with pytest.raises(Unavailable, match="loading"):
        engine._ready_llm()
