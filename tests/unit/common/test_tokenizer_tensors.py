"""The tokenizer service's contract both ways: each request and answer built, sent
through protobuf, and parsed back."""

from __future__ import annotations

import numpy as np
import pytest

from services.common import tokenizer_tensors as tt
from services.common.codec import InferRequest, InferResponse, Tensor
from services.common.converters import (
    infer_request_from_pb,
    infer_request_to_pb,
    infer_response_from_pb,
    infer_response_to_pb,
)
from services.common.encoder_tensors import encoder_inputs_from
from services.common.engine import Task
from services.common.errors import InvalidArgument


def _sent(request: InferRequest, *, raw: bool = True) -> InferRequest:
    return infer_request_from_pb(infer_request_to_pb(request, raw=raw))


def _answered(response: InferResponse, *, raw: bool = True) -> InferResponse:
    return infer_response_from_pb(infer_response_to_pb(response, raw=raw))


@pytest.mark.parametrize("raw", [True, False])
def test_render_round_trip(raw):
    chat = tt.RenderRequest(
        messages=[{"role": "user", "content": "hé"}],
        tools=[{"type": "function"}],
        documents=[{"text": "d"}],
        chat_template="{{ messages }}",
        chat_template_kwargs={"enable_thinking": False},
        add_generation_prompt=False,
        continue_final_message=True,
    )
    sent = _sent(tt.render_request("m", chat, request_id="r1"), raw=raw)
    assert (sent.model_name, sent.id) == ("m.render", "r1")
    assert tt.render_from(sent) == chat
    plain = tt.RenderRequest(text_input="Hello", add_special_tokens=False)
    assert tt.render_from(_sent(tt.render_request("m", plain, request_id=""), raw=raw)) == plain
    rendered = tt.Rendered(input_ids=[1, 2, 3], prompt="<s>Hello", max_model_len=512)
    assert tt.rendered_from(_answered(tt.render_response(sent, rendered), raw=raw)) == rendered
    unlimited = tt.Rendered(input_ids=[1], prompt="x")
    assert tt.rendered_from(_answered(tt.render_response(sent, unlimited), raw=raw)) == unlimited


def test_render_refuses_unknown_and_mistyped_inputs():
    request = tt.render_request("m", tt.RenderRequest(text_input="x"), request_id="")
    request.inputs[0].name = "bogus"
    with pytest.raises(InvalidArgument, match="bogus"):
        tt.render_from(request)
    request = tt.render_request("m", tt.RenderRequest(messages=[]), request_id="")
    request.inputs[0].data[0] = b"{not json"
    with pytest.raises(InvalidArgument, match="messages"):
        tt.render_from(request)


def test_preprocess_round_trip():
    sent = _sent(tt.preprocess_request("m", ["q", "q"], ["d1", "d2"], request_id="r"))
    assert sent.model_name == "m.preprocess"
    assert encoder_inputs_from(sent, Task.RERANK, tokens=False).segments() == (
        ["q", "q"],
        ["d1", "d2"],
    )
    single = _sent(tt.preprocess_request("m", ["a"], None, request_id="r"))
    assert encoder_inputs_from(single, Task.TEXT_EMBEDDING, tokens=False).segments() == (
        ["a"],
        None,
    )


def test_postprocess_round_trip():
    logits = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    encoded = {
        n: np.ones((1, 2), np.int64) for n in ("input_ids", "attention_mask", "token_type_ids")
    }
    request = tt.postprocess_request(
        "m", {"logits": logits}, encoded, request_id="r", parameters={"return_raw_logits": True}
    )
    sent = _sent(request)
    assert sent.model_name == "m.postprocess" and sent.parameters == {"return_raw_logits": True}
    outputs, inputs = tt.postprocess_from(sent)
    assert set(outputs) == {"logits"} and np.array_equal(outputs["logits"], logits)
    assert set(inputs) == {"input_ids", "attention_mask"}  # only what post-processing reads
    result = InferResponse("m.postprocess", [Tensor("output-0", "FP32", np.zeros(2, np.float32))])
    assert tt.result_from(_answered(result)).tolist() == [0.0, 0.0]
    with pytest.raises(InvalidArgument, match="logits"):
        tt.postprocess_from(_sent(tt.postprocess_request("m", {}, encoded, request_id="r")))


@pytest.mark.parametrize("raw", [True, False])
def test_detokenize_round_trip(raw):
    sent = _sent(tt.detokenize_request("m", [5, 6], request_id="r", output="tokens"), raw=raw)
    assert sent.model_name == "m.detokenize" and sent.requested_outputs == ["tokens"]
    ids, skip = tt.detokenize_from(sent)
    assert ids.tolist() == [5, 6] and skip is True
    kept = tt.detokenize_request("m", [5], request_id="r", skip_special_tokens=False)
    assert tt.detokenize_from(_sent(kept, raw=raw))[1] is False
    vocab = tt.detokenize_request("m", [5], request_id="r", output="token_strs")
    assert vocab.requested_outputs == ["token_strs"]
    sent.parameters["skip_special_tokens"] = "false"
    assert tt.detokenize_from(sent)[1] is False
    answer = _answered(
        tt.detokenize_response(sent, ["hé"], ["h", "é"], ids.shape, ["Ġh", "é"]), raw=raw
    )
    assert tt.text_from(answer) == "hé" and tt.tokens_from(answer) == ["h", "é"]
    assert tt.tokens_from(answer, "token_strs") == ["Ġh", "é"]
    with pytest.raises(InvalidArgument, match="input_ids"):
        tt.detokenize_from(InferRequest("m.detokenize", []))


def test_model_names():
    assert tt.operation_model("a.b", tt.RENDER) == "a.b.render"
    assert tt.split_model_name("a.b.render", {"a.b"}) == ("a.b", "render")
    assert tt.split_model_name("a.b", {"a.b"}) == ("a.b", None)
    assert tt.split_model_name("x.render", {"a"}) == ("x.render", None)
