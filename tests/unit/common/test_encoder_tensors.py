"""The encoder contract: request forms through the wire, results per task, metadata specs."""

from __future__ import annotations

import numpy as np
import pytest

from services.common import task_results
from services.common.codec import InferRequest, Tensor, as_bytes_array
from services.common.converters import infer_request_from_pb, infer_request_to_pb
from services.common.encoder_tensors import (
    EncoderInputs,
    ResultOptions,
    encoder_inputs_from,
    encoder_specs,
    task_result,
)
from services.common.engine import Task, TensorSpec
from services.common.errors import InvalidArgument, Unimplemented


def _texts(name: str, values: list[str]) -> Tensor:
    return Tensor(name, "BYTES", as_bytes_array(values))


def _wire(inputs: list[Tensor], *, raw: bool = True) -> InferRequest:
    return infer_request_from_pb(infer_request_to_pb(InferRequest("m", inputs), raw=raw))


@pytest.mark.parametrize("raw", [True, False])
def test_each_form_survives_the_wire(raw):
    texts = encoder_inputs_from(
        _wire([_texts("input-0", ["a", "bé"])], raw=raw), Task.TEXT_EMBEDDING
    )
    assert texts == EncoderInputs(texts=["a", "bé"])
    assert texts.segments() == (["a", "bé"], None)
    rerank = _wire([_texts("query", ["q"]), _texts("documents", ["d1", "d2"])], raw=raw)
    assert encoder_inputs_from(rerank, Task.RERANK).segments() == (["q", "q"], ["d1", "d2"])
    pairs = _wire([_texts("text", ["q1", "q2"]), _texts("text_pair", ["d1", "d2"])], raw=raw)
    assert encoder_inputs_from(pairs, Task.RERANK).pairs == [("q1", "d1"), ("q2", "d2")]
    ids = np.array([[1, 2, 3]], dtype=np.int64)
    tokens = _wire(
        [Tensor("input_ids", "INT64", ids), Tensor("attention_mask", "INT64", np.ones_like(ids))],
        raw=raw,
    )
    parsed = encoder_inputs_from(tokens, Task.SEQUENCE_CLASSIFICATION)
    assert set(parsed.tensors) == {"input_ids", "attention_mask"}
    assert parsed.tensors["input_ids"].tolist() == [[1, 2, 3]]


@pytest.mark.parametrize(
    "inputs,task,tokens,match",
    [
        ([], Task.TEXT_EMBEDDING, True, "at least one input"),
        (
            [Tensor("input_ids", "FP32", np.zeros((1, 2), np.float32))],
            Task.TEXT_EMBEDDING,
            True,
            "INT64",
        ),
        (
            [Tensor("input_ids", "INT64", np.zeros(2, np.int64))],
            Task.TEXT_EMBEDDING,
            True,
            r"\[N, L\]",
        ),
        (
            [
                Tensor("input_ids", "INT64", np.zeros((1, 2), np.int64)),
                Tensor("attention_mask", "INT64", np.zeros((1, 3), np.int64)),
            ],
            Task.TEXT_EMBEDDING,
            True,
            "differs",
        ),
        (
            [Tensor("input_ids", "INT64", np.zeros((1, 2), np.int64)), _texts("x", ["a"])],
            Task.TEXT_EMBEDDING,
            True,
            "unknown input 'x'",
        ),
        (
            [Tensor("input_ids", "INT64", np.zeros((1, 2), np.int64))],
            Task.TEXT_EMBEDDING,
            False,
            "BYTES",
        ),
        ([_texts("query", ["q"])], Task.RERANK, True, "'query' \\[1\\] and 'documents'"),
        (
            [_texts("query", ["q", "r"]), _texts("documents", ["d"])],
            Task.RERANK,
            True,
            "tensor 'query'",
        ),
        (
            [_texts("query", ["q"]), _texts("documents", [])],
            Task.RERANK,
            True,
            "'documents' is empty",
        ),
        ([_texts("input-0", ["a"])], Task.RERANK, True, "rerank"),
        (
            [_texts("a", ["x"]), _texts("b", ["y"])],
            Task.TEXT_EMBEDDING,
            True,
            "one BYTES text tensor",
        ),
        ([_texts("input-0", [])], Task.TEXT_EMBEDDING, True, "'input-0' is empty"),
        (
            [_texts("t", ["a", "b"]), _texts("text_pair", ["c"])],
            Task.RERANK,
            True,
            "1 items for 2 texts",
        ),
        (
            [Tensor("input-0", "BYTES", as_bytes_array([b"\xff"]))],
            Task.TEXT_EMBEDDING,
            True,
            "UTF-8",
        ),
    ],
)
def test_malformed_requests_are_invalid_argument(inputs, task, tokens, match):
    with pytest.raises(InvalidArgument, match=match):
        encoder_inputs_from(InferRequest("m", inputs), task, tokens=tokens)


class _Tokenizer:
    mask_token_id = 4

    def decode(self, ids: list[int]) -> str:
        return "|".join(map(str, ids))


