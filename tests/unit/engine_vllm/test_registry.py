"""Backend selection asks vLLM's own model registry (no engine started)."""

from __future__ import annotations

import pytest

from services.engine_vllm.registry import unsupported_reason, vllm_supports

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm


@pytest.mark.parametrize("architecture", ["LlamaForCausalLM", "Qwen2ForCausalLM", "BertModel"])
def test_registered_architectures(architecture):
    assert vllm_supports(architecture)
    assert unsupported_reason(architecture) is None


@pytest.mark.parametrize(
    "architecture", ["T5ForConditionalGeneration", "NoSuchModelForCausalLM", ""]
)
def test_unregistered_architectures(architecture):
    assert not vllm_supports(architecture)
    assert architecture in unsupported_reason(architecture)


def test_planned_backend_resolution_uses_the_registry():
    from services.common.engine import Task
    from services.common.errors import InvalidArgument
    from services.launcher.plan import resolve_backend

    assert resolve_backend("auto", Task.TEXT_GENERATION, "LlamaForCausalLM") == "vllm"
    assert (
        resolve_backend("auto", Task.TEXT2TEXT_GENERATION, "T5ForConditionalGeneration")
        == "huggingface"
    )
    with pytest.raises(InvalidArgument, match="T5ForConditionalGeneration"):
        resolve_backend("vllm", Task.TEXT2TEXT_GENERATION, "T5ForConditionalGeneration")
