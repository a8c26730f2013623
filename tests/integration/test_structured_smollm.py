"""Structured outputs with SmolLM2-135M-Instruct at temperature 0, on both engines, through the
gateway and the `openai` SDK: a `json_schema` with required fields gives a document that parses
and validates, streamed and not; the other constraint kinds hold; a constraint the grammar
library refuses is a 400 naming the field."""

from __future__ import annotations

import json
import re

import jsonschema
import openai
import pytest

from tests.helpers.mesh import smollm_on_engines

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

MODELS = {"smol-hf": "huggingface", "smol-vllm": "vllm"}
SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "country": {"type": "string"},
        "population": {"type": "integer"},
    },
    "required": ["city", "country", "population"],
}
MESSAGES = [
    {
        "role": "user",
        "content": "Describe the capital of France as JSON with city, country and population.",
    }
]


@pytest.fixture(scope="module")
def sdk(model_path, tmp_path_factory):
    folder = model_path("smollm2-135m-instruct")
    with smollm_on_engines(folder, MODELS, tmp_path_factory.mktemp("mesh")) as client:
        yield client


@pytest.mark.parametrize("model", list(MODELS))
def test_json_schema_answer_validates_streamed_and_not(sdk, model):
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "capital", "schema": SCHEMA, "strict": True},
    }
    reply = sdk.chat.completions.create(
        model=model,
        messages=MESSAGES,
        temperature=0,
        max_tokens=200,
        response_format=response_format,
    )
    text = reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop", text
    jsonschema.validate(json.loads(text), SCHEMA)
    stream = sdk.chat.completions.create(
        model=model,
        messages=MESSAGES,
        temperature=0,
        max_tokens=200,
        response_format=response_format,
        stream=True,
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert streamed == text
    jsonschema.validate(json.loads(streamed), SCHEMA)


@pytest.mark.parametrize("model", list(MODELS))
def test_json_object_choice_and_regex(sdk, model):
    as_object = sdk.chat.completions.create(
        model=model,
        messages=MESSAGES,
        temperature=0,
        max_tokens=200,
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(as_object.choices[0].message.content), dict)
    question = [{"role": "user", "content": "Is Paris in France? Answer yes or no."}]
    choice = sdk.chat.completions.create(
        model=model,
        messages=question,
        temperature=0,
        max_tokens=8,
        extra_body={"structured_outputs": {"choice": ["yes", "no"]}},
    )
    assert choice.choices[0].message.content in ("yes", "no")
    regex = r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
    date = sdk.completions.create(
        model=model,
        prompt="The date of the storming of the Bastille was",
        temperature=0,
        max_tokens=16,
        extra_body={"guided_regex": regex},
    )
    assert re.fullmatch(regex, date.choices[0].text), date.choices[0].text


@pytest.mark.parametrize("model", list(MODELS))
def test_a_regex_that_does_not_compile_is_400_naming_the_field(sdk, model):
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(
            model=model,
            messages=MESSAGES,
            max_tokens=8,
            extra_body={"structured_outputs": {"regex": "([a-z"}},
        )
    assert caught.value.param == "structured_outputs", caught.value.body
    assert "regex" in caught.value.body["message"]
