"""The encoder contract (DESIGN.md §3 "Encoder tensors"), for every side that speaks it.

Inputs, in one of three forms:

- text: one BYTES tensor [N] of any name (conventionally `input-0`), with an optional
  BYTES `text_pair` [N] of second segments;
- rerank: BYTES `query` [1] + `documents` [N], the query paired with each document;
- tokens: INT64 (or INT32) `input_ids`, `attention_mask`, `token_type_ids` [N, L].

Text answers `output-0` with the KServe HF server's meaning per task (`task_result`,
the numbers from `services.common.task_results`); tokens answer the raw FP32 tensors
a Triton-hosted model returns (`logits`, `last_hidden_state`, `embeddings`, `scores`).
The engines' servicer and the tokenizer parse requests with `encoder_inputs_from`, the
HF engine, the vLLM engine and the tokenizer build results with `task_result`, both
engines describe their tensors with `encoder_specs`, and the gateway parses V2 text
requests with the same function, so the forms cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from services.common import task_results
from services.common.codec import InferRequest, Tensor, parse_bool
from services.common.engine import Task, TensorSpec
from services.common.errors import InvalidArgument, Unimplemented

TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
TEXT_INPUT = "input-0"
RESULT_OUTPUT = "output-0"
#: Request parameters that change how a task answers (KServe's runtime flags, per request).
RESULT_OPTIONS = ("return_probabilities", "return_raw_logits")
#: A text-in request to the HF engine whose parameter `return_num_input_tokens` is true also
#: gets `num_input_tokens` INT64 [N], each input's token count: what the gateway reports as
#: usage when it sends text straight to the engine instead of through the tokenizer.
TOKEN_COUNT_PARAMETER = "return_num_input_tokens"
TOKEN_COUNT_OUTPUT = "num_input_tokens"

# The raw output each task reads first (a predictor answering one output is read as that).
PREFERRED_OUTPUTS: dict[Task, tuple[str, ...]] = {
    Task.FILL_MASK: ("logits",),
    Task.SEQUENCE_CLASSIFICATION: ("logits",),
    Task.TOKEN_CLASSIFICATION: ("logits",),
    Task.TEXT_EMBEDDING: ("last_hidden_state", "embeddings"),
    Task.RERANK: ("scores", "logits"),
}


@dataclass
class EncoderInputs:
    """One encoder request's inputs: exactly one of `texts`, `pairs` (first and second
    segment per item: query/document for rerank) or token `tensors` [N, L]."""

    texts: list[str] | None = None
    pairs: list[tuple[str, str]] | None = None
    tensors: dict[str, np.ndarray] | None = None

    def segments(self) -> tuple[list[str], list[str] | None]:
        """(first segments, second segments or None), as a tokenizer call takes them."""
        if self.pairs is not None:
            return [first for first, _ in self.pairs], [second for _, second in self.pairs]
        return list(self.texts or ()), None


def _text(tensor: Tensor, item: Any) -> str:
    """One element of a BYTES tensor's object array (bytes; anything else is refused)."""
    try:
        return bytes(item).decode("utf-8")
    except (TypeError, UnicodeDecodeError):
        raise InvalidArgument(f"tensor '{tensor.name}': not valid UTF-8") from None


def _token_tensors(infer: InferRequest) -> dict[str, np.ndarray]:
    tensors: dict[str, np.ndarray] = {}
    for tensor in infer.inputs:
        if tensor.name not in TOKEN_INPUTS:
            raise InvalidArgument(
                f"unknown input '{tensor.name}' for model '{infer.model_name}' "
                f"(token inputs are {', '.join(TOKEN_INPUTS)})"
            )
        if tensor.datatype not in ("INT64", "INT32"):
            raise InvalidArgument(
                f"tensor '{tensor.name}': datatype must be INT64, got {tensor.datatype}"
            )
        if tensor.data.ndim != 2:
            raise InvalidArgument(
                f"tensor '{tensor.name}': expected shape [N, L], got {list(tensor.shape)}"
            )
        tensors[tensor.name] = tensor.data.astype(np.int64)
    shape = tensors["input_ids"].shape
    for name, array in tensors.items():
        if array.shape != shape:
            raise InvalidArgument(
                f"tensor '{name}': shape {list(array.shape)} differs from input_ids {list(shape)}"
            )
    return tensors


