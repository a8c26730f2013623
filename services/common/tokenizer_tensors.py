"""The tokenizer service's models and tensors (docs/protocol.md §1), both directions.

For each served model M the tokenizer exposes `M.render`, `M.preprocess`,
`M.postprocess` and `M.detokenize` (and `M` itself in transformer mode). The
gateway builds its requests and reads the answers with the `*_request` and
`*_from` functions here; the tokenizer parses the same requests and builds the
answers with their inverses, so a tensor name lives in one place.

- render: `RenderRequest` ↔ the `RENDER_INPUTS` tensors; the answer is INT64
  `input_ids` [n] + BYTES `prompt` [1] with the response parameter `max_model_len`.
- preprocess: BYTES `text` [N] (+ `text_pair` [N]; any encoder text form is read,
  see `encoder_tensors`) → INT64 token tensors [N, L].
- postprocess: the predictor's raw outputs + INT64 `input_ids` / `attention_mask`
  → `output-0`; parameters `return_probabilities` / `return_raw_logits`; when
  requested, BYTES `label` [N] (sequence classification: the config's name of each
  row's highest-scoring class, `LABEL_i` without one).
- detokenize: INT64 `input_ids` [n] or [N, L] → BYTES `text_output` [N], and when
  requested `tokens` (each id decoded on its own) and `token_strs` (each id's
  vocabulary string, as `convert_ids_to_tokens` gives it); parameter
  `skip_special_tokens`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.common.codec import (
    InferRequest,
    InferResponse,
    Tensor,
    as_bytes_array,
    datatype_of,
    parse_bool,
)
from services.common.encoder_tensors import RESULT_OUTPUT, TOKEN_INPUTS
from services.common.errors import InvalidArgument

RENDER, PREPROCESS, POSTPROCESS, DETOKENIZE = "render", "preprocess", "postprocess", "detokenize"
LABEL_OUTPUT = "label"
OPERATIONS = (RENDER, PREPROCESS, POSTPROCESS, DETOKENIZE)


def operation_model(model: str, operation: str) -> str:
    """The OIP model name of one tokenizer operation: `M.render`, ..."""
    return f"{model}.{operation}"


def split_model_name(name: str, served: set[str]) -> tuple[str, str | None]:
    """`M.render` → (M, "render"); a plain served `M` → (M, None)."""
    base, dot, operation = name.rpartition(".")
    if dot and operation in OPERATIONS and base in served:
        return base, operation
    return name, None


# -- render ------------------------------------------------------------------

_JSON_INPUTS = {"messages": list, "tools": list, "documents": list, "chat_template_kwargs": dict}
_TEXT_INPUTS = ("text_input", "chat_template", "tool_parser")
_BOOL_INPUTS = ("add_generation_prompt", "continue_final_message", "add_special_tokens")


@dataclass
class RenderRequest:
    """`M.render`'s inputs, named as the tensors: exactly one of `messages` (chat) or
    `text_input` (plain tokenization); None means "not sent"."""

    messages: list[dict[str, Any]] | None = None
    text_input: str | None = None
    tools: list[dict[str, Any]] | None = None
    #: how tools and calls are written for a template that takes no tools (tool_format.py)
    tool_parser: str | None = None
    documents: list[dict[str, Any]] | None = None
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    add_generation_prompt: bool | None = None
    continue_final_message: bool | None = None
    add_special_tokens: bool | None = None


RENDER_INPUTS = tuple(f.name for f in dataclasses.fields(RenderRequest))


@dataclass
class Rendered:
    """`M.render`'s answer: the prompt's ids and text, and the model's context length."""

    input_ids: list[int]
    prompt: str
    max_model_len: int | None = None


def _scalar(tensor: Tensor) -> Any:
    if tensor.data.size != 1:
        raise InvalidArgument(
            f"tensor '{tensor.name}': expected one element, got shape {list(tensor.shape)}"
        )
    return tensor.data.ravel()[0]


def _text(tensor: Tensor) -> str:
    try:
        return bytes(_scalar(tensor)).decode("utf-8")
    except (TypeError, UnicodeDecodeError):
        raise InvalidArgument(f"tensor '{tensor.name}': not valid UTF-8 text") from None


