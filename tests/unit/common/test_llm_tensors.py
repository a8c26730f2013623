"""The LLM delta contract both ways: `response_for` (engine) → protobuf →
`delta_from_response` (client)."""

from __future__ import annotations

import pytest

from services.common import llm_tensors
from services.common.codec import InferRequest, InferResponse, Tensor, as_bytes_array
from services.common.converters import (
    infer_request_from_pb,
    infer_request_to_pb,
    infer_response_to_pb,
)
from services.common.engine import GenerateDelta, SamplingParams
from services.common.errors import InvalidArgument

REQUEST = InferRequest("llm", [], id="r")
DELTAS = [
    GenerateDelta(
        0,
        "héllo",
        [42, 7],
        5,
        2,
        "stop",
        logprobs=[-0.5, -1.25],
        top_logprobs=[{42: -0.5, 9: -2.0}, {7: -1.25}],
    ),
    GenerateDelta(1, " wörld", [3], 5, 1, None, logprobs=[-0.75]),
    GenerateDelta(0, "", [], 4, 0, "length"),
    GenerateDelta(2, "x", [1, 2, 3], 9, 3, "abort", logprobs=[float("-inf"), 0.0, -3.5]),
]


@pytest.mark.parametrize("raw", [True, False])
@pytest.mark.parametrize("delta", DELTAS, ids=range(len(DELTAS)))
def test_a_delta_survives_the_wire(delta, raw):
    options = llm_tensors.LLMOptions(
        stream=True,
        return_num_input_tokens=True,
        return_num_output_tokens=True,
        return_logprobs=delta.logprobs is not None,
    )
    response = llm_tensors.response_for(REQUEST, options, [delta], n=3)
    assert llm_tensors.delta_from_response(infer_response_to_pb(response, raw=raw)) == delta


def test_raw_responses_take_the_fast_path_and_others_the_codec():
    response = llm_tensors.response_for(REQUEST, llm_tensors.LLMOptions(stream=True), DELTAS[:1])
    assert llm_tensors._raw_values(infer_response_to_pb(response, raw=True)) is not None
    assert llm_tensors._raw_values(infer_response_to_pb(response, raw=False)) is None
    two = InferResponse("llm", [Tensor("text_output", "BYTES", as_bytes_array(["a", "b"]))])
    assert (
        llm_tensors._raw_values(infer_response_to_pb(two, raw=True)) is None
    )  # not one element: codec path


def test_a_non_final_response_carries_no_counts():
    delta = GenerateDelta(0, "a", [1], 5, 1)
    response = llm_tensors.response_for(REQUEST, llm_tensors.LLMOptions(stream=True), [delta])
    back = llm_tensors.delta_from_response(infer_response_to_pb(response, raw=True))
    assert (back.num_input_tokens, back.num_output_tokens, back.finish_reason, back.logprobs) == (
        0,
        0,
        None,
        None,
    )


def test_protocol_flags_are_booleans_as_clients_send_them():
    def options(**parameters):
        text = Tensor("text_input", "BYTES", as_bytes_array(["hi"]))
        return llm_tensors.parse_generate_request(
            InferRequest("llm", [text], parameters=parameters), "id"
        )[1]

    assert not options(coalesce_deltas="false").coalesce_deltas
    assert options(
        coalesce_deltas="TRUE", triton_enable_empty_final_response=1
    ).empty_final_response
    with pytest.raises(InvalidArgument, match="coalesce_deltas"):
        options(coalesce_deltas="yes")


def test_generate_request_round_trip():
    """The gateway's builder and the engine's parser agree on every field."""
    sampling = SamplingParams(
        max_tokens=7, temperature=0.0, stop=["\n"], extra={"logit_bias": {"3": 1.5}}
    )
    request = llm_tensors.generate_request("m", [5, 6, 7], sampling, request_id="r1", logprobs=True)
    generate, options = llm_tensors.parse_generate_request(
        infer_request_from_pb(infer_request_to_pb(request)), "engine-id"
    )
    assert generate.prompt_token_ids == [5, 6, 7] and generate.prompt is None
    assert generate.sampling == sampling
    assert options.stream and options.exclude_input_in_output and options.return_logprobs
    assert options.coalesce_deltas
