"""Incremental detokenization and stop strings with a real byte-level BPE tokenizer."""

from __future__ import annotations

import pytest

from services.engine_hf.detok import REPLACEMENT, IncrementalDetokenizer, TextTracker

TEXT = "héllo wörld 😀 日本語 — naïve café"


@pytest.fixture(scope="module")
def tokenizer(model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path("tiny-llama"))


def test_deltas_never_split_a_character_and_concatenate_to_the_text(tokenizer):
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    # The tokenizer really does split characters across tokens here.
    assert any(REPLACEMENT in tokenizer.decode([i]) for i in ids)
    detok = IncrementalDetokenizer(tokenizer)
    deltas = [detok.add(i) for i in ids] + [detok.flush()]
    assert all(REPLACEMENT not in d for d in deltas)
    assert "".join(deltas) == tokenizer.decode(ids) == TEXT


def test_stop_string_cuts_text_and_holds_back_partial_matches(tokenizer):
    ids = tokenizer("alpha beta gamma delta", add_special_tokens=False)["input_ids"]
    tracker = TextTracker(
        tokenizer, stop=["gamma"], include_stop_str_in_output=False, skip_special_tokens=True
    )
    emitted, stopped = [], False
    for token in ids:
        stopped = tracker.add(token)
        emitted.append(tracker.take(final=stopped))
        if stopped:
            break
    assert stopped
    assert "".join(emitted) == "alpha beta "
    assert not any("gam" in piece for piece in emitted)


def test_stop_string_kept_when_asked(tokenizer):
    ids = tokenizer("one two three four", add_special_tokens=False)["input_ids"]
    tracker = TextTracker(
        tokenizer, stop=["three"], include_stop_str_in_output=True, skip_special_tokens=True
    )
    out = []
    for token in ids:
        done = tracker.add(token)
        out.append(tracker.take(final=done))
        if done:
            break
    assert "".join(out) == "one two three"
