"""Our `SamplingParams` → vLLM's: every field carried, extras passed, errors naming the
parameter."""

from __future__ import annotations

import dataclasses

import pytest

from services.common.engine import SamplingParams
from services.common.errors import InvalidArgument
from services.engine_vllm.sampling import to_vllm

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm


def test_every_field_is_carried_over():
    ours = SamplingParams(
        max_tokens=12,
        min_tokens=2,
        temperature=0.7,
        top_p=0.9,
        top_k=5,
        min_p=0.05,
        seed=11,
        n=3,
        stop=["\n\n", "END"],
        stop_token_ids=[7],
        ignore_eos=True,
        include_stop_str_in_output=True,
        repetition_penalty=1.1,
        presence_penalty=0.3,
        frequency_penalty=-0.2,
        logprobs=2,
        skip_special_tokens=False,
    )
    theirs = to_vllm(ours)
    for field in dataclasses.fields(ours):
        if field.name == "extra":
            continue
        assert getattr(theirs, field.name) == pytest.approx(getattr(ours, field.name)), field.name


def test_output_is_streamed_as_deltas():
    from vllm.sampling_params import RequestOutputKind

    assert to_vllm(SamplingParams()).output_kind is RequestOutputKind.DELTA


def test_extras_reach_vllm():
    theirs = to_vllm(
        SamplingParams(
            extra={"logit_bias": {"5": 2.5}, "bad_words": ["foo"], "allowed_token_ids": [1, 2, 5]}
        )
    )
    assert theirs.logit_bias == {5: 2.5}
    assert theirs.bad_words == ["foo"]
    assert theirs.allowed_token_ids == [1, 2, 5]


def test_structured_outputs_and_guided_aliases():
    direct = to_vllm(SamplingParams(extra={"structured_outputs": {"regex": "[a-z]+"}}))
    assert direct.structured_outputs.regex == "[a-z]+"
    alias = to_vllm(SamplingParams(extra={"guided_json": {"type": "object"}}))
    assert alias.structured_outputs.json == {"type": "object"}
    choice = to_vllm(SamplingParams(extra={"guided_choice": ["yes", "no"]}))
    assert choice.structured_outputs.choice == ["yes", "no"]


def test_greedy_resets_sampling_knobs_as_vllm_does():
    theirs = to_vllm(SamplingParams(temperature=0.0, top_k=3, top_p=0.5))
    assert theirs.temperature == 0.0 and theirs.top_k == 0 and theirs.top_p == 1.0


@pytest.mark.parametrize(
    "params, named",
    [
        (SamplingParams(temperature=-0.5), "temperature"),
        (SamplingParams(top_p=0.0), "top_p"),
        (SamplingParams(max_tokens=0), "max_tokens"),
        (SamplingParams(n=0), "n must be at least 1"),
        (SamplingParams(presence_penalty=9.0), "presence_penalty"),
        (SamplingParams(min_tokens=20, max_tokens=5), "min_tokens"),
        (SamplingParams(extra={"logit_bias": {"not-a-token": 1.0}}), "logit_bias"),
        (SamplingParams(extra={"bad_words": "x"}), "bad_words"),
        (SamplingParams(extra={"frobnicate": 1}), "frobnicate"),
        (SamplingParams(extra={"output_kind": 2}), "output_kind"),
        (SamplingParams(extra={"prompt_logprobs": 1}), "prompt_logprobs"),
        (
            SamplingParams(extra={"structured_outputs": {"regex": "a", "choice": ["b"]}}),
            "structured outputs",
        ),
    ],
)
def test_invalid_values_name_the_parameter(params, named):
    with pytest.raises(InvalidArgument) as raised:
        to_vllm(params)
    assert named in raised.value.message
