"""The `sampling_parameters` contract: one writer, one reader, one set of ranges, and the
one context-length rule."""

from __future__ import annotations

import json

import pytest

from services.common.engine import SamplingParams
from services.common.errors import InvalidArgument
from services.common.llm_tensors import (
    check_context_length,
    check_sampling,
    sampling_from_mapping,
    sampling_to_json,
)


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(),
        SamplingParams(max_tokens=None),
        SamplingParams(
            max_tokens=12,
            min_tokens=2,
            temperature=0.0,
            top_p=0.9,
            top_k=5,
            min_p=0.05,
            seed=0,
            n=3,
            stop=["\n\n", "END"],
            stop_token_ids=[7],
            ignore_eos=True,
            include_stop_str_in_output=True,
            repetition_penalty=1.1,
            presence_penalty=0.3,
            frequency_penalty=-0.2,
            logprobs=0,
            skip_special_tokens=False,
            extra={"logit_bias": {"5": 2.5}, "guided_regex": "[a-z]+"},
        ),
    ],
)
def test_round_trip(params):
    assert sampling_from_mapping(json.loads(sampling_to_json(params))) == params


def test_the_json_holds_vllm_names_and_only_what_differs_from_the_defaults():
    params = SamplingParams(max_tokens=5, temperature=0.0, extra={"logit_bias": {"1": 1.0}})
    expected = {"max_tokens": 5, "temperature": 0.0, "logit_bias": {"1": 1.0}}
    assert json.loads(sampling_to_json(params)) == expected
    assert json.loads(sampling_to_json(SamplingParams())) == {}


def test_clients_numbers_as_strings_are_read():
    given = {"max_tokens": "7", "temperature": "0.5", "ignore_eos": "true", "stop": "x"}
    params = sampling_from_mapping(given)
    assert (params.max_tokens, params.temperature, params.ignore_eos) == (7, 0.5, True)
    assert params.stop == ["x"]


@pytest.mark.parametrize(
    "values, named",
    [
        ({"n": 0}, "'n' must be at least 1"),
        ({"max_tokens": 0}, "'max_tokens'"),
        ({"temperature": -0.1}, "'temperature'"),
        ({"top_p": 0}, "'top_p'"),
        ({"top_k": -2}, "'top_k'"),
        ({"min_p": 1.5}, "'min_p'"),
        ({"repetition_penalty": 0}, "'repetition_penalty'"),
        ({"presence_penalty": 2.5}, "'presence_penalty'"),
        ({"frequency_penalty": -3}, "'frequency_penalty'"),
        ({"min_tokens": -1}, "'min_tokens'"),
        ({"min_tokens": 9, "max_tokens": 4}, "'min_tokens' (9) exceeds 'max_tokens' (4)"),
        ({"stop": ["ok", ""]}, "'stop'"),
        ({"n": "two"}, "'n': invalid value"),
    ],
)
def test_ranges_are_checked_once_and_name_the_parameter(values, named):
    with pytest.raises(InvalidArgument, match=named.replace("(", r"\(").replace(")", r"\)")):
        sampling_from_mapping(values)
    if "invalid value" not in named:
        with pytest.raises(InvalidArgument):
            check_sampling(SamplingParams(**values))


def test_context_overflow_names_prompt_max_tokens_and_limit():
    check_context_length(90, 10, 100, model="m")
    check_context_length(90, None, 100, model="m")
    check_context_length(10_000, 10_000, None, model="m")  # limit unknown: the engine checks
    with pytest.raises(InvalidArgument) as raised:
        check_context_length(95, 10, 100, model="m")
    message = raised.value.message
    assert "95 tokens" in message and "max_tokens is 10" in message and "105" in message
    assert "maximum context length of 100 tokens" in message and "'m'" in message
    with pytest.raises(InvalidArgument, match="leaves no room"):
        check_context_length(100, None, 100, model="m")


def test_encoder_decoder_limits_prompt_and_output_each():
    check_context_length(16, 16, 16, model="t5", separate=True)
    with pytest.raises(InvalidArgument, match="prompt has 17 tokens"):
        check_context_length(17, 4, 16, model="t5", separate=True)
    with pytest.raises(InvalidArgument, match="max_tokens is 17"):
        check_context_length(4, 17, 16, model="t5", separate=True)
