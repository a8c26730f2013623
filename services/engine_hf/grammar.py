"""Structured outputs on the HF engine: a per-sequence token mask from a compiled grammar.

The request carries vLLM's `structured_outputs` (in `sampling_parameters`, docs/protocol.md):
exactly one of `json` (a JSON schema, object or string), `json_object` (true: any JSON object),
`regex`, `choice` (a list of strings) or `grammar` (EBNF, xgrammar's dialect), plus
`disable_any_whitespace` (JSON without free whitespace). The older `guided_*` names are read as
their `structured_outputs` fields.

xgrammar is the grammar library (the one vLLM uses by default, installed with it): it compiles
JSON schema, regex and EBNF to a token-level automaton for this tokenizer, and fills a bitmask of
the allowed next tokens per sequence in microseconds, so each row of a batch may have its own
grammar or none. Compiled grammars are cached by their canonical text (`GrammarCache`, LRU), so a
schema is compiled once however many requests use it. Compilation runs off the decoding thread,
when the request arrives; a schema, regex or grammar that does not compile is INVALID_ARGUMENT
naming the field.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any

import torch

from services.common.errors import InvalidArgument
from services.common.llm_tensors import GUIDED_ALIASES, structured_outputs

FIELD = "structured_outputs"
SAMPLING_KEYS = frozenset({FIELD, *GUIDED_ALIASES})  # the extras this module reads
CONSTRAINTS = ("json", "json_object", "regex", "choice", "grammar")
OPTIONS = ("disable_any_whitespace",)
# A schema or grammar larger than this is refused before compiling (docs/protocol.md).
MAX_SPEC_CHARS = 64 * 1024


def constraint(extra: dict[str, Any]) -> tuple[str, str, bool] | None:
    """(kind, canonical text, any whitespace) of the request's constraint, or None."""
    spec = structured_outputs(extra)
    if spec is None:
        return None
    unknown = sorted(k for k, v in spec.items() if k not in (*CONSTRAINTS, *OPTIONS) and v)
    if unknown:
        raise InvalidArgument(f"'{FIELD}.{unknown[0]}' is not supported by the HF engine")
    given = [k for k in CONSTRAINTS if spec.get(k) not in (None, False)]
    if len(given) != 1:
        raise InvalidArgument(
            f"'{FIELD}' needs exactly one of {', '.join(CONSTRAINTS)} (got {given or 'none'})"
        )
    kind, value = given[0], spec[given[0]]
    whitespace = not spec.get("disable_any_whitespace", False)
    if kind == "json":
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as error:
                raise InvalidArgument(f"'{FIELD}.json' is not valid JSON ({error})") from None
        if not isinstance(value, (dict, bool)):
            raise InvalidArgument(f"'{FIELD}.json' must be a JSON schema object")
        text = json.dumps(value, sort_keys=True)
    elif kind == "json_object":
        text = ""
    elif kind == "choice":
        if not isinstance(value, list) or not value or not all(isinstance(c, str) for c in value):
            raise InvalidArgument(f"'{FIELD}.choice' must be a non-empty list of strings")
        text = json.dumps(value, ensure_ascii=False)
    else:
        if not isinstance(value, str) or not value:
            raise InvalidArgument(f"'{FIELD}.{kind}' must be a non-empty string")
        text = value
    if len(text) > MAX_SPEC_CHARS:
        raise InvalidArgument(
            f"'{FIELD}.{kind}' holds {len(text)} characters; the limit is {MAX_SPEC_CHARS}"
        )
    return kind, text, whitespace


class GrammarCache:
    """This model's xgrammar compiler and an LRU of compiled grammars (thread-safe)."""

    def __init__(
        self, tokenizer: Any, *, vocab_size: int, stop_ids: frozenset[int], size: int = 256
    ) -> None:
        import xgrammar as xgr

        self._xgr = xgr
        self.info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=sorted(stop_ids)
        )
        self._compiler = xgr.GrammarCompiler(self.info, max_threads=1, cache_enabled=False)
        self._compiled: OrderedDict[tuple[str, str, bool], Any] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()
        self.compiled_count = 0  # compilations done (cache misses), for tests and metrics

    def compile(self, key: tuple[str, str, bool]) -> Any:
        with self._lock:
            if key in self._compiled:
                self._compiled.move_to_end(key)
                return self._compiled[key]
        grammar = self._compile(*key)
        with self._lock:
            self._compiled[key] = grammar
            self.compiled_count += 1
            while len(self._compiled) > self._size:
                self._compiled.popitem(last=False)
        return grammar

    def _compile(self, kind: str, text: str, whitespace: bool) -> Any:
        compiler = self._compiler
        try:
            if kind in ("json", "json_object"):
                schema = text if kind == "json" else '{"type": "object"}'
                ebnf = xgr_json_grammar(schema, whitespace, strict=kind == "json")
                return compiler.compile_grammar(ebnf)
            if kind == "regex":
                return compiler.compile_regex(text)
            if kind == "choice":
                options = json.loads(text)
                rule = " | ".join(json.dumps(o, ensure_ascii=False) for o in options)
                return compiler.compile_grammar(f"root ::= {rule}")
            return compiler.compile_grammar(text)
        except (RuntimeError, ValueError) as error:
            detail = str(error).strip().splitlines()[-1] if str(error).strip() else "invalid"
            detail = detail.split("] ", 1)[-1]
            raise InvalidArgument(f"'{FIELD}.{kind}' does not compile: {detail}") from None


# xgrammar 0.2.8 writes length-bounded JSON strings (`maxLength`, `minLength`) with a character
# class that lets raw control characters through, which JSON forbids (RFC 8259 §7): a model that
# picks one yields a document no strict parser reads. Its unbounded strings exclude them; the
# bounded ones are rewritten to the same class.
_LAX_STRING_CHAR = '[^\\"\\\\\\r\\n]'
_JSON_STRING_CHAR = '[^\\0-\\x1f\\"\\\\]'


def xgr_json_grammar(schema: str, any_whitespace: bool, *, strict: bool) -> str:
    """The EBNF xgrammar derives from a JSON schema, with strings held to JSON's rules."""
    import xgrammar as xgr

    grammar = xgr.Grammar.from_json_schema(
        schema, any_whitespace=any_whitespace, strict_mode=strict
    )
    return str(grammar).replace(_LAX_STRING_CHAR, _JSON_STRING_CHAR)


def new_matcher(grammar: Any) -> Any:
    """A fresh matcher (one per sequence: it holds the sequence's position in the grammar)."""
    import xgrammar as xgr

    return xgr.GrammarMatcher(grammar)


def apply_masks(logits: torch.Tensor, matchers: list[Any | None]) -> None:
    """Set to -inf the logits of tokens each row's grammar forbids; rows without a grammar
    (None) are left alone. `logits` [B, V] is changed in place."""
    rows = [i for i, m in enumerate(matchers) if m is not None and not m.is_terminated()]
    if not rows:
        return
    import xgrammar as xgr

    bitmask = xgr.allocate_token_bitmask(logits.shape[0], logits.shape[1])
    for i in rows:
        matcher = matchers[i]
        assert matcher is not None
        matcher.fill_next_token_bitmask(bitmask, i)
    xgr.apply_token_bitmask_inplace(logits, bitmask, indices=rows)
