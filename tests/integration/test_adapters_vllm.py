"""LoRA adapters of the model list through the gateway, on the vLLM engine: `/v1/models` lists
the adapter with `parent` = its base model, and a completion for the adapter's name runs the base
model with the adapter (its greedy output differs from the base model's, as the engine's own
test finds for the same adapter addressed directly)."""

from __future__ import annotations

import httpx
import openai
import pytest

from services.common.model_list import Adapter
from tests.helpers.mesh import model_entry, running_mesh

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

BASE, ADAPTER = "tiny", "tiny-lora"
PROMPTS = ["The quick brown fox", "Once upon a time there was", "hello world, this is"]


@pytest.fixture(scope="module")
def gateway_url(model_path, tmp_path_factory):
    entry = model_entry(
        BASE,
        model_path("tiny-llama"),
        "text_generation",
        "vllm",
        max_model_len=512,
        engine_args=["--max-lora-rank", "8"],
    )
    entry.adapters = [Adapter(ADAPTER, model_path("tiny-llama-lora"))]
    env = {"VLLM_CPU_KVCACHE_SPACE": "1"}
    with running_mesh([entry], tmp_path_factory.mktemp("mesh"), env=env, timeout=900) as mesh:
        yield f"{mesh['gateway'].url}/openai/v1"


def test_models_lists_the_adapter_with_its_base_model(gateway_url):
    cards = {c["id"]: c for c in httpx.get(f"{gateway_url}/models", timeout=30).json()["data"]}
    assert cards[BASE]["parent"] is None
    assert cards[ADAPTER]["parent"] == BASE
    assert cards[ADAPTER]["root"].endswith("tiny-llama-lora")


def test_a_completion_for_the_adapter_runs_it(gateway_url):
    sdk = openai.OpenAI(base_url=gateway_url, api_key="unused", max_retries=0, timeout=300)
    for prompt in PROMPTS:
        fields = dict(prompt=prompt, max_tokens=12, temperature=0, extra_body={"ignore_eos": True})
        base = sdk.completions.create(model=BASE, **fields)
        tuned = sdk.completions.create(model=ADAPTER, **fields)
        assert tuned.model == ADAPTER and tuned.usage.completion_tokens == 12
        assert tuned.choices[0].text != base.choices[0].text