def _typed(infer: InferRequest, name: str, datatype: str) -> Tensor | None:
    tensor = infer.input(name)
    if tensor is not None and tensor.datatype != datatype:
        raise InvalidArgument(
            f"tensor '{name}': datatype must be {datatype}, got {tensor.datatype}"
        )
    return tensor


def parse_json(name: str, raw: bytes, expected: type) -> Any:
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidArgument(f"tensor '{name}': not valid JSON ({error})") from None
    if not isinstance(value, expected):
        raise InvalidArgument(f"tensor '{name}': expected a JSON {expected.__name__}")
    return value


def render_request(model: str, render: RenderRequest, *, request_id: str) -> InferRequest:
    inputs = []
    for name in RENDER_INPUTS:
        value = getattr(render, name)
        if value is None:
            continue
        if name in _BOOL_INPUTS:
            inputs.append(Tensor(name, "BOOL", np.asarray([bool(value)], dtype=np.bool_)))
        else:
            data = value if name in _TEXT_INPUTS else json.dumps(value)
            inputs.append(Tensor(name, "BYTES", as_bytes_array([data])))
    return InferRequest(operation_model(model, RENDER), inputs, id=request_id)


def render_from(infer: InferRequest) -> RenderRequest:
    unknown = [t.name for t in infer.inputs if t.name not in RENDER_INPUTS]
    if unknown:
        raise InvalidArgument(
            f"unknown input '{unknown[0]}' for '{infer.model_name}' "
            "(inputs: messages or text_input, "
            "tools, tool_parser, documents, chat_template, chat_template_kwargs, "
            "add_generation_prompt, continue_final_message, add_special_tokens)"
        )
    request = RenderRequest()
    for name in _BOOL_INPUTS:
        tensor = _typed(infer, name, "BOOL")
        if tensor is not None:
            setattr(request, name, bool(_scalar(tensor)))
    for name, kind in _JSON_INPUTS.items():
        tensor = _typed(infer, name, "BYTES")
        if tensor is not None:
            setattr(request, name, parse_json(name, bytes(_scalar(tensor)), kind))
    for name in _TEXT_INPUTS:
        tensor = _typed(infer, name, "BYTES")
        if tensor is not None:
            setattr(request, name, _text(tensor))
    return request


def render_response(infer: InferRequest, rendered: Rendered) -> InferResponse:
    outputs = [
        Tensor("input_ids", "INT64", np.asarray(rendered.input_ids, dtype=np.int64)),
        Tensor("prompt", "BYTES", as_bytes_array([rendered.prompt])),
    ]
    parameters = {"max_model_len": rendered.max_model_len} if rendered.max_model_len else {}
    return InferResponse(
        model_name=infer.model_name, id=infer.id, outputs=outputs, parameters=parameters
    )


def rendered_from(response: InferResponse) -> Rendered:
    out = outputs_of(response)
    limit = response.parameters.get("max_model_len")
    return Rendered(
        input_ids=[int(v) for v in out["input_ids"].ravel()],
        prompt=bytes(out["prompt"].ravel()[0]).decode("utf-8"),
        max_model_len=int(limit) if limit else None,
    )


def outputs_of(response: InferResponse) -> dict[str, np.ndarray]:
    return {t.name: t.data for t in response.outputs}


# -- preprocess and postprocess ----------------------------------------------


def preprocess_request(
    model: str, texts: list[str], pairs: list[str] | None, *, request_id: str
) -> InferRequest:
    inputs = [Tensor("text", "BYTES", as_bytes_array(texts))]
    if pairs is not None:
        inputs.append(Tensor("text_pair", "BYTES", as_bytes_array(pairs)))
    return InferRequest(operation_model(model, PREPROCESS), inputs, id=request_id)


