"""Tool requests at the gateway, as the `openai` SDK sees them: every malformed `tools` or
`tool_choice` is a 400 in the OpenAI envelope naming the field (`param`), before any engine
work; `tool_choice: "none"` needs no tool parser."""

from __future__ import annotations

import openai
import pytest

from services.gateway.settings import GatewaySettings
from tests.unit.gateway.conftest import MODELS, serve_gateway
from tests.unit.tokenizer.test_chat_parity import TOOLS

WEATHER = TOOLS[0]
MESSAGES = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture(scope="module")
async def sdk(mesh):
    task, folder, _ = MODELS["llm"]
    plan = mesh.plan(models={"llm": (task, folder, 512), "llm-plain": MODELS["llm"]})
    plan.model("llm").tool_parser = "hermes"
    async with serve_gateway(GatewaySettings(), plan) as (url, _):
        client = openai.AsyncOpenAI(base_url=f"{url}/openai/v1", api_key="unused", max_retries=0)
        yield client
        await client.close()


def _tool(**function) -> dict:
    return {"type": "function", "function": function}


@pytest.mark.parametrize(
    ("fields", "param", "message"),
    [
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice",
            "function 'x', which is not in 'tools'",
        ),
        ({"tools": [WEATHER], "tool_choice": "always"}, "tool_choice", "'required'"),
        ({"tool_choice": "required"}, "tool_choice", "needs 'tools'"),
        ({"tools": [{"type": "retrieval"}]}, "tools[0].type", "function tool"),
        ({"tools": [{"type": "function"}]}, "tools[0].function", "with a 'name'"),
        ({"tools": [_tool(name="a b")]}, "tools[0].function.name", "1-64 letters"),
        ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name", "listed twice"),
        ({"tools": [_tool(name="f", parameters=[1])]}, "tools[0].function.parameters", "object"),
        ({"tools": [_tool(name="f", description=3)]}, "tools[0].function.description", "string"),
        (
            {
                "tools": [WEATHER],
                "tool_choice": "required",
                "response_format": {"type": "json_object"},
            },
            "tool_choice",
            "cannot be combined with 'response_format'",
        ),
    ],
)
async def test_bad_tools_are_400_naming_the_field(sdk, fields, param, message):
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.chat.completions.create(model="llm", messages=MESSAGES, **fields)
    assert caught.value.status_code == 400
    assert caught.value.param == param
    assert message in caught.value.message


async def test_tools_on_a_model_without_a_tool_parser_are_400(sdk):
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.chat.completions.create(model="llm-plain", messages=MESSAGES, tools=[WEATHER])
    assert caught.value.param == "tools"
    assert "no tool parser configured" in caught.value.message


async def test_tool_choice_none_needs_no_parser_and_answers_content(mesh):
    async with serve_gateway(GatewaySettings(), mesh.plan()) as (url, _):
        client = openai.AsyncOpenAI(base_url=f"{url}/openai/v1", api_key="unused", max_retries=0)
        reply = await client.chat.completions.create(
            model="llm", messages=MESSAGES, tools=[WEATHER], tool_choice="none", max_tokens=3
        )
        await client.close()
    assert reply.choices[0].message.content and not reply.choices[0].message.tool_calls
    assert reply.choices[0].finish_reason == "length"


async def test_auto_answer_without_calls_is_content(sdk):
    reply = await sdk.chat.completions.create(
        model="llm", messages=MESSAGES, tools=[WEATHER], max_tokens=3
    )
    assert reply.choices[0].message.content.startswith("w")
    assert reply.choices[0].finish_reason == "length"
    assert reply.choices[0].message.tool_calls == []
    stream = await sdk.chat.completions.create(
        model="llm", messages=MESSAGES, tools=[WEATHER], max_tokens=3, stream=True
    )
    chunks = [c async for c in stream]
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == reply.choices[0].message.content
