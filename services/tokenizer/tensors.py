"""OIP v2 tensors ↔ the tokenizer core's typed values.

Model names (docs/protocol.md): for each served model M, `M.render`,
`M.preprocess`, `M.postprocess`, `M.detokenize`, and `M` itself when a
predictor is configured (KServe's transformer).
"""

from __future__ import annotations

import numpy as np

from services.common.codec import InferRequest, Tensor, as_bytes_array, datatype_of, parse_bool
from services.common.engine import ModelInfo, ModelState, Task, TensorSpec
from services.common.errors import InvalidArgument
from services.tokenizer.core import RenderRequest, RenderResult, TokenizerModel, parse_json

RENDER, PREPROCESS, POSTPROCESS, DETOKENIZE = "render", "preprocess", "postprocess", "detokenize"
OPERATIONS = (RENDER, PREPROCESS, POSTPROCESS, DETOKENIZE)
TOKEN_TENSORS = ("input_ids", "attention_mask", "token_type_ids")
RESULT_OUTPUT = "output-0"

_RENDER_INPUTS = {
    "messages", "text_input", "tools", "documents", "chat_template", "chat_template_kwargs",
    "add_generation_prompt", "continue_final_message", "add_special_tokens",
}


def split_model_name(name: str, served: set[str]) -> tuple[str, str | None]:
    """`M.render` → (M, "render"); a plain served `M` → (M, None)."""
    base, dot, operation = name.rpartition(".")
    if dot and operation in OPERATIONS and base in served:
        return base, operation
    return name, None


def _scalar(tensor: Tensor) -> object:
    if tensor.data.size != 1:
        raise InvalidArgument(f"tensor '{tensor.name}': expected one element, got shape {list(tensor.shape)}")
    return tensor.data.ravel()[0]


def _text(tensor: Tensor, item: object) -> str:
    try:
        return bytes(item).decode("utf-8")
    except (TypeError, UnicodeDecodeError):
        raise InvalidArgument(f"tensor '{tensor.name}': not valid UTF-8 text") from None


def _bytes_input(infer: InferRequest, name: str) -> Tensor | None:
    tensor = infer.input(name)
    if tensor is not None and tensor.datatype != "BYTES":
        raise InvalidArgument(f"tensor '{name}': datatype must be BYTES, got {tensor.datatype}")
    return tensor


def _bool_input(infer: InferRequest, name: str) -> bool | None:
    tensor = infer.input(name)
    if tensor is None:
        return None
    if tensor.datatype != "BOOL":
        raise InvalidArgument(f"tensor '{name}': datatype must be BOOL, got {tensor.datatype}")
    return bool(_scalar(tensor))


def render_request_from(infer: InferRequest) -> RenderRequest:
    unknown = [t.name for t in infer.inputs if t.name not in _RENDER_INPUTS]
    if unknown:
        raise InvalidArgument(
            f"unknown input '{unknown[0]}' for '{infer.model_name}' (inputs: messages or text_input, "
            "tools, documents, chat_template, chat_template_kwargs, add_generation_prompt, "
            "continue_final_message, add_special_tokens)"
        )
    request = RenderRequest(
        add_generation_prompt=_bool_input(infer, "add_generation_prompt"),
        continue_final_message=bool(_bool_input(infer, "continue_final_message")),
        add_special_tokens=_bool_input(infer, "add_special_tokens"),
    )
    for name, kind in (("messages", list), ("tools", list), ("documents", list), ("chat_template_kwargs", dict)):
        tensor = _bytes_input(infer, name)
        if tensor is not None:
            value = parse_json(name, bytes(_scalar(tensor)), kind)
            if name == "chat_template_kwargs":
                request.template_kwargs = value
            else:
                setattr(request, name, value)
    for name, attribute in (("text_input", "text"), ("chat_template", "chat_template")):
        tensor = _bytes_input(infer, name)
        if tensor is not None:
            setattr(request, attribute, _text(tensor, _scalar(tensor)))
    return request


def render_outputs(result: RenderResult) -> list[Tensor]:
    return [
        Tensor("input_ids", "INT64", np.asarray(result.input_ids, dtype=np.int64)),
        Tensor("prompt", "BYTES", as_bytes_array([result.prompt])),
    ]


