"""How tool calls are written as text: the contract between the tokenizer (which writes tools
and earlier calls into prompts) and the gateway (which reads calls out of generated text).

A model's format is its model list entry's `tool_parser` (docs/protocol.md, "Tool calling"):

- `hermes`: each call is a `<tool_call>` block holding a JSON object with the function's
  `name` and its `arguments`: `<tool_call>\\n{"name": "f", "arguments": {"a": 1}}\\n</tool_call>`.
  A function's result goes back in a `<tool_response>` block.
- `pythonic`: the whole answer is a Python list of calls with keyword arguments:
  `[f(a=1), g(b="x")]`.

A chat template that takes `tools` renders them itself. One that takes none gets them from
`tool_system_prompt` at the head of its system message, earlier calls written into the
assistant's content (`call_text`), and tool results as user messages (`tool_response_text`):
the template then needs only the plain roles.
"""

from __future__ import annotations

import json
from typing import Any

HERMES, PYTHONIC = "hermes", "pythonic"
#: The `tool_parser` values a model list accepts.
TOOL_PARSERS = (HERMES, PYTHONIC)


def _pythonic_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, dict):
        items = ", ".join(f"{_pythonic_value(k)}: {_pythonic_value(v)}" for k, v in value.items())
        return "{" + items + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_pythonic_value(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def call_text(parser: str, calls: list[tuple[str, dict[str, Any]]]) -> str:
    """Calls (name, arguments) as the model writes them in `parser`'s format."""
    if parser == PYTHONIC:
        written = [
            f"{name}(" + ", ".join(f"{k}={_pythonic_value(v)}" for k, v in args.items()) + ")"
            for name, args in calls
        ]
        return "[" + ", ".join(written) + "]"
    return "\n".join(
        "<tool_call>\n"
        + json.dumps({"name": name, "arguments": args}, ensure_ascii=False)
        + "\n</tool_call>"
        for name, args in calls
    )


def tool_response_text(content: str) -> str:
    """A tool's result as the user message that carries it to a template without tools."""
    return f"<tool_response>\n{content}\n</tool_response>"


def tool_system_prompt(parser: str, tools: list[dict[str, Any]]) -> str:
    """The tools and how to call them, for the system message of a template without tools."""
    listed = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
    if parser == PYTHONIC:
        how = (
            "To call functions, answer with only a Python list of calls with keyword "
            "arguments, for example:\n[function_name(argument=value, other=value)]"
        )
    else:
        how = (
            "To call a function, answer with a <tool_call></tool_call> block per call, each "
            'holding a JSON object with the function\'s "name" and its "arguments":\n'
            '<tool_call>\n{"name": "function_name", "arguments": {"argument": "value"}}\n'
            "</tool_call>"
        )
    return (
        "You can call functions. The available functions, one JSON object per line:\n"
        f"{listed}\n{how}\nA function's result comes back in a "
        "<tool_response></tool_response> block."
    )
