"""A chat request's `tools` and `tool_choice`: what the tokenizer renders, how the answer is read,
and what forces a call (docs/protocol.md, "Tool calling").

- `tool_choice` `"auto"` (the default with tools): the tools are rendered and the answer is read
  with the model's `tool_parser` (model list); the model decides whether to call.
- `"none"`: no tools are rendered and the answer is plain content.
- `"required"` or `{"type": "function", "function": {"name": ...}}`: the answer is forced with a
  structured-output JSON schema to be a call of a listed function (the named one) with
  arguments valid for its `parameters`: `{"name": ..., "arguments": {...}}` for a named
  function, a list of such objects (at least one; one with `parallel_tool_calls: false`) for
  `"required"`, written without free whitespace (fewer tokens, and a model cannot pad the JSON
  with whitespace until `max_tokens`). That JSON is read by the `json` reader of
  openai/tool_parsers.py.

Checked before any engine work, each a 400 naming the field (`param`): malformed `tools`, a
`tool_choice` that is not one of the above or names a function not in `tools`, `tool_choice`
without `tools`, `tools` for a model whose entry has no `tool_parser`, and a forced choice
together with another structured-output constraint.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from services.common.errors import InvalidArgument
from services.gateway.openai.protocol import (
    ChatCompletionRequest,
    ChatResponseMessage,
    FunctionCall,
    ToolCall,
)
from services.gateway.openai.structured import checked_schema
from services.gateway.openai.tool_parsers import FORCED, parse_answer

_FUNCTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


@dataclass
class ToolPlan:
    """What a chat request's tools mean for its rendering, decoding and answer."""

    tools: list[dict[str, Any]] | None = None  # rendered into the prompt
    tool_parser: str | None = None  # the model's format, for templates without tools
    reader: str | None = None  # how the answer is read (tool_parsers.READERS); None: content
    structured: dict[str, Any] | None = None  # the constraint that forces a call


def _functions(tools: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Function name → parameters schema, each tool checked."""
    out: dict[str, dict[str, Any]] = {}
    for index, tool in enumerate(tools):
        where = f"tools[{index}]"
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            raise InvalidArgument(f"'{where}' must be a function tool", param=f"{where}.type")
        function = tool.get("function")
        if not isinstance(function, dict):
            raise InvalidArgument(
                f"'{where}.function' must be an object with a 'name'", param=f"{where}.function"
            )
        name = function.get("name")
        if not isinstance(name, str) or not _FUNCTION_NAME.fullmatch(name):
            raise InvalidArgument(
                f"'{where}.function.name' must be 1-64 letters, digits, '_' or '-', got {name!r}",
                param=f"{where}.function.name",
            )
        if name in out:
            raise InvalidArgument(
                f"function '{name}' is listed twice in 'tools'", param=f"{where}.function.name"
            )
        description = function.get("description")
        if description is not None and not isinstance(description, str):
            raise InvalidArgument(
                f"'{where}.function.description' must be a string",
                param=f"{where}.function.description",
            )
        parameters = function.get("parameters")
        out[name] = (
            _NO_PARAMETERS
            if parameters is None
            else checked_schema(parameters, f"{where}.function.parameters")
        )
    return out


def _choice(tool_choice: str | dict[str, Any] | None, names: set[str]) -> str:
    """ "auto", "none", "required", or the named function."""
    if tool_choice is None:
        return "auto"
    if isinstance(tool_choice, str):
        if tool_choice not in ("auto", "none", "required"):
            raise InvalidArgument(
                f"'tool_choice' must be 'auto', 'none', 'required' or a named function, "
                f"got '{tool_choice}'",
                param="tool_choice",
            )
        return tool_choice
    function = tool_choice.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    if tool_choice.get("type") != "function" or not isinstance(name, str):
        raise InvalidArgument(
            '\'tool_choice\' as an object must be {"type": "function", "function": {"name": ...}}',
            param="tool_choice",
        )
    if name not in names:
        listed = ", ".join(sorted(names))
        raise InvalidArgument(
            f"'tool_choice' names function '{name}', which is not in 'tools' ({listed})",
            param="tool_choice",
        )
    return name


def _call_schema(name: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"name": {"type": "string", "enum": [name]}, "arguments": parameters},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def plan_tools(
    request: ChatCompletionRequest,
    tool_parser: str | None,
    *,
    model: str,
    constrained: str | None,
) -> ToolPlan:
    """`constrained`: the request field of another structured-output constraint, if any."""
    if not request.tools:
        if request.tool_choice not in (None, "none", "auto"):
            raise InvalidArgument("'tool_choice' needs 'tools'", param="tool_choice")
        return ToolPlan()
    functions = _functions(request.tools)
    choice = _choice(request.tool_choice, set(functions))
    if choice == "none":
        return ToolPlan()
    if tool_parser is None:
        raise InvalidArgument(
            f"model '{model}' has no tool parser configured ('tool_parser' in its model list "
            "entry), so it cannot be given 'tools'",
            param="tools",
        )
    plan = ToolPlan(tools=request.tools, tool_parser=tool_parser, reader=tool_parser)
    if choice == "auto":
        return plan
    if constrained is not None:
        raise InvalidArgument(
            f"a forced 'tool_choice' cannot be combined with '{constrained}'", param="tool_choice"
        )
    plan.reader = FORCED
    if choice == "required":
        calls = [_call_schema(name, parameters) for name, parameters in functions.items()]
        items: dict[str, Any] = {"type": "array", "items": {"anyOf": calls}, "minItems": 1}
        if request.parallel_tool_calls is False:
            items["maxItems"] = 1
        plan.structured = {"json": items, "disable_any_whitespace": True}
    else:
        schema = _call_schema(choice, functions[choice])
        plan.structured = {"json": schema, "disable_any_whitespace": True}
    return plan


def finish_reason(reason: str | None, called: bool) -> str | None:
    """A generation that stopped after calling tools finished with `tool_calls`."""
    return "tool_calls" if called and reason == "stop" else reason


def answer_message(
    plan: ToolPlan, text: str, reason: str | None
) -> tuple[ChatResponseMessage, str | None]:
    """A whole answer as the assistant message (content, tool calls) and its finish reason."""
    if plan.reader is None:
        return ChatResponseMessage(content=text), reason
    content, calls = parse_answer(plan.reader, text)
    message = ChatResponseMessage(
        content=content or (None if calls else content),
        tool_calls=[
            ToolCall(id=id_, function=FunctionCall(name=name, arguments=arguments))
            for id_, name, arguments in calls
        ],
    )
    return message, finish_reason(reason, bool(calls))
