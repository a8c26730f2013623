"""Tools and tool messages for chat templates that take no `tools` (docs/protocol.md, "Tool
calling").

A template takes tools when its source reads the `tools` variable; it is then given `tools`,
assistant `tool_calls` and `role: tool` messages as they are (transformers' `apply_chat_template`
passes them on). A template that does not would drop them, so the conversation is rewritten
into plain roles in the model's tool format (services/common/tool_format.py): the tools and how
to call them head the system message (one is added when there is none), an assistant's calls
are written into its content, and tool results become user messages in `<tool_response>`
blocks (consecutive results in one message).
"""

from __future__ import annotations

import functools
import json
from typing import Any

import jinja2
import jinja2.meta

from services.common.errors import InvalidArgument
from services.common.tool_format import HERMES, TOOL_PARSERS, call_text, tool_response_text
from services.common.tool_format import tool_system_prompt as system_prompt


@functools.lru_cache(maxsize=64)
def template_takes_tools(template: str) -> bool:
    try:
        parsed = jinja2.Environment().parse(template)
    except jinja2.TemplateSyntaxError as error:
        raise InvalidArgument(f"the chat template does not parse: {error}") from None
    return "tools" in jinja2.meta.find_undeclared_variables(parsed)


def _arguments(index: int, arguments: Any) -> dict[str, Any]:
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments else {}
        except json.JSONDecodeError:
            raise InvalidArgument(f"message {index}: tool call arguments are not JSON") from None
    if not isinstance(arguments, dict):
        raise InvalidArgument(f"message {index}: tool call arguments must be a JSON object")
    return arguments


def _calls(index: int, calls: list[Any]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for call in calls:
        function = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidArgument(f"message {index}: each tool call needs a function 'name'")
        out.append((function["name"], _arguments(index, function.get("arguments"))))
    return out


def plain_roles(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, parser: str | None
) -> list[dict[str, Any]]:
    """The conversation for a template without tools (module docstring)."""
    parser = parser or HERMES
    if parser not in TOOL_PARSERS:
        raise InvalidArgument(
            f"'tool_parser' must be one of {', '.join(TOOL_PARSERS)}, got '{parser}'"
        )
    out: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        role, content = message.get("role"), message.get("content") or ""
        if role == "tool":
            text = tool_response_text(str(content))
            if out and out[-1].get("tool_results"):
                out[-1]["content"] += "\n" + text
            else:
                out.append({"role": "user", "content": text, "tool_results": True})
            continue
        item = {k: v for k, v in message.items() if k != "tool_calls"}
        if role == "assistant" and message.get("tool_calls"):
            written = call_text(parser, _calls(index, message["tool_calls"]))
            item["content"] = f"{content}\n{written}" if content else written
        out.append(item)
    for item in out:
        item.pop("tool_results", None)
    if tools:
        prompt = system_prompt(parser, tools)
        if out and out[0].get("role") in ("system", "developer"):
            head = out[0].get("content")
            out[0] = {**out[0], "content": f"{head}\n\n{prompt}" if head else prompt}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out
