"""Incremental detokenization and stop strings for one sequence.

Text is decoded over a sliding window of tokens (prefix/read offsets, as TGI and
vLLM do) so a token that ends in the middle of a multi-byte character produces
no text until the character is complete; the emitted deltas concatenate to the
decoded text. Stop strings are searched in the text; text that could be the
start of a stop string is held back until it is known not to be one.
"""

from __future__ import annotations

from typing import Any

REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any, *, skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip)

    def add(self, token_id: int) -> str:
        """New complete text after one more token ('' while a character is incomplete)."""
        self._ids.append(token_id)
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) > len(before) and not after.endswith(REPLACEMENT):
            self._prefix, self._read = self._read, len(self._ids)
            return after[len(before) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character decodes as U+FFFD)."""
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return after[len(before) :]


class TextTracker:
    """The text of one sequence: detokenizes, finds stop strings, decides what may be emitted."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        stop: list[str],
        include_stop_str_in_output: bool,
        skip_special_tokens: bool,
    ) -> None:
        self._detok = IncrementalDetokenizer(tokenizer, skip_special_tokens=skip_special_tokens)
        self._stop = list(stop)
        self._include_stop = include_stop_str_in_output
        self._hold = max((len(s) for s in self._stop), default=1) - 1
        self.text = ""
        self._emitted = 0

    def add(self, token_id: int) -> bool:
        """Add a token; True when a stop string ended the text."""
        start = max(0, len(self.text) - self._hold)
        self.text += self._detok.add(token_id)
        return self._find_stop(start)

    def _find_stop(self, start: int) -> bool:
        hits = [(self.text.find(s, start), s) for s in self._stop]
        hits = [(at, s) for at, s in hits if at >= 0]
        if not hits:
            return False
        at, stop = min(hits)
        self.text = self.text[: at + (len(stop) if self._include_stop else 0)]
        return True

    def finish(self) -> bool:
        """The sequence ended without a stop string: release held-back text (True: it held one)."""
        start = max(0, len(self.text) - self._hold)
        self.text += self._detok.flush()
        return self._find_stop(start)

    def take(self, final: bool) -> str:
        """Text not yet emitted; while running, keep back what may begin a stop string."""
        end = (
            len(self.text)
            if final or not self._stop
            else max(self._emitted, len(self.text) - self._hold)
        )
        delta = self.text[self._emitted : end]
        self._emitted = end
        return delta
