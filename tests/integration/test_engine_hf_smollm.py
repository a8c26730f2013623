"""SmolLM2-135M-Instruct served by the HF engine answers a real question, through tritonclient."""

from __future__ import annotations

import pytest
import transformers
import tritonclient.grpc as tgrpc

from services.launcher.processes import start_service
from tests.helpers.triton import llm_inputs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm(model_path):
    service = start_service(
        "services.engine_hf",
        [
            "--model_dir",
            model_path("smollm2-135m-instruct"),
            "--model_name",
            "smollm2",
            "--host",
            "127.0.0.1",
        ],
        name="engine_hf-smollm2",
        ready_timeout=300,
    )
    yield service
    service.stop()


def test_capital_of_france_is_paris(smollm, model_path):
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_path("smollm2-135m-instruct"))
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    inputs = llm_inputs(prompt, {"temperature": 0, "max_tokens": 32}, exclude_input_in_output=True)
    with tgrpc.InferenceServerClient(smollm.address) as client:
        result = client.infer("smollm2", inputs)
    answer = result.as_numpy("text_output")[0].decode()
    assert "Paris" in answer, answer
    assert result.as_numpy("finish_reason").tolist()[0] in (b"stop", b"length")
