"""Tools for templates that take none (services/tokenizer/tools.py): SmolLM2's template gets the
tools in its system message in the model's format, earlier calls in the assistant's content and
tool results as user messages; a template that takes tools (tiny-llama's) gets them as they are."""

from __future__ import annotations

import pytest

from services.common.engine import Task
from services.common.errors import InvalidArgument
from services.common.tool_format import call_text
from services.tokenizer.core import ModelOptions, RenderRequest, TokenizerModel
from services.tokenizer.loader import load_tokenizer
from services.tokenizer.tools import template_takes_tools
from tests.unit.tokenizer.test_chat_parity import CONVERSATIONS, TOOLS


@pytest.fixture(scope="module")
def smol(model_path):
    folder = model_path("smollm2-135m-instruct")
    return TokenizerModel("smol", load_tokenizer(folder), ModelOptions(task=Task.TEXT_GENERATION))


def test_which_templates_take_tools(smol, model_path):
    tiny = load_tokenizer(model_path("tiny-llama"))
    assert template_takes_tools(tiny.chat_template)
    assert not template_takes_tools(smol.tokenizer.chat_template)


@pytest.mark.parametrize("parser", ["hermes", "pythonic"])
def test_a_template_without_tools_gets_them_in_the_format_of_the_parser(smol, parser):
    request = RenderRequest(messages=CONVERSATIONS["tool_turn"], tools=TOOLS, tool_parser=parser)
    prompt = smol.apply_chat_template(request)
    system = prompt.split("<|im_end|>")[0]
    assert system.startswith("<|im_start|>system\nYou can call functions.")
    assert '"name": "get_weather"' in system and "SmolLM" not in system
    assert ("<tool_call>" in system) == (parser == "hermes")
    written = call_text(parser, [("get_weather", {"city": "Paris"})])
    assert f"<|im_start|>assistant\n{written}<|im_end|>" in prompt
    assert "<|im_start|>user\n<tool_response>\nsunny, 21C\n</tool_response><|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


def test_a_system_message_keeps_its_text_before_the_tools(smol):
    messages = [{"role": "system", "content": "Be terse."}, *CONVERSATIONS["one_user"]]
    prompt = smol.apply_chat_template(RenderRequest(messages=messages, tools=TOOLS))
    assert prompt.startswith("<|im_start|>system\nBe terse.\n\nYou can call functions.")
    assert prompt.count("<|im_start|>system") == 1


def test_consecutive_tool_results_are_one_user_message(smol):
    messages = [*CONVERSATIONS["tool_turn"], {"role": "tool", "content": "windy"}]
    prompt = smol.apply_chat_template(RenderRequest(messages=messages))
    assert "sunny, 21C\n</tool_response>\n<tool_response>\nwindy\n</tool_response>" in prompt


def test_bad_tool_parser_and_arguments_are_invalid(smol):
    with pytest.raises(InvalidArgument, match="tool_parser"):
        smol.apply_chat_template(
            RenderRequest(messages=CONVERSATIONS["one_user"], tools=TOOLS, tool_parser="xml")
        )
    call = {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{x"}}]}
    with pytest.raises(InvalidArgument, match="not JSON"):
        smol.apply_chat_template(RenderRequest(messages=[*CONVERSATIONS["one_user"], call]))
