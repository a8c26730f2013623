"""SmolLM2-135M-Instruct through the whole mesh: the `openai` SDK asks the gateway,
which renders the chat on the tokenizer service and streams from the HF engine."""

from __future__ import annotations

import openai
import pytest

from tests.helpers.mesh import model_entry, running_mesh

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gateway_url(model_path, tmp_path_factory):
    folder = model_path("smollm2-135m-instruct")
    smollm = model_entry("smollm2", folder, "text_generation", max_model_len=2048)
    with running_mesh([smollm], tmp_path_factory.mktemp("mesh"), timeout=600) as mesh:
        yield mesh["gateway"].url


def test_capital_of_france_is_paris(gateway_url):
    client = openai.OpenAI(
        base_url=f"{gateway_url}/openai/v1", api_key="unused", max_retries=0, timeout=300
    )
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    reply = client.chat.completions.create(
        model="smollm2", messages=messages, temperature=0, max_tokens=24
    )
    assert "Paris" in reply.choices[0].message.content
    streamed = client.chat.completions.create(
        model="smollm2", messages=messages, temperature=0, max_tokens=24, stream=True
    )
    assert (
        "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
        == reply.choices[0].message.content
    )
