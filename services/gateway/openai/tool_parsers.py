"""Tool calls read out of generated text, whole or while it streams (docs/protocol.md, "Tool
calling"; the formats: services/common/tool_format.py).

Each reader is a function `(text, final) -> Snapshot`: the content and the calls the text holds
as far as can be told yet. `final` says the text is complete; before that, text that may still
become a call (a partial `<tool_call>` tag, a `[` that may open a list of calls) is held back.
As a text grows, its snapshots only grow: content by appending, calls by appending calls and
appending to the last call's arguments. `ToolCallStream` turns successive snapshots into
OpenAI deltas: a call's id and name first, then its arguments as they are generated.

- `hermes`: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks; the text outside
  them is content. Arguments stream character by character (the raw JSON text of the object).
  A block whose JSON does not parse stays in the content.
- `pythonic`: a Python list of calls, `[f(a=1), g(b="x")]`, as the whole answer; anything else is
  content. Arguments stream one keyword argument at a time, as JSON
  (`{"a": 1, "b": "x"}`); values are Python literals (JSON's true/false/null are read too).
- `json`: the answer of a forced tool choice (openai/tools.py): one call object, or a list of
  them, as JSON.
"""

from __future__ import annotations

import ast
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from services.common.tool_format import HERMES, PYTHONIC

FORCED = "json"
_DECODER = json.JSONDecoder()
_WHITESPACE = " \t\r\n"
OPEN, CLOSE = "<tool_call>", "</tool_call>"
_NAME = re.compile(r"[A-Za-z_][\w.\-]*")
_KEY = re.compile(r"[A-Za-z_]\w*")


@dataclass
class CallSnapshot:
    name: str
    arguments: str  # JSON text so far: a prefix of the complete arguments


@dataclass
class Snapshot:
    content: str
    calls: list[CallSnapshot] = field(default_factory=list)