def encoder_inputs_from(infer: InferRequest, task: Task, *, tokens: bool = True) -> EncoderInputs:
    """The inputs of one encoder request; `tokens=False` where only text is taken."""
    if not infer.inputs:
        raise InvalidArgument(f"model '{infer.model_name}' needs at least one input")
    if tokens and infer.input("input_ids") is not None:
        return EncoderInputs(tensors=_token_tensors(infer))
    for tensor in infer.inputs:
        if tensor.datatype != "BYTES":
            hint = " (token inputs are named input_ids ...)" if tokens else ""
            raise InvalidArgument(
                f"tensor '{tensor.name}': text inputs are BYTES, got {tensor.datatype}{hint}"
            )
    rerank_form = (
        f"rerank model '{infer.model_name}' takes BYTES inputs 'query' [1] and 'documents' [N]"
    )
    query, documents = infer.input("query"), infer.input("documents")
    if query is not None or documents is not None:
        if query is None or documents is None or len(infer.inputs) != 2:
            raise InvalidArgument(rerank_form)
        if query.data.size != 1:
            raise InvalidArgument(
                f"tensor 'query': expected one element, got shape {list(query.shape)}"
            )
        first = _text(query, query.data.ravel()[0])
        docs = [_text(documents, item) for item in documents.data.ravel()]
        if not docs:
            raise InvalidArgument("tensor 'documents' is empty")
        return EncoderInputs(pairs=[(first, doc) for doc in docs])
    pair = infer.input("text_pair")
    others = [t for t in infer.inputs if t.name != "text_pair"]
    if len(others) != 1:
        found = ", ".join(t.name for t in infer.inputs)
        raise InvalidArgument(
            f"model '{infer.model_name}' takes one BYTES text tensor [N] "
            f"(and optional 'text_pair'); got {found}"
        )
    texts = [_text(others[0], item) for item in others[0].data.ravel()]
    if not texts:
        raise InvalidArgument(f"tensor '{others[0].name}' is empty")
    if pair is None:
        if task is Task.RERANK:
            raise InvalidArgument(f"{rerank_form} (or texts with 'text_pair')")
        return EncoderInputs(texts=texts)
    seconds = [_text(pair, item) for item in pair.data.ravel()]
    if len(seconds) != len(texts):
        raise InvalidArgument(f"'text_pair' has {len(seconds)} items for {len(texts)} texts")
    return EncoderInputs(pairs=list(zip(texts, seconds, strict=True)))


@dataclass(frozen=True)
class ResultOptions:
    """How a task answers: probabilities or raw logits instead of ids (KServe's flags)."""

    return_probabilities: bool = False
    return_raw_logits: bool = False

    def overridden(self, parameters: Mapping[str, object]) -> ResultOptions:
        """These defaults, with a request's `return_probabilities` / `return_raw_logits`."""
        given = {
            k: parse_bool(k, v)
            for k, v in parameters.items()
            if k in RESULT_OPTIONS and v is not None
        }
        return replace(self, **given) if given else self


def token_counts_wanted(parameters: Mapping[str, object]) -> bool:
    value = parameters.get(TOKEN_COUNT_PARAMETER)
    return value is not None and parse_bool(TOKEN_COUNT_PARAMETER, value)


def pick_output(task: Task, outputs: Mapping[str, np.ndarray]) -> tuple[str, np.ndarray]:
    """The named output the task needs, or the only one there is (any Triton model)."""
    for name in PREFERRED_OUTPUTS.get(task, ()):
        if name in outputs:
            return name, outputs[name]
    if len(outputs) == 1:
        return next(iter(outputs.items()))
    wanted = " or ".join(PREFERRED_OUTPUTS.get(task, ("?",)))
    raise InvalidArgument(
        f"{task.value} post-processing needs the predictor output {wanted}; "
        f"got {sorted(outputs) or 'none'}"
    )


def _needs(array: np.ndarray | None, name: str, task: Task) -> np.ndarray:
    if array is None:
        raise InvalidArgument(f"{task.value} post-processing needs the preprocess tensor '{name}'")
    return array


