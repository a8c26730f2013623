"""The tool-call readers (services/gateway/openai/tool_parsers.py): whole answers, and the same
answers streamed in pieces of every size, which must add up to the whole answer's content and
calls, stream arguments before a call is complete, and never leak call markup into content."""

from __future__ import annotations

import json

import pytest

from services.gateway.openai.tool_parsers import ToolCallStream, parse_answer

HERMES_ANSWER = (
    "Let me look.\n<tool_call>\n"
    '{"name": "get_weather", "arguments": {"city": "Pa}ris \\"x\\"", "days": [1, 2]}}\n'
    "</tool_call>\n<tool_call>"
    '{"arguments": {}, "name": "now"}</tool_call>\n'
)
PYTHONIC_ANSWER = '[get_weather(city="Paris", days=[1, 2], metric=True), now(), f(x={"a": null})]'
FORCED_ANSWER = '[{"name": "a", "arguments": {"q": "x,y"}}, {"name": "b", "arguments": {}}]'


def streamed(reader: str, text: str, size: int) -> tuple[str, list[dict], list[str]]:
    """(content, calls, content deltas) of `text` fed `size` characters at a time."""
    stream = ToolCallStream(reader)
    content, pieces, calls = "", [], []
    for start in range(0, len(text) + 1, size):
        end = start + size
        piece, deltas = stream.feed(text[start:end], final=end > len(text))
        content += piece
        pieces.append(piece)
        for delta in deltas:
            if delta.id is not None:
                assert delta.index == len(calls) and delta.name
                calls.append({"id": delta.id, "name": delta.name, "arguments": ""})
            calls[delta.index]["arguments"] += delta.arguments
    return content, calls, pieces


def whole(reader: str, text: str) -> tuple[str, list[dict]]:
    content, calls = parse_answer(reader, text)
    return content, [{"name": name, "arguments": args} for _, name, args in calls]


def test_hermes_whole_answer():
    content, calls = whole("hermes", HERMES_ANSWER)
    assert content == "Let me look."
    assert [c["name"] for c in calls] == ["get_weather", "now"]
    assert json.loads(calls[0]["arguments"]) == {"city": 'Pa}ris "x"', "days": [1, 2]}
    assert json.loads(calls[1]["arguments"]) == {}


@pytest.mark.parametrize("reader", ["hermes", "pythonic", "json"])
@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 1000])
def test_streamed_pieces_add_up_to_the_whole_answer(reader, size):
    text = {"hermes": HERMES_ANSWER, "pythonic": PYTHONIC_ANSWER, "json": FORCED_ANSWER}[reader]
    content, calls = whole(reader, text)
    got_content, got_calls, pieces = streamed(reader, text, size)
    assert got_content == content
    assert [{k: c[k] for k in ("name", "arguments")} for c in got_calls] == calls
    assert len({c["id"] for c in got_calls}) == len(calls)
    assert not any("<tool" in piece or "{" in piece for piece in pieces)


def test_hermes_streams_arguments_before_the_call_is_complete():
    stream = ToolCallStream("hermes")
    text = '<tool_call>{"name": "f", "arguments": {"text": "a long value'
    _, deltas = stream.feed(text)
    assert deltas[0].name == "f" and deltas[0].arguments == '{"text": "a long value'
    _, deltas = stream.feed(' goes on"}}</tool_call>', final=True)
    assert deltas[0].id is None and deltas[0].arguments == ' goes on"}'


def test_pythonic_streams_one_argument_at_a_time():
    stream = ToolCallStream("pythonic")
    _, deltas = stream.feed('[f(a=1, b="x')
    assert deltas[0].name == "f" and deltas[0].arguments == '{"a": 1'
    _, deltas = stream.feed('y")]', final=True)
    assert deltas[0].arguments == ', "b": "xy"}'


@pytest.mark.parametrize(
    ("reader", "text", "content"),
    [
        ("hermes", "Paris is the capital.", "Paris is the capital."),
        (
            "hermes",
            "<tool_call>{not json</tool_call> then",
            "<tool_call>{not json</tool_call> then",
        ),
        ("hermes", "a <tool_cal", "a <tool_cal"),
        ("pythonic", "[1, 2, 3]", "[1, 2, 3]"),
        ("pythonic", "Sure: [f(a=1)]", "Sure: [f(a=1)]"),
        ("pythonic", "[Note] this is prose", "[Note] this is prose"),
        ("json", "not a call", "not a call"),
    ],
)
def test_text_without_calls_is_content(reader, text, content):
    assert whole(reader, text) == (content, [])
    assert streamed(reader, text, 1)[:2] == (content, [])


def test_partial_markup_is_held_back_until_it_is_known():
    stream = ToolCallStream("hermes")
    assert stream.feed("Hi <tool")[0] == "Hi"
    assert stream.feed(" box", final=True)[0] == " <tool box"


def test_a_call_cut_off_by_the_length_limit_keeps_what_was_generated():
    content, calls = whole("hermes", '<tool_call>{"name": "f", "arguments": {"a": 1')
    assert content == "" and calls == [{"name": "f", "arguments": '{"a": 1'}]


def test_pythonic_reads_python_and_json_literals():
    _, calls = whole("pythonic", "[f(a=-2.5, b=None, c=false, d=(1, 'two'))]")
    assert json.loads(calls[0]["arguments"]) == {"a": -2.5, "b": None, "c": False, "d": [1, "two"]}


def test_forced_single_object():
    content, calls = whole("json", '{"name": "get_weather", "arguments": {"city": "Paris"}}')
    assert content == "" and calls == [{"name": "get_weather", "arguments": '{"city": "Paris"}'}]
