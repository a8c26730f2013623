"""SmolLM2-135M-Instruct through the whole mesh: the `openai` SDK asks the gateway,
which renders the chat on the tokenizer service and streams from the HF engine."""

from __future__ import annotations

import openai
import pytest
import yaml

from tests.procs import free_port, start_service, wait_ready

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gateway_url(model_path, tmp_path_factory):
    folder = model_path("smollm2-135m-instruct")
    engine_port, tokenizer_port = free_port(), free_port()
    model_list = tmp_path_factory.mktemp("mesh") / "mesh.yaml"
    model_list.write_text(yaml.safe_dump({"models": [{
        "name": "smollm2", "source": folder, "task": "text_generation", "backend": "huggingface", "max_model_len": 2048,
        "endpoints": {"tokenizer": [f"127.0.0.1:{tokenizer_port}"], "huggingface": [f"127.0.0.1:{engine_port}"]},
    }]}))
    started = []
    try:
        started.append(start_service(
            "services.engine_hf", ["--model_dir", folder, "--model_name", "smollm2", "--host", "127.0.0.1"],
            name="engine-smollm2", port=engine_port, ready="none",
        ))
        started.append(start_service(
            "services.tokenizer", ["--model_list", str(model_list), "--host", "127.0.0.1"],
            name="tokenizer", port=tokenizer_port, ready="none",
        ))
        for service in started:
            wait_ready(service, "grpc", timeout=600)
        gateway = start_service("services.gateway", ["--model_list", str(model_list), "--host", "127.0.0.1"], name="gateway", ready="http")
        started.append(gateway)
        yield gateway.url
    finally:
        for service in started:
            service.stop()


def test_capital_of_france_is_paris(gateway_url):
    client = openai.OpenAI(base_url=f"{gateway_url}/openai/v1", api_key="unused", max_retries=0, timeout=300)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    reply = client.chat.completions.create(model="smollm2", messages=messages, temperature=0, max_tokens=24)
    assert "Paris" in reply.choices[0].message.content
    streamed = client.chat.completions.create(model="smollm2", messages=messages, temperature=0, max_tokens=24, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == reply.choices[0].message.content
