"""OpenAI `response_format` and vLLM's structured-output request fields → the engines'
`structured_outputs` sampling parameter (vLLM's `StructuredOutputsParams` fields, docs/protocol.md).

- `response_format: {"type": "json_object"}` → `json_object`; `{"type": "json_schema",
  "json_schema": {"name", "schema", "strict"}}` → `json` (the schema is enforced whether or not
  `strict` is set, as vLLM does); `text` → nothing.
- vLLM's `structured_outputs` object (`json`, `regex`, `choice`, `grammar`, `json_object`,
  `disable_any_whitespace`) and the older `guided_json` / `guided_regex` / `guided_choice` /
  `guided_grammar` fields pass through.

Checked here, before any engine work, each a 400 naming the request field (`param`): more than one
source of constraint, a malformed `response_format`, a schema that is not a JSON object, or one
deeper than `MAX_SCHEMA_DEPTH` or larger than `MAX_SCHEMA_BYTES`. Whether a schema, regex or
grammar compiles is decided by the engine's grammar library; its refusal names the field too
(`with_param`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from services.common.errors import InvalidArgument
from services.gateway.openai.protocol import SamplingFields

MAX_SCHEMA_DEPTH = 32
MAX_SCHEMA_BYTES = 64 * 1024
GUIDED = {
    "guided_json": "json",
    "guided_regex": "regex",
    "guided_choice": "choice",
    "guided_grammar": "grammar",
}


def _depth(value: Any) -> int:
    """Nesting depth of a JSON value, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        children = (
            item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        )
        stack.extend((child, level + 1) for child in children)
    return deepest


def checked_schema(value: Any, param: str) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise InvalidArgument(f"'{param}' is not valid JSON ({error})", param=param) from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"'{param}' must be a JSON schema object", param=param)
    size = len(json.dumps(value))
    if size > MAX_SCHEMA_BYTES:
        raise InvalidArgument(
            f"'{param}' is {size} bytes; the limit is {MAX_SCHEMA_BYTES}", param=param
        )
    depth = _depth(value)
    if depth > MAX_SCHEMA_DEPTH:
        raise InvalidArgument(
            f"'{param}' nests {depth} levels deep; the limit is {MAX_SCHEMA_DEPTH}", param=param
        )
    return value


def _from_response_format(response_format: dict[str, Any]) -> dict[str, Any] | None:
    kind = response_format.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return {"json_object": True}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or "schema" not in spec:
            raise InvalidArgument(
                "'response_format.json_schema' must be an object with a 'schema'",
                param="response_format.json_schema",
            )
        return {"json": checked_schema(spec["schema"], "response_format.json_schema.schema")}
    raise InvalidArgument(
        f"response_format type '{kind}' is not supported (text, json_object, json_schema)",
        param="response_format.type",
    )


def structured_outputs(request: SamplingFields) -> tuple[dict[str, Any] | None, str | None]:
    """(the `structured_outputs` parameter, the request field it came from) or (None, None)."""
    sources: list[tuple[str, dict[str, Any]]] = []
    if request.response_format is not None:
        spec = _from_response_format(request.response_format)
        if spec is not None:
            sources.append(("response_format", spec))
    if request.structured_outputs is not None:
        spec = dict(request.structured_outputs)
        if spec.get("json") is not None:
            spec["json"] = checked_schema(spec["json"], "structured_outputs.json")
        sources.append(("structured_outputs", spec))
    for name, key in GUIDED.items():
        value = getattr(request, name)
        if value is not None:
            if key == "json":
                value = checked_schema(value, name)
            sources.append((name, {key: value}))
    if not sources:
        return None, None
    if len(sources) > 1:
        names = ", ".join(name for name, _ in sources)
        raise InvalidArgument(
            f"give one structured-output constraint, not several ({names})", param=sources[1][0]
        )
    return sources[0][1], sources[0][0]


@contextmanager
def with_param(param: str | None) -> Iterator[None]:
    """An engine's refusal of the constraint (it does not compile) names the request field."""
    try:
        yield
    except InvalidArgument as error:
        if param is not None and error.param is None and "structured_outputs" in error.message:
            error.param = param
        raise
