"""Encoder tasks on a vLLM pooling model, with the HF engine's tensors (DESIGN.md §3).

Text in (`EncodeRequest.texts` / `.pairs`) → `output-0` with the KServe HF
server's meaning (`services.common.task_results`). Tokens in (`input_ids`,
`attention_mask`, `token_type_ids` [N, L]) → raw FP32 tensors, as a
Triton-hosted model answers: `embeddings` [N, H] (pooled, normalised),
`logits` [N, C], and for rerankers also `scores` [N].

Each row is its own vLLM pooling request (vLLM batches them); the rows of one
`EncodeRequest` run concurrently.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.common import task_results
from services.common.encoder_tensors import (
    RESULT_OUTPUT,
    TOKEN_INPUTS,
    ResultOptions,
    encoder_specs,
    task_result,
)
from services.common.engine import EncodeRequest, EncodeResult, Task, TensorSpec
from services.common.errors import InvalidArgument, Unimplemented

# The token-path outputs a pooling model answers, in order (no hidden states: vLLM pools).
RAW_OUTPUTS: dict[Task, tuple[str, ...]] = {
    Task.TEXT_EMBEDDING: ("embeddings",),
    Task.RERANK: ("scores", "logits"),
    Task.SEQUENCE_CLASSIFICATION: ("logits",),
}


def pooling_specs(task: Task) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """ModelMetadata inputs/outputs of an encoder model on vLLM."""
    return encoder_specs(task, raw_outputs=RAW_OUTPUTS.get(task, ("logits",)))


@dataclass
class PoolingRow:
    """One sequence to pool: its token ids and where its second segment starts (pairs)."""

    token_ids: list[int]
    second_segment_start: int | None = None


def _segment_start(type_ids: list[int] | np.ndarray) -> int | None:
    """First index of segment 1 in BERT token type ids (0...0 1...1), None for a single segment."""
    values = [int(v) for v in type_ids]
    if any(v not in (0, 1) for v in values):
        raise InvalidArgument("tensor 'token_type_ids': values must be 0 or 1")
    if 1 not in values:
        return None
    start = values.index(1)
    if 0 in values[start:]:
        raise InvalidArgument("tensor 'token_type_ids': expected zeros followed by ones")
    return start


class PoolingRunner:
    """Runs `EncodeRequest`s on an `AsyncLLM` whose runner is `pooling`."""

    def __init__(
        self,
        llm: Any,
        task: Task,
        *,
        max_model_len: int,
        add_special_tokens: bool = True,
        return_probabilities: bool = False,
        return_raw_logits: bool = False,
    ) -> None:
        self.llm = llm
        self.task = task
        self.tokenizer = llm.get_tokenizer()
        self.max_model_len = max_model_len
        self.add_special_tokens = add_special_tokens
        self.result_options = ResultOptions(return_probabilities, return_raw_logits)
        self.vocab_size = llm.model_config.get_vocab_size()

    # -- inputs --------------------------------------------------------------

    def _rows_from_text(self, request: EncodeRequest) -> list[PoolingRow]:
        if self.task is Task.RERANK:
            if not request.pairs:
                raise InvalidArgument("rerank takes query/document pairs")
            queries, documents = zip(*request.pairs, strict=True)
            encoded = self.tokenizer(
                list(queries),
                list(documents),
                truncation=True,
                max_length=self.max_model_len,
                add_special_tokens=self.add_special_tokens,
            )
        else:
            if request.pairs:
                raise InvalidArgument(f"query/document pairs are for rerank, not {self.task.value}")
            if not request.texts:
                raise InvalidArgument("no input text")
            encoded = self.tokenizer(
                list(request.texts),
                truncation=True,
                max_length=self.max_model_len,
                add_special_tokens=self.add_special_tokens,
            )
        types = encoded.get("token_type_ids")
        rows = []
        for index, ids in enumerate(encoded["input_ids"]):
            if not ids:
                raise InvalidArgument(f"input {index} tokenizes to nothing")
            rows.append(
                PoolingRow(list(ids), _segment_start(types[index]) if types is not None else None)
            )
        return rows

    def _rows_from_tensors(self, request: EncodeRequest) -> list[PoolingRow]:
        tensors = request.tensors or {}
        unknown = sorted(set(tensors) - set(TOKEN_INPUTS))
        if unknown:
            raise InvalidArgument(
                f"unknown input '{unknown[0]}' (token inputs are {', '.join(TOKEN_INPUTS)})"
            )
        if "input_ids" not in tensors:
            raise InvalidArgument("tensor 'input_ids' is required")
        ids = np.asarray(tensors["input_ids"], dtype=np.int64)
        if ids.ndim != 2 or ids.size == 0:
            raise InvalidArgument(
                f"tensor 'input_ids': expected a non-empty [N, L], got {list(ids.shape)}"
            )
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            raise InvalidArgument(
                f"tensor 'input_ids': values must be in [0, {self.vocab_size - 1}]"
            )
        mask = np.asarray(tensors.get("attention_mask", np.ones_like(ids)), dtype=np.int64)
        types = tensors.get("token_type_ids")
        if mask.shape != ids.shape or (types is not None and np.shape(types) != ids.shape):
            raise InvalidArgument(
                "tensors 'attention_mask'/'token_type_ids' must have the shape of 'input_ids'"
            )
        if not np.isin(mask, (0, 1)).all():
            raise InvalidArgument("tensor 'attention_mask': values must be 0 or 1")
        rows = []
        for index in range(ids.shape[0]):
            keep = mask[index] == 1
            row_ids = ids[index][keep].tolist()
            if not row_ids:
                raise InvalidArgument(f"row {index} of 'attention_mask' keeps no token")
            if len(row_ids) > self.max_model_len:
                raise InvalidArgument(
                    f"tensor 'input_ids': row {index} has {len(row_ids)} tokens, the model's limit "
                    f"is {self.max_model_len}"
                )
            start = _segment_start(np.asarray(types)[index][keep]) if types is not None else None
            rows.append(PoolingRow(row_ids, start))
        return rows

    # -- running -------------------------------------------------------------

    def _params(self, row: PoolingRow):
        from vllm.pooling_params import PoolingParams

        if self.task is Task.TEXT_EMBEDDING:
            return PoolingParams(task="embed")
        extra = (
            {"compressed_token_type_ids": row.second_segment_start}
            if row.second_segment_start
            else None
        )
        return PoolingParams(task="classify", use_activation=False, extra_kwargs=extra)

    async def _pool(self, row: PoolingRow, request_id: str) -> np.ndarray:
        from vllm.inputs.engine import tokens_input

        result = None
        async for output in self.llm.encode(
            tokens_input(row.token_ids), self._params(row), request_id
        ):
            result = output
        if result is None:
            raise InvalidArgument("the pooling request produced no output")
        return result.outputs.data.float().cpu().numpy()

    async def encode(self, request: EncodeRequest) -> EncodeResult:
        text_style = request.tensors is None
        if text_style:
            rows = await asyncio.to_thread(self._rows_from_text, request)
        else:
            rows = self._rows_from_tensors(request)
        pooled = await asyncio.gather(
            *(self._pool(row, f"{request.request_id}-{i}") for i, row in enumerate(rows))
        )
        stacked = np.stack(pooled).astype(np.float32)
        if self.task not in RAW_OUTPUTS:
            raise Unimplemented(f"task {self.task.value} is not served by the vLLM engine")
        if self.task is Task.TEXT_EMBEDDING:
            raw = {"embeddings": stacked}
        else:
            logits = stacked.reshape(len(rows), -1)
            raw = {"logits": logits}
            if self.task is Task.RERANK:
                raw["scores"] = task_results.rerank_scores(logits)
        if not text_style:
            return EncodeResult(raw)
        options = self.result_options.overridden(request.options)
        result = task_result(self.task, raw, None, None, tokenizer=self.tokenizer, options=options)
        return EncodeResult({RESULT_OUTPUT: result})