def task_result(
    task: Task,
    outputs: Mapping[str, np.ndarray],
    input_ids: np.ndarray | None,
    attention_mask: np.ndarray | None,
    *,
    tokenizer: Any,
    options: ResultOptions,
) -> np.ndarray:
    """Raw model outputs → the task's `output-0`. `tokenizer` (mask id, decode) serves
    fill_mask; `input_ids` / `attention_mask` are the inputs the outputs came from."""
    if task.is_generative:
        raise Unimplemented(
            f"post-processing is for encoder tasks; task {task.value} generates text"
        )
    name, data = pick_output(task, outputs)
    data = np.asarray(data)
    if data.dtype.kind not in "fiu":
        raise InvalidArgument(f"predictor output '{name}' must be numeric, got {data.dtype}")
    probabilities, raw = options.return_probabilities, options.return_raw_logits
    if task is Task.SEQUENCE_CLASSIFICATION:
        return task_results.sequence_classification(
            data, return_probabilities=probabilities, return_raw_logits=raw
        )
    if task is Task.TOKEN_CLASSIFICATION:
        return task_results.token_classification(
            data, return_probabilities=probabilities, return_raw_logits=raw
        )
    if task is Task.FILL_MASK:
        mask_id = getattr(tokenizer, "mask_token_id", None)
        if mask_id is None:
            raise InvalidArgument("this tokenizer has no mask token; fill_mask needs one")
        return task_results.fill_mask(
            data,
            _needs(input_ids, "input_ids", task),
            mask_token_id=int(mask_id),
            decode=tokenizer.decode,
            return_probabilities=probabilities,
            return_raw_logits=raw,
        )
    if task is Task.TEXT_EMBEDDING:
        if data.ndim == 2:  # already pooled
            return task_results.l2_normalize(data.astype(np.float32))
        return task_results.text_embedding(data, _needs(attention_mask, "attention_mask", task))
    if task is Task.RERANK:
        return task_results.rerank_scores(data)
    raise Unimplemented(f"no post-processing for task {task.value}")


def result_spec(task: Task, width: int, options: ResultOptions) -> TensorSpec:
    """`output-0` as `task_result` answers it (`width`: classes, vocabulary or hidden size)."""
    scores = options.return_probabilities or options.return_raw_logits
    if task is Task.FILL_MASK:
        if scores:
            return TensorSpec(RESULT_OUTPUT, "FP32", (-1, -1, width))
        return TensorSpec(RESULT_OUTPUT, "BYTES", (-1,))
    if task is Task.SEQUENCE_CLASSIFICATION:
        if options.return_raw_logits:
            return TensorSpec(RESULT_OUTPUT, "FP32", (-1, 1, width))
        if options.return_probabilities:
            return TensorSpec(RESULT_OUTPUT, "FP32", (-1, width))
        return TensorSpec(RESULT_OUTPUT, "INT64", (-1,))
    if task is Task.TOKEN_CLASSIFICATION:
        if scores:
            return TensorSpec(RESULT_OUTPUT, "FP32", (-1, 1, -1, width))
        return TensorSpec(RESULT_OUTPUT, "INT64", (-1, 1, -1))
    if task is Task.TEXT_EMBEDDING:
        return TensorSpec(RESULT_OUTPUT, "FP32", (-1, width))
    return TensorSpec(RESULT_OUTPUT, "FP32", (-1,))


def _raw_specs(task: Task, width: int) -> list[TensorSpec]:
    if task is Task.TEXT_EMBEDDING:
        return [
            TensorSpec("last_hidden_state", "FP32", (-1, -1, width)),
            TensorSpec("embeddings", "FP32", (-1, width)),
        ]
    if task is Task.TOKEN_CLASSIFICATION or task is Task.FILL_MASK:
        return [TensorSpec("logits", "FP32", (-1, -1, width))]
    if task is Task.RERANK:
        return [TensorSpec("logits", "FP32", (-1, 1)), TensorSpec("scores", "FP32", (-1,))]
    return [TensorSpec("logits", "FP32", (-1, width))]


def encoder_specs(
    task: Task,
    *,
    width: int = -1,
    tensor_inputs: Sequence[str] = TOKEN_INPUTS,
    raw_outputs: Sequence[str] | None = None,
    options: ResultOptions = ResultOptions(),
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """ModelMetadata inputs and outputs of an encoder model. `raw_outputs`: the names, in
    order, of the token-path outputs the engine answers (default: all the task has)."""
    if task is Task.RERANK:
        inputs = [TensorSpec("query", "BYTES", (1,)), TensorSpec("documents", "BYTES", (-1,))]
    else:
        inputs = [TensorSpec(TEXT_INPUT, "BYTES", (-1,))]
    inputs += [TensorSpec(name, "INT64", (-1, -1)) for name in tensor_inputs]
    raw = _raw_specs(task, width)
    if raw_outputs is not None:
        by_name = {spec.name: spec for spec in raw}
        raw = [by_name[name] for name in raw_outputs]
    return inputs, [result_spec(task, width, options), *raw]