def postprocess_request(
    model: str,
    outputs: Mapping[str, np.ndarray],
    encoded: Mapping[str, np.ndarray],
    *,
    request_id: str,
    parameters: Mapping[str, Any] | None = None,
    label: bool = False,
) -> InferRequest:
    """The predictor's raw outputs, and the preprocess tensors post-processing reads;
    `label` also asks for each row's class name."""
    inputs = [Tensor(name, datatype_of(array), array) for name, array in outputs.items()]
    inputs += [
        Tensor(n, "INT64", a) for n, a in encoded.items() if n in ("input_ids", "attention_mask")
    ]
    return InferRequest(
        operation_model(model, POSTPROCESS),
        inputs,
        id=request_id,
        parameters=dict(parameters or {}),
        requested_outputs=[RESULT_OUTPUT, LABEL_OUTPUT] if label else [],
    )


def postprocess_from(infer: InferRequest) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(predictor outputs, preprocess tensors) from one postprocess request."""
    outputs, inputs = {}, {}
    for tensor in infer.inputs:
        if tensor.name in TOKEN_INPUTS:
            if tensor.datatype not in ("INT64", "INT32"):
                raise InvalidArgument(
                    f"tensor '{tensor.name}': datatype must be INT64, got {tensor.datatype}"
                )
            inputs[tensor.name] = tensor.data.astype(np.int64)
        else:
            outputs[tensor.name] = tensor.data
    if not outputs:
        raise InvalidArgument(
            f"'{infer.model_name}' needs the predictor's output tensor (e.g. 'logits')"
        )
    return outputs, inputs


def result_from(response: InferResponse) -> np.ndarray:
    """The task result of a postprocess (or transformer) answer."""
    return outputs_of(response)[RESULT_OUTPUT]


def labels_from(response: InferResponse) -> list[str]:
    return [bytes(v).decode("utf-8") for v in outputs_of(response)[LABEL_OUTPUT].ravel()]


# -- detokenize --------------------------------------------------------------


def detokenize_request(
    model: str,
    ids: list[int],
    *,
    request_id: str,
    output: str = "text_output",
    skip_special_tokens: bool = True,
) -> InferRequest:
    """`output`: `text_output` (the text), `tokens` (each id decoded on its own: OpenAI
    logprobs) or `token_strs` (vocabulary strings)."""
    return InferRequest(
        operation_model(model, DETOKENIZE),
        [Tensor("input_ids", "INT64", np.asarray(ids, dtype=np.int64))],
        id=request_id,
        parameters={} if skip_special_tokens else {"skip_special_tokens": False},
        requested_outputs=[] if output == "text_output" else [output],
    )


def detokenize_from(infer: InferRequest) -> tuple[np.ndarray, bool]:
    """(ids, skip_special_tokens) of one detokenize request."""
    tensor = infer.input("input_ids") or infer.input("output_ids")
    if tensor is None or len(infer.inputs) != 1:
        raise InvalidArgument(
            f"'{infer.model_name}' takes one INT64 tensor 'input_ids' [n] or [N, L]"
        )
    if tensor.datatype not in ("INT64", "INT32") or tensor.data.ndim not in (1, 2):
        raise InvalidArgument(
            f"tensor '{tensor.name}': expected INT64 [n] or [N, L], "
            f"got {tensor.datatype} {list(tensor.shape)}"
        )
    skip = infer.parameters.get("skip_special_tokens")
    return tensor.data.astype(np.int64), skip is None or parse_bool("skip_special_tokens", skip)


def detokenize_response(
    infer: InferRequest,
    texts: list[str],
    tokens: list[str] | None,
    shape: tuple[int, ...],
    token_strs: list[str] | None = None,
) -> InferResponse:
    outputs = [Tensor("text_output", "BYTES", as_bytes_array(texts))]
    if tokens is not None:
        outputs.append(Tensor("tokens", "BYTES", as_bytes_array(tokens, shape)))
    if token_strs is not None:
        outputs.append(Tensor("token_strs", "BYTES", as_bytes_array(token_strs, shape)))
    return InferResponse(model_name=infer.model_name, id=infer.id, outputs=outputs)


def text_from(response: InferResponse) -> str:
    return bytes(outputs_of(response)["text_output"].ravel()[0]).decode("utf-8")


def tokens_from(response: InferResponse, output: str = "tokens") -> list[str]:
    return [
        bytes(t).decode("utf-8", errors="replace") for t in outputs_of(response)[output].ravel()
    ]
