"""OpenAI chat messages → the message dicts Hugging Face chat templates expect.

As vLLM does for string-content templates: text parts are joined with a
newline, a missing content becomes "", and tool-call `arguments` given as a
JSON string are parsed into an object (templates index into them).
"""

from __future__ import annotations

import json
from typing import Any

from services.common.errors import InvalidArgument
from services.gateway.openai.protocol import ChatMessage


def _text_content(index: int, content: str | list[dict[str, Any]] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        kind = part.get("type")
        if kind not in ("text", "input_text"):
            raise InvalidArgument(
                f"messages[{index}]: content part type '{kind}' is not supported (text only)"
            )
        text = part.get("text")
        if not isinstance(text, str):
            raise InvalidArgument(f"messages[{index}]: a text content part needs a string 'text'")
        texts.append(text)
    return "\n".join(texts)


def _tool_call(index: int, call: dict[str, Any]) -> dict[str, Any]:
    call = dict(call)
    function = dict(call.get("function") or {})
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            function["arguments"] = json.loads(arguments) if arguments else {}
        except json.JSONDecodeError:
            raise InvalidArgument(
                f"messages[{index}]: tool call arguments are not valid JSON"
            ) from None
    if function:
        call["function"] = function
    return call


def hf_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    out = []
    for index, message in enumerate(messages):
        item: dict[str, Any] = {k: v for k, v in message.model_dump(exclude_none=True).items()}
        item["content"] = _text_content(index, message.content)
        if message.tool_calls:
            item["tool_calls"] = [_tool_call(index, call) for call in message.tool_calls]
        out.append(item)
    return out
