"""Chat-template parity: the tokenizer service's rendered ids equal transformers'
`apply_chat_template(..., tokenize=True)` for the same model and messages (for a template that
takes no tools, SmolLM2's, for the messages rewritten into plain roles by
services/tokenizer/tools.py)."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from services.common.engine import Task
from services.common.errors import InvalidArgument
from services.tokenizer.core import ModelOptions, RenderRequest, TokenizerModel
from services.tokenizer.loader import load_tokenizer
from services.tokenizer.tools import plain_roles, template_takes_tools

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]

CONVERSATIONS = {
    "one_user": [{"role": "user", "content": "What is the capital of France?"}],
    "multi_turn": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello. Ünïcødé ✓"},
        {"role": "user", "content": "Name a colour."},
    ],
    "tool_turn": [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                }
            ],
        },
        {"role": "tool", "content": "sunny, 21C"},
    ],
}


@pytest.fixture(scope="module", params=["tiny-llama", "smollm2-135m-instruct"])
def pair(request, model_path):
    folder = model_path(request.param)
    ours = TokenizerModel(
        request.param, load_tokenizer(folder), ModelOptions(task=Task.TEXT_GENERATION)
    )
    return ours, AutoTokenizer.from_pretrained(folder)


def reference(tokenizer, messages, **kwargs) -> list[int]:
    return list(tokenizer.apply_chat_template(messages, tokenize=True, **kwargs)["input_ids"])


@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("generation_prompt", [True, False])
@pytest.mark.parametrize("with_tools", [False, True])
def test_rendered_ids_equal_transformers(pair, conversation, generation_prompt, with_tools):
    ours, theirs = pair
    messages = CONVERSATIONS[conversation]
    tools = TOOLS if with_tools else None
    result = ours.render(
        RenderRequest(messages=messages, tools=tools, add_generation_prompt=generation_prompt)
    )
    if not template_takes_tools(theirs.chat_template):
        messages, tools = plain_roles(messages, tools, None), None
    want = reference(theirs, messages, tools=tools, add_generation_prompt=generation_prompt)
    assert result.input_ids == want
    assert result.prompt == theirs.apply_chat_template(
        messages, tools=tools, add_generation_prompt=generation_prompt, tokenize=False
    )


def test_tools_change_the_tiny_llama_prompt(model_path):
    ours = TokenizerModel(
        "t", load_tokenizer(model_path("tiny-llama")), ModelOptions(task=Task.TEXT_GENERATION)
    )
    messages = CONVERSATIONS["one_user"]
    plain = ours.render(RenderRequest(messages=messages)).prompt
    with_tools = ours.render(RenderRequest(messages=messages, tools=TOOLS)).prompt
    assert "get_weather" in with_tools and "get_weather" not in plain


def test_continue_final_message_and_custom_template(pair):
    ours, theirs = pair
    messages = [
        {"role": "user", "content": "Count:"},
        {"role": "assistant", "content": "one, two,"},
    ]
    result = ours.render(RenderRequest(messages=messages, continue_final_message=True))
    assert result.input_ids == reference(theirs, messages, continue_final_message=True)
    assert result.prompt.endswith("one, two,")
    template = (
        "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    custom = ours.render(RenderRequest(messages=messages[:1], chat_template=template))
    assert custom.prompt == "[user]Count:[assistant]"
    assert custom.input_ids == reference(
        theirs, messages[:1], chat_template=template, add_generation_prompt=True
    )


def test_plain_text_adds_special_tokens_like_the_tokenizer(pair):
    ours, theirs = pair
    assert (
        ours.render(RenderRequest(text_input="Hello world")).input_ids
        == theirs("Hello world")["input_ids"]
    )
    assert (
        ours.render(RenderRequest(text_input="Hello", add_special_tokens=False)).input_ids
        == theirs("Hello", add_special_tokens=False)["input_ids"]
    )


@pytest.mark.parametrize(
    "request_,fragment",
    [
        (RenderRequest(messages=[]), "non-empty"),
        (RenderRequest(messages=[{"content": "no role"}]), "role"),
        (RenderRequest(text_input=""), "empty"),
        (RenderRequest(messages=[{"role": "user", "content": "x"}], text_input="y"), "exactly one"),
        (
            RenderRequest(messages=[{"role": "user", "content": "x"}], continue_final_message=True),
            "assistant",
        ),
        (
            RenderRequest(messages=[{"role": "user", "content": "x"}], chat_template="{% if %}"),
            "chat template",
        ),
        (
            RenderRequest(
                messages=[{"role": "user", "content": "x"}],
                chat_template="{{ raise_exception('nope') }}",
            ),
            "nope",
        ),
    ],
)
def test_bad_render_requests_name_the_problem(pair, request_, fragment):
    ours, _ = pair
    with pytest.raises(InvalidArgument, match=fragment):
        ours.render(request_)
