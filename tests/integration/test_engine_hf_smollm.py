"""SmolLM2-135M-Instruct served by the HF engine answers a real question, through tritonclient."""

from __future__ import annotations

import json

import numpy as np
import pytest
import transformers
import tritonclient.grpc as tgrpc

from tests.procs import start_service

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm(model_path):
    service = start_service(
        "services.engine_hf",
        ["--model_dir", model_path("smollm2-135m-instruct"), "--model_name", "smollm2", "--host", "127.0.0.1"],
        name="engine_hf-smollm2",
        ready_timeout=300,
    )
    yield service
    service.stop()


def _bytes(name: str, value: str) -> tgrpc.InferInput:
    tensor = tgrpc.InferInput(name, [1], "BYTES")
    tensor.set_data_from_numpy(np.array([value.encode()], dtype=object))
    return tensor


def test_capital_of_france_is_paris(smollm, model_path):
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_path("smollm2-135m-instruct"))
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    exclude = tgrpc.InferInput("exclude_input_in_output", [1], "BOOL")
    exclude.set_data_from_numpy(np.array([True]))
    with tgrpc.InferenceServerClient(smollm.address) as client:
        result = client.infer(
            "smollm2",
            [_bytes("text_input", prompt), _bytes("sampling_parameters", json.dumps({"temperature": 0, "max_tokens": 32})), exclude],
        )
    answer = result.as_numpy("text_output")[0].decode()
    assert "Paris" in answer, answer
    assert result.as_numpy("finish_reason").tolist()[0] in (b"stop", b"length")
