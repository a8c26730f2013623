"""Tool calling with SmolLM2-135M-Instruct at temperature 0, on both engines, through the
gateway and the `openai` SDK: a named `tool_choice` gives `message.tool_calls[0].function` with
the name and arguments valid for the function's parameters; streamed, the SDK's accumulation of
the `tool_calls` deltas gives the same call; a follow-up with the `role: tool` result answers
with content. SmolLM2's template takes no tools, so this also runs the system-prompt rendering
(services/tokenizer/tools.py)."""

from __future__ import annotations

import json

import jsonschema
import pytest

from tests.helpers.mesh import smollm_on_engines

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

MODELS = {"smol-hf": "huggingface", "smol-vllm": "vllm"}
PARAMETERS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": PARAMETERS,
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "description": "The time now"}}
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


@pytest.fixture(scope="module")
def sdk(model_path, tmp_path_factory):
    folder = model_path("smollm2-135m-instruct")
    with smollm_on_engines(
        folder, MODELS, tmp_path_factory.mktemp("mesh"), tool_parser="hermes"
    ) as client:
        yield client


def _accumulated(stream) -> tuple[dict[int, dict], str | None, str]:
    """The SDK's streamed `tool_calls` deltas put together by index, as a client does."""
    calls: dict[int, dict] = {}
    finish, content = None, ""
    for chunk in stream:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        content += choice.delta.content or ""
        for delta in choice.delta.tool_calls or []:
            call = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
            call["id"] = delta.id or call["id"]
            if delta.function is not None:
                call["name"] += delta.function.name or ""
                call["arguments"] += delta.function.arguments or ""
        finish = choice.finish_reason or finish
    return calls, finish, content


@pytest.mark.parametrize("model", list(MODELS))
def test_named_tool_choice_calls_the_function_streamed_and_not(sdk, model):
    fields = dict(
        model=model,
        messages=MESSAGES,
        tools=[WEATHER, TIME],
        tool_choice=NAMED,
        temperature=0,
        max_tokens=60,
    )
    reply = sdk.chat.completions.create(**fields)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, PARAMETERS)

    calls, finish, content = _accumulated(sdk.chat.completions.create(**fields, stream=True))
    assert finish == "tool_calls" and content == ""
    assert len(calls) == 1 and calls[0]["id"].startswith("call_")
    assert calls[0]["name"] == "get_weather"
    assert calls[0]["arguments"] == call.function.arguments

    follow_up = [
        *MESSAGES,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21, "sky": "sunny"}'},
    ]
    answer = sdk.chat.completions.create(
        model=model, messages=follow_up, tools=[WEATHER, TIME], temperature=0, max_tokens=16
    )
    assert answer.choices[0].message.content, answer
    assert answer.choices[0].finish_reason in ("stop", "length")


def test_required_tool_choice_calls_a_listed_function(sdk):
    reply = sdk.chat.completions.create(
        model="smol-hf",
        messages=MESSAGES,
        tools=[WEATHER, TIME],
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
        max_tokens=60,
    )
    calls = reply.choices[0].message.tool_calls
    assert reply.choices[0].finish_reason == "tool_calls" and len(calls) == 1
    assert calls[0].function.name in ("get_weather", "get_time")
    if calls[0].function.name == "get_weather":
        jsonschema.validate(json.loads(calls[0].function.arguments), PARAMETERS)