def test_task_results_follow_the_task_and_the_options():
    logits = np.array([[0.5, 2.0], [3.0, 1.0]], dtype=np.float32)
    ids = task_result(
        Task.SEQUENCE_CLASSIFICATION,
        {"logits": logits},
        None,
        None,
        tokenizer=None,
        options=ResultOptions(),
    )
    assert ids.tolist() == [1, 0]
    probs = ResultOptions().overridden({"return_probabilities": "true", "other": "x"})
    assert probs == ResultOptions(return_probabilities=True)
    got = task_result(
        Task.SEQUENCE_CLASSIFICATION, {"logits": logits}, None, None, tokenizer=None, options=probs
    )
    np.testing.assert_allclose(got, task_results.softmax(logits))
    hidden = np.ones((1, 2, 3), dtype=np.float32)
    mask = np.array([[1, 0]])
    pooled = task_result(
        Task.TEXT_EMBEDDING,
        {"last_hidden_state": hidden},
        None,
        mask,
        tokenizer=None,
        options=probs,
    )
    np.testing.assert_allclose(pooled, task_results.text_embedding(hidden, mask))
    again = task_result(
        Task.TEXT_EMBEDDING, {"embeddings": pooled}, None, None, tokenizer=None, options=probs
    )
    np.testing.assert_allclose(again, pooled, rtol=1e-6)
    scores = {"scores": np.array([0.5, -1.0], np.float32), "logits": np.zeros((2, 1), np.float32)}
    assert task_result(Task.RERANK, scores, None, None, tokenizer=None, options=probs).tolist() == [
        0.5,
        -1.0,
    ]
    vocab = np.zeros((1, 3, 6), dtype=np.float32)
    vocab[0, 1, 5] = 1.0
    filled = task_result(
        Task.FILL_MASK,
        {"logits": vocab},
        np.array([[0, 4, 2]]),
        None,
        tokenizer=_Tokenizer(),
        options=ResultOptions(),
    )
    assert filled.tolist() == [b"5"]


def test_task_result_errors_keep_their_status():
    logits = {"logits": np.zeros((1, 2), np.float32)}
    with pytest.raises(Unimplemented):
        task_result(
            Task.TEXT_GENERATION, logits, None, None, tokenizer=None, options=ResultOptions()
        )
    with pytest.raises(InvalidArgument, match="'input_ids'"):
        task_result(
            Task.FILL_MASK,
            {"logits": np.zeros((1, 2, 3))},
            None,
            None,
            tokenizer=_Tokenizer(),
            options=ResultOptions(),
        )
    with pytest.raises(InvalidArgument, match="mask token"):
        task_result(
            Task.FILL_MASK,
            {"logits": np.zeros((1, 2, 3))},
            None,
            None,
            tokenizer=object(),
            options=ResultOptions(),
        )
    with pytest.raises(InvalidArgument, match="logits"):
        task_result(
            Task.SEQUENCE_CLASSIFICATION,
            {"a": np.zeros(1), "b": np.zeros(1)},
            None,
            None,
            tokenizer=None,
            options=ResultOptions(),
        )
    with pytest.raises(InvalidArgument, match="numeric"):
        task_result(
            Task.RERANK,
            {"scores": np.array([b"x"], dtype=object)},
            None,
            None,
            tokenizer=None,
            options=ResultOptions(),
        )
    with pytest.raises(InvalidArgument, match="return_raw_logits"):
        ResultOptions().overridden({"return_raw_logits": "maybe"})


def test_specs_of_both_engines():
    inputs, outputs = encoder_specs(Task.RERANK, raw_outputs=("scores", "logits"))
    assert [s.name for s in inputs] == [
        "query",
        "documents",
        "input_ids",
        "attention_mask",
        "token_type_ids",
    ]
    assert outputs == [
        TensorSpec("output-0", "FP32", (-1,)),
        TensorSpec("scores", "FP32", (-1,)),
        TensorSpec("logits", "FP32", (-1, 1)),
    ]
    inputs, outputs = encoder_specs(Task.TEXT_EMBEDDING, width=8, tensor_inputs=("input_ids",))
    assert inputs == [
        TensorSpec("input-0", "BYTES", (-1,)),
        TensorSpec("input_ids", "INT64", (-1, -1)),
    ]
    assert [(s.name, s.shape) for s in outputs] == [
        ("output-0", (-1, 8)),
        ("last_hidden_state", (-1, -1, 8)),
        ("embeddings", (-1, 8)),
    ]
    _, outputs = encoder_specs(
        Task.SEQUENCE_CLASSIFICATION, width=3, options=ResultOptions(return_probabilities=True)
    )
    assert outputs == [
        TensorSpec("output-0", "FP32", (-1, 3)),
        TensorSpec("logits", "FP32", (-1, 3)),
    ]
    _, outputs = encoder_specs(Task.SEQUENCE_CLASSIFICATION, raw_outputs=("logits",))
    assert outputs == [
        TensorSpec("output-0", "INT64", (-1,)),
        TensorSpec("logits", "FP32", (-1, -1)),
    ]