def texts_from(infer: InferRequest, task: Task) -> tuple[list[str], list[str] | None]:
    """Texts (and pairs) for preprocessing: one BYTES tensor [N] (+ `text_pair`),
    or rerank's `query` [1] + `documents` [N]."""
    query, documents = _bytes_input(infer, "query"), _bytes_input(infer, "documents")
    if query is not None or documents is not None:
        if query is None or documents is None or len(infer.inputs) != 2:
            raise InvalidArgument("rerank input is BYTES 'query' [1] with 'documents' [N]")
        q = _text(query, _scalar(query))
        docs = [_text(documents, d) for d in documents.data.ravel()]
        if not docs:
            raise InvalidArgument("tensor 'documents' is empty")
        return [q] * len(docs), docs
    pair = _bytes_input(infer, "text_pair")
    others = [t for t in infer.inputs if t.name != "text_pair"]
    if len(others) != 1 or others[0].datatype != "BYTES":
        found = ", ".join(f"{t.name} ({t.datatype})" for t in infer.inputs) or "none"
        raise InvalidArgument(
            f"'{infer.model_name}' takes one BYTES text tensor [N] (and optional 'text_pair'); got {found}"
        )
    texts = [_text(others[0], item) for item in others[0].data.ravel()]
    if not texts:
        raise InvalidArgument(f"tensor '{others[0].name}' is empty")
    pairs = [_text(pair, item) for item in pair.data.ravel()] if pair is not None else None
    if task is Task.RERANK and pairs is None:
        raise InvalidArgument("rerank preprocessing needs 'text_pair' (the documents) beside the queries")
    return texts, pairs


def tensors_out(arrays: dict[str, np.ndarray]) -> list[Tensor]:
    return [Tensor(name, datatype_of(array), array) for name, array in arrays.items()]


def postprocess_inputs(infer: InferRequest) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(predictor outputs, preprocess tensors) from one postprocess request."""
    outputs, inputs = {}, {}
    for tensor in infer.inputs:
        if tensor.name in TOKEN_TENSORS:
            if tensor.datatype not in ("INT64", "INT32"):
                raise InvalidArgument(f"tensor '{tensor.name}': datatype must be INT64, got {tensor.datatype}")
            inputs[tensor.name] = tensor.data.astype(np.int64)
        else:
            outputs[tensor.name] = tensor.data
    if not outputs:
        raise InvalidArgument(f"'{infer.model_name}' needs the predictor's output tensor (e.g. 'logits')")
    return outputs, inputs


def detokenize_ids(infer: InferRequest) -> np.ndarray:
    tensor = infer.input("input_ids") or infer.input("output_ids")
    if tensor is None or len(infer.inputs) != 1:
        raise InvalidArgument(f"'{infer.model_name}' takes one INT64 tensor 'input_ids' [n] or [N, L]")
    if tensor.datatype not in ("INT64", "INT32") or tensor.data.ndim not in (1, 2):
        raise InvalidArgument(
            f"tensor '{tensor.name}': expected INT64 [n] or [N, L], got {tensor.datatype} {list(tensor.shape)}"
        )
    return tensor.data.astype(np.int64)


def option(infer: InferRequest, name: str) -> bool | None:
    value = infer.parameters.get(name)
    return None if value is None else parse_bool(name, value)


def model_infos(model: TokenizerModel, *, with_predictor: bool) -> list[ModelInfo]:
    """The OIP models one served model exposes, for metadata and the repository index."""
    ready, name, task = ModelState.READY, model.name, model.options.task
    ids = TensorSpec("input_ids", "INT64", (-1,))
    matrix = [TensorSpec(n, "INT64", (-1, -1)) for n in TOKEN_TENSORS]
    text = TensorSpec("text", "BYTES", (-1,))
    infos = [
        ModelInfo(f"{name}.preprocess", task, ready, platform="hfmesh_tokenizer",
                  inputs=[text, TensorSpec("text_pair", "BYTES", (-1,))], outputs=matrix),
        ModelInfo(f"{name}.postprocess", task, ready, platform="hfmesh_tokenizer",
                  inputs=[TensorSpec("logits", "FP32", (-1, -1, -1)), *matrix],
                  outputs=[TensorSpec(RESULT_OUTPUT, "BYTES" if task is Task.FILL_MASK else "FP32", (-1,))]),
        ModelInfo(f"{name}.detokenize", task, ready, platform="hfmesh_tokenizer",
                  inputs=[ids], outputs=[TensorSpec("text_output", "BYTES", (-1,)), TensorSpec("tokens", "BYTES", (-1,))]),
        ModelInfo(f"{name}.render", task, ready, platform="hfmesh_tokenizer",
                  max_model_len=model.max_model_len,
                  inputs=[TensorSpec("messages", "BYTES", (1,)), TensorSpec("text_input", "BYTES", (1,)),
                          TensorSpec("tools", "BYTES", (1,)), TensorSpec("documents", "BYTES", (1,)),
                          TensorSpec("chat_template", "BYTES", (1,)),
                          TensorSpec("add_generation_prompt", "BOOL", (1,)),
                          TensorSpec("continue_final_message", "BOOL", (1,))],
                  outputs=[ids, TensorSpec("prompt", "BYTES", (1,))]),
    ]
    if with_predictor and not task.is_generative:
        infos.append(ModelInfo(name, task, ready, platform="hfmesh_transformer", max_model_len=model.max_model_len,
                               inputs=[TensorSpec("input-0", "BYTES", (-1,))],
                               outputs=[TensorSpec(RESULT_OUTPUT, "BYTES", (-1,))]))
    return infos
