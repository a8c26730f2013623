"""Request limits of the gateway: what a body may hold before any work is done for it.

Two layers, each a documented setting (docs/protocol.md lists them all):

- `check_json_body` is the byte-level check every JSON body passes before a router parses
  it (`JsonBodyMiddleware` calls it for every route family alike): strict UTF-8, and
  nesting no deeper than `max_json_depth`. Python's JSON decoder recurses, so a body of
  10,000 nested arrays would otherwise end in a RecursionError (a 500); the depth is
  measured on the raw bytes (string contents removed, brackets counted with numpy), not by
  decoding first, and only for a body that holds more opening brackets than the limit (the
  usual body holds a handful: counting them is two C scans, the depth a regex and numpy pass).
- `RequestLimits` holds the per-request content limits (inputs, prompt length, `n`, stop
  strings, requested outputs); the serving layers call it before tokenizing.

Every violation is an `InvalidArgument` (400) that names the limit and its setting.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.common.errors import InvalidArgument
from services.gateway.settings import GatewaySettings

# A JSON string literal (escapes included), unrolled so long strings do not backtrack.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_OPEN = np.frombuffer(b"[{", dtype=np.uint8)
_CLOSE = np.frombuffer(b"]}", dtype=np.uint8)


def json_depth(raw: bytes) -> int:
    """The deepest array/object nesting of a JSON text (brackets inside strings do not count)."""
    if b"[" not in raw and b"{" not in raw:
        return 0
    stripped = np.frombuffer(_STRING.sub(b'""', raw), dtype=np.uint8)
    steps = np.isin(stripped, _OPEN).astype(np.int8) - np.isin(stripped, _CLOSE).astype(np.int8)
    steps = steps[steps != 0]
    if steps.size == 0:
        return 0
    return int(np.cumsum(steps, dtype=np.int32).max())


def check_json_body(raw: bytes, *, max_depth: int) -> None:
    """A body a router may hand to `json.loads`: UTF-8, and not nested deeper than
    `max_depth`. Whether it is JSON at all is the router's parse to find out (also a 400)."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidArgument(
            f"the request body is not valid UTF-8 (byte {error.start}: {error.reason})"
        ) from None
    if raw.count(b"[") + raw.count(b"{") <= max_depth:
        return  # no nesting can be deeper than the brackets the text holds
    depth = json_depth(raw)
    if depth > max_depth:
        raise InvalidArgument(
            f"the request body nests {depth} levels deep; the limit is {max_depth} "
            "(--max_json_depth)"
        )


def _prompt_chars(content: Any) -> int:
    """Characters of a chat message's content: a string, or text parts."""
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(_prompt_chars(part.get("text")) for part in content if isinstance(part, dict))
    return 0


@dataclass(frozen=True)
class RequestLimits:
    max_inputs: int
    max_prompt_chars: int
    max_n: int
    max_stop_sequences: int
    max_requested_outputs: int

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> RequestLimits:
        return cls(
            max_inputs=settings.max_inputs,
            max_prompt_chars=settings.max_prompt_chars,
            max_n=settings.max_n,
            max_stop_sequences=settings.max_stop_sequences,
            max_requested_outputs=settings.max_requested_outputs,
        )

    def inputs(self, count: int) -> None:
        if count > self.max_inputs:
            raise InvalidArgument(
                f"the request holds {count} inputs; the limit is {self.max_inputs} (--max_inputs)"
            )

    def prompt(self, chars: int) -> None:
        if chars > self.max_prompt_chars:
            raise InvalidArgument(
                f"the prompt is {chars} characters long; the limit is {self.max_prompt_chars} "
                "(--max_prompt_chars)"
            )

    def chat_prompt(self, messages: list[Any]) -> None:
        self.prompt(sum(_prompt_chars(getattr(m, "content", None)) for m in messages))

    def sampling(self, *, n: int, best_of: int | None, stop: str | list[str] | None) -> None:
        for name, value in (("n", n), ("best_of", best_of)):
            if value is not None and value > self.max_n:
                raise InvalidArgument(f"'{name}' is {value}; the limit is {self.max_n} (--max_n)")
        count = 0 if stop is None else 1 if isinstance(stop, str) else len(stop)
        if count > self.max_stop_sequences:
            raise InvalidArgument(
                f"'stop' holds {count} sequences; the limit is {self.max_stop_sequences} "
                "(--max_stop_sequences)"
            )

    def requested_outputs(self, count: int) -> None:
        if count > self.max_requested_outputs:
            raise InvalidArgument(
                f"the request names {count} outputs; the limit is {self.max_requested_outputs} "
                "(--max_requested_outputs)"
            )