def _skip(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WHITESPACE:
        i += 1
    return i


# -- JSON call objects ----------------------------------------------------------


def _fields(text: str, start: int) -> tuple[dict[str, int], int | None]:
    """The top-level keys of the JSON object opening at `text[start]` with where each value
    starts, as far as the text goes, and the object's end when it is complete."""
    fields: dict[str, int] = {}
    depth, i, in_string = 0, start, False
    key_start: int | None = None
    expect_key, key = False, None
    while i < len(text):
        char = text[i]
        if in_string:
            if char == "\\":
                i += 2
                continue
            if char == '"':
                in_string = False
                if key_start is not None:
                    try:
                        key = json.loads(text[key_start : i + 1])
                    except json.JSONDecodeError:
                        key = None
                    key_start = None
        elif char == '"':
            in_string = True
            if depth == 1 and expect_key:
                key_start, expect_key = i, False
        elif char in "{[":
            depth += 1
            expect_key = depth == 1
        elif char in "}]":
            depth -= 1
            if depth == 0:
                return fields, i + 1
        elif depth == 1 and char == ":" and key is not None:
            fields[key] = _skip(text, i + 1)
            key = None
        elif depth == 1 and char == ",":
            expect_key = True
        i += 1
    return fields, None


def _arguments(text: str, at: int, complete: bool) -> str:
    if at >= len(text):
        return "{}" if complete else ""
    try:
        value, stop = _DECODER.raw_decode(text, at)
    except ValueError:
        # still being written: an object's text so far is a prefix of its final text
        return text[at:] if text[at] == "{" and not complete else ""
    return value if isinstance(value, str) else text[at:stop]


def _call(text: str, start: int) -> tuple[CallSnapshot | None, int | None]:
    """The call in the JSON object at `text[start]` once its name is known, and the object's
    end when it is complete."""
    fields, end = _fields(text, start)
    at = fields.get("name")
    try:
        name = _DECODER.raw_decode(text, at)[0] if at is not None else None
    except ValueError:
        name = None
    if not isinstance(name, str) or not name:
        return None, end
    at = fields.get("arguments", fields.get("parameters"))
    if at is None:
        return CallSnapshot(name, "{}" if end is not None else ""), end
    return CallSnapshot(name, _arguments(text, at, end is not None)), end


def _held(tail: str, marker: str) -> str:
    """`tail` less an ending that may be the start of `marker`."""
    for size in range(min(len(marker) - 1, len(tail)), 0, -1):
        if tail.endswith(marker[:size]):
            return tail[:-size]
    return tail


def hermes(text: str, final: bool) -> Snapshot:
    content: list[str] = []
    calls: list[CallSnapshot] = []
    i = 0
    while True:
        start = text.find(OPEN, i)
        if start < 0:
            content.append(text[i:] if final else _held(text[i:], OPEN))
            break
        content.append(text[i:start])
        close = text.find(CLOSE, start)
        inside = text[: close if close >= 0 else len(text)]
        body = _skip(inside, start + len(OPEN))
        call, end = _call(inside, body) if inside[body : body + 1] == "{" else (None, None)
        if close < 0:
            if call is not None:
                calls.append(call)
            elif final:
                content.append(text[start:])
            break
        if call is not None and end is not None:
            calls.append(call)
        else:
            content.append(text[start : close + len(CLOSE)])
        i = close + len(CLOSE)
    return Snapshot("".join(content).strip(), calls)


def forced_json(text: str, final: bool) -> Snapshot:
    calls: list[CallSnapshot] = []
    i = _skip(text, 0)
    listed = text[i : i + 1] == "["
    if listed:
        i = _skip(text, i + 1)
    while text[i : i + 1] == "{":
        call, end = _call(text, i)
        if call is not None:
            calls.append(call)
        if end is None or not listed:
            break
        i = _skip(text, end)
        if text[i : i + 1] == ",":
            i = _skip(text, i + 1)
    return Snapshot(text.strip() if final and not calls else "", calls)


# -- pythonic -------------------------------------------------------------------


class _Invalid(Exception):
    """The text is not (the start of) a list of calls."""


_NAMES = {"true": True, "false": False, "null": None}


def _literal(node: ast.expr) -> object:
    if isinstance(node, ast.Constant) and not isinstance(node.value, bytes | complex):
        return node.value
    if isinstance(node, ast.Name) and node.id in _NAMES:
        return _NAMES[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        value = _literal(node.operand)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return -value
    if isinstance(node, ast.List | ast.Tuple):
        return [_literal(item) for item in node.elts]
    if isinstance(node, ast.Dict):
        out = {}
        for key, value in zip(node.keys, node.values, strict=True):
            name = _literal(key) if key is not None else None
            if not isinstance(name, str):
                raise _Invalid
            out[name] = _literal(value)
        return out
    raise _Invalid


def _value_end(text: str, i: int) -> int | None:
    """Where the argument value starting at `i` ends (a `,` or `)` outside brackets and
    strings), or None when the text ends first."""
    depth, quote = 0, ""
    while i < len(text):
        char = text[i]
        if quote:
            if char == "\\":
                i += 1
            elif char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            if depth == 0:
                if char != ")":
                    raise _Invalid
                return i
            depth -= 1
        elif char == "," and depth == 0:
            return i
        i += 1
    return None


@dataclass
class _PythonicCall:
    name: str
    pieces: list[str] = field(default_factory=list)
    closed: bool = False

    def snapshot(self) -> CallSnapshot:
        if self.closed:
            return CallSnapshot(self.name, "{" + ", ".join(self.pieces) + "}")
        return CallSnapshot(self.name, "{" + ", ".join(self.pieces) if self.pieces else "")


def _token(pattern: re.Pattern[str], text: str, i: int) -> str | None:
    """The name at `i`; None when the text ends inside it; _Invalid when there is none."""
    match = pattern.match(text, i)
    if match is None:
        if i >= len(text):
            return None
        raise _Invalid
    return None if match.end() == len(text) else match.group()


def _name_then(pattern: re.Pattern[str], text: str, i: int, follow: str) -> tuple[str, int] | None:
    """The name at `i` (after whitespace) and the index just past the `follow` character
    behind it; None when the text ends first; _Invalid when they are not there."""
    i = _skip(text, i)
    name = _token(pattern, text, i)
    if name is None:
        return None
    i = _skip(text, i + len(name))
    if i >= len(text):
        return None
    if text[i] != follow:
        raise _Invalid
    return name, i + 1


def _pythonic_calls(text: str, i: int, calls: list[_PythonicCall]) -> int | None:
    """Read calls from `text[i]` (just after the `[`) into `calls`; the index after the
    closing `]`, or None when the text ends first. _Invalid at the first thing that is not."""
    while True:
        named = _name_then(_NAME, text, i, "(")
        if named is None:
            return None
        call = _PythonicCall(named[0])
        calls.append(call)
        i = named[1]
        while not call.closed:
            i = _skip(text, i)
            if i >= len(text):
                return None
            if text[i] == ")":
                call.closed = True
                i += 1
                break
            keyed = _name_then(_KEY, text, i, "=")
            if keyed is None:
                return None
            key, start = keyed
            end = _value_end(text, start)
            if end is None:
                return None
            try:
                value = _literal(ast.parse(text[start:end].strip(), mode="eval").body)
            except (SyntaxError, ValueError):
                raise _Invalid from None
            call.pieces.append(json.dumps(key) + ": " + json.dumps(value, ensure_ascii=False))
            i = end + 1
            call.closed = text[end] == ")"
        i = _skip(text, i)
        if i >= len(text):
            return None
        if text[i] == "]":
            return i + 1
        if text[i] != ",":
            raise _Invalid
        i += 1


def pythonic(text: str, final: bool) -> Snapshot:
    start = _skip(text, 0)
    if text[start : start + 1] != "[":
        return Snapshot(text.strip() if final or start < len(text) else "")
    calls: list[_PythonicCall] = []
    try:
        end = _pythonic_calls(text, start + 1, calls)
        rest = text[end:] if end is not None else ""
    except _Invalid:
        if not calls:
            return Snapshot(text.strip())
        rest = text  # a broken list after a call: the whole text also goes to the content
    if not calls and not final:
        return Snapshot("")
    if not calls:
        return Snapshot(text.strip())
    return Snapshot(rest.strip(), [call.snapshot() for call in calls])


READERS: dict[str, Callable[[str, bool], Snapshot]] = {
    HERMES: hermes,
    PYTHONIC: pythonic,
    FORCED: forced_json,
}


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class ToolCallDelta:
    """One streamed `tool_calls` entry: the first of a call has its id and name."""

    index: int
    arguments: str = ""
    id: str | None = None
    name: str | None = None

    def openai(self) -> dict[str, object]:
        function: dict[str, str] = {"arguments": self.arguments}
        entry: dict[str, object] = {"index": self.index}
        if self.id is not None:
            entry["id"], entry["type"] = self.id, "function"
            function = {"name": self.name or "", **function}
        entry["function"] = function
        return entry


class ToolCallStream:
    """One choice's generated text, fed as it streams, out as content and call deltas."""

    def __init__(self, reader: str) -> None:
        self.read = READERS[reader]
        self.text = ""
        self.content = ""
        self.calls: list[list[str]] = []  # [id, name, arguments sent]

    def feed(self, text: str, *, final: bool = False) -> tuple[str, list[ToolCallDelta]]:
        self.text += text
        snapshot = self.read(self.text, final)
        content = ""
        if snapshot.content.startswith(self.content):
            content = snapshot.content[len(self.content) :]
            self.content = snapshot.content
        deltas = []
        for index, call in enumerate(snapshot.calls):
            if index == len(self.calls):
                self.calls.append([call_id(), call.name, ""])
                deltas.append(ToolCallDelta(index, id=self.calls[index][0], name=call.name))
            sent = self.calls[index][2]
            if len(call.arguments) > len(sent) and call.arguments.startswith(sent):
                more = call.arguments[len(sent) :]
                if deltas and deltas[-1].index == index:
                    deltas[-1].arguments += more
                else:
                    deltas.append(ToolCallDelta(index, more))
                self.calls[index][2] = call.arguments
        return content, deltas


def parse_answer(reader: str, text: str) -> tuple[str, list[tuple[str, str, str]]]:
    """A whole answer's content and calls (id, name, arguments)."""
    stream = ToolCallStream(reader)
    content, _ = stream.feed(text, final=True)
    return content, [(i, name, arguments) for i, name, arguments in stream.calls]
