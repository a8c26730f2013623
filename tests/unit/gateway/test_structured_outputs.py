"""Structured-output request fields at the gateway: carried to the engine as the
`structured_outputs` sampling parameter, and bad ones refused with a 400 naming the field, as the
`openai` SDK sees it."""

from __future__ import annotations

import openai
import pytest

from services.gateway.openai.structured import MAX_SCHEMA_BYTES, MAX_SCHEMA_DEPTH


@pytest.fixture
async def sdk(gateway):
    url, _ = gateway
    client = openai.AsyncOpenAI(base_url=f"{url}/openai/v1", api_key="unused", max_retries=0)
    yield client
    await client.close()


def _deep(levels: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "array", "items": schema}
    return schema


@pytest.mark.parametrize(
    ("fields", "param", "message"),
    [
        ({"response_format": {"type": "xml"}}, "response_format.type", "not supported"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            "response_format.json_schema",
            "'schema'",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": [1]}}},
            "response_format.json_schema.schema",
            "JSON schema object",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "deep", "schema": _deep(MAX_SCHEMA_DEPTH + 2)},
                }
            },
            "response_format.json_schema.schema",
            f"the limit is {MAX_SCHEMA_DEPTH}",
        ),
        (
            {"extra_body": {"guided_json": {"enum": ["x" * MAX_SCHEMA_BYTES]}}},
            "guided_json",
            f"the limit is {MAX_SCHEMA_BYTES}",
        ),
        (
            {"extra_body": {"structured_outputs": {"json": "{nope"}}},
            "structured_outputs.json",
            "not valid JSON",
        ),
        (
            {
                "response_format": {"type": "json_object"},
                "extra_body": {"guided_regex": "[a-z]+"},
            },
            "guided_regex",
            "not several",
        ),
    ],
)
async def test_bad_constraints_are_400_naming_the_field(sdk, fields, param, message):
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.chat.completions.create(
            model="llm", messages=[{"role": "user", "content": "hi"}], max_tokens=4, **fields
        )
    error = caught.value
    assert error.status_code == 400 and error.param == param, error.body
    assert message in error.body["message"]
    assert error.body["type"] == "invalid_request_error"


async def test_an_engine_refusal_names_the_request_field(sdk):
    """The fake engine refuses every extra sampling parameter: the constraint reached it as
    `structured_outputs`, and its refusal comes back naming the field the request used."""
    cases = [
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"structured_outputs": {"choice": ["a", "b"]}}, "structured_outputs"),
        ({"guided_regex": "[0-9]+"}, "guided_regex"),
    ]
    for fields, param in cases:
        for create, kwargs in (
            (sdk.chat.completions.create, {"messages": [{"role": "user", "content": "hi"}]}),
            (sdk.completions.create, {"prompt": "hi"}),
        ):
            with pytest.raises(openai.BadRequestError) as caught:
                await create(model="llm", max_tokens=2, extra_body=fields, **kwargs)
            assert caught.value.param == param
            assert "'structured_outputs'" in caught.value.body["message"]
