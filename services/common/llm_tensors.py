"""Triton vLLM-backend LLM tensors ↔ `GenerateRequest` / `GenerateDelta`.

Inputs (DESIGN.md §3): `text_input` BYTES [1] or our `input_ids` INT64 [n];
`stream`, `exclude_input_in_output`, `return_finish_reason`,
`return_num_input_tokens`, `return_num_output_tokens`, `return_logprobs` BOOL [1];
`sampling_parameters` BYTES [1] holding JSON of vLLM `SamplingParams` fields.
Sampling fields may also come as request parameters (KServe style); the JSON wins.

Outputs: `text_output` BYTES, `output_ids` INT64, and — on the last response of
a sequence, or on every response when the matching `return_*` flag is set —
`finish_reason` BYTES [1], `num_input_tokens` / `num_output_tokens` INT64 [1].
`logprobs` BYTES [1] is JSON: a list, one entry per new token,
`{"token_id": int, "logprob": float, "top_logprobs": {"<id>": float}}`.
With `n` > 1, each response also carries `sequence_index` INT64 [1].

Both directions live here: the engine side parses requests
(`parse_generate_request`) and builds responses (`response_for`); the client side
(the gateway) reads a response back into the engine's own `GenerateDelta`
(`delta_from_response`), so one type travels from engine to SSE.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.common.codec import (
    InferRequest,
    InferResponse,
    Tensor,
    as_bytes_array,
    parse_bool,
    split_bytes,
)
from services.common.converters import infer_response_from_pb
from services.common.engine import GenerateDelta, GenerateRequest, SamplingParams, TensorSpec
from services.common.errors import InvalidArgument
from services.common.pb import inference_pb2 as pb

# Every typed sampling field (vLLM's name) → its default.
_SAMPLING_DEFAULTS = {
    f.name: getattr(SamplingParams(), f.name)
    for f in dataclasses.fields(SamplingParams)
    if f.name != "extra"
}
_FLAG_INPUTS = (
    "stream",
    "exclude_input_in_output",
    "return_finish_reason",
    "return_num_input_tokens",
    "return_num_output_tokens",
    "return_logprobs",
)
_KNOWN_INPUTS = {"text_input", "input_ids", "sampling_parameters", *_FLAG_INPUTS}
#: What ModelMetadata reports for a generative model (-1: any size).
LLM_INPUTS = [
    TensorSpec("text_input", "BYTES", (1,)),
    TensorSpec("input_ids", "INT64", (-1,)),
    TensorSpec("sampling_parameters", "BYTES", (1,)),
    *(TensorSpec(flag, "BOOL", (1,)) for flag in _FLAG_INPUTS),
]
LLM_OUTPUTS = [
    TensorSpec("text_output", "BYTES", (-1,)),
    TensorSpec("output_ids", "INT64", (-1,)),
    TensorSpec("finish_reason", "BYTES", (-1,)),
    TensorSpec("num_input_tokens", "INT64", (1,)),
    TensorSpec("num_output_tokens", "INT64", (-1,)),
    TensorSpec("logprobs", "BYTES", (1,)),
]
# Request parameters that are protocol options, not sampling fields.
_PROTOCOL_PARAMETERS = {
    "triton_enable_empty_final_response",
    "coalesce_deltas",
    "sequence_id",
    "priority",
    "timeout",
}


@dataclass
class LLMOptions:
    """How to shape the responses of one generation request."""

    stream: bool = False
    exclude_input_in_output: bool = False
    return_finish_reason: bool = False
    return_num_input_tokens: bool = False
    return_num_output_tokens: bool = False
    return_logprobs: bool = False
    empty_final_response: bool = False
    coalesce_deltas: bool = False
    requested_outputs: tuple[str, ...] = ()


def _scalar(tensor: Tensor) -> Any:
    if tensor.data.size != 1:
        raise InvalidArgument(
            f"tensor '{tensor.name}': expected one element, got shape {list(tensor.shape)}"
        )
    return tensor.data.ravel()[0]


def _coerce(name: str, value: Any, default: Any) -> Any:
    """Triton clients often send numbers as strings; accept both."""
    try:
        if isinstance(default, bool) or name in (
            "ignore_eos",
            "include_stop_str_in_output",
            "skip_special_tokens",
        ):
            try:
                return parse_bool(name, value)
            except InvalidArgument:
                raise ValueError(value) from None
        if name in ("stop", "stop_token_ids"):
            items = [value] if isinstance(value, (str, int)) else list(value)
            return [int(v) for v in items] if name == "stop_token_ids" else [str(v) for v in items]
        if value is None:
            return None
        if isinstance(default, float):
            return float(value)
        if isinstance(default, int) or name in ("seed", "max_tokens", "logprobs"):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
    except (TypeError, ValueError):
        raise InvalidArgument(f"sampling parameter '{name}': invalid value {value!r}") from None
    return value


# Older request names of structured-output constraints → vLLM `StructuredOutputsParams` fields
# (inside the `structured_outputs` extra); both engines read them.
GUIDED_ALIASES = {
    "guided_json": "json",
    "guided_regex": "regex",
    "guided_choice": "choice",
    "guided_grammar": "grammar",
    "guided_json_object": "json_object",
    "guided_whitespace_pattern": "whitespace_pattern",
}


def structured_outputs(extra: dict[str, Any]) -> dict[str, Any] | None:
    """The request's `structured_outputs` object with any `guided_*` aliases folded in."""
    given = extra.get("structured_outputs")
    if given is not None and not isinstance(given, dict):
        raise InvalidArgument("sampling parameter 'structured_outputs' must be a JSON object")
    aliased = {GUIDED_ALIASES[k]: v for k, v in extra.items() if k in GUIDED_ALIASES}
    if given is None and not aliased:
        return None
    return {**(given or {}), **aliased}


def sampling_from_mapping(values: dict[str, Any]) -> SamplingParams:
    """`SamplingParams` from a dict of vLLM field names; unknown keys go to `extra`."""
    params = SamplingParams()
    for key, value in values.items():
        if key in _SAMPLING_DEFAULTS:
            setattr(params, key, _coerce(key, value, getattr(params, key)))
        else:
            params.extra[key] = value
    check_sampling(params)
    return params


def sampling_to_json(params: SamplingParams) -> str:
    """The `sampling_parameters` JSON for `params`: the fields that differ from vLLM's
    defaults and the extras, by vLLM name. `sampling_from_mapping` reads it back."""
    values = {
        name: getattr(params, name)
        for name, default in _SAMPLING_DEFAULTS.items()
        if getattr(params, name) != default
    }
    return json.dumps({**values, **params.extra})


def check_sampling(params: SamplingParams) -> None:
    """Reject values outside vLLM's ranges, naming the parameter. The one copy of these
    rules: the gateway, the wire parser and the HF engine call it; an engine adds only
    the limits of its own (vocabulary, sequences per batch, logprobs count)."""
    p = params
    checks = (
        ("n", p.n >= 1, "at least 1"),
        ("max_tokens", p.max_tokens is None or p.max_tokens >= 1, "at least 1"),
        ("temperature", p.temperature >= 0, ">= 0"),
        ("top_p", 0 < p.top_p <= 1, "in (0, 1]"),
        ("top_k", p.top_k >= -1, "-1, 0 (off) or a positive count"),
        ("min_p", 0.0 <= p.min_p <= 1.0, "in [0, 1]"),
        ("repetition_penalty", p.repetition_penalty > 0, "> 0"),
        ("presence_penalty", -2.0 <= p.presence_penalty <= 2.0, "in [-2, 2]"),
        ("frequency_penalty", -2.0 <= p.frequency_penalty <= 2.0, "in [-2, 2]"),
        ("min_tokens", p.min_tokens >= 0, ">= 0"),
        ("stop", all(isinstance(s, str) and s for s in p.stop), "non-empty strings"),
    )
    for name, ok, expected in checks:
        if not ok:
            value = getattr(p, name)
            raise InvalidArgument(f"sampling parameter '{name}' must be {expected}, got {value!r}")
    if p.max_tokens is not None and p.min_tokens > p.max_tokens:
        raise InvalidArgument(
            f"sampling parameter 'min_tokens' ({p.min_tokens}) exceeds "
            f"'max_tokens' ({p.max_tokens})"
        )


def check_context_length(
    prompt: int, asked: int | None, limit: int | None, *, model: str, separate: bool = False
) -> None:
    """Reject, never clamp, a generation of `prompt` tokens and at most `asked` (max_tokens)
    that does not fit the model (DESIGN.md §3): the one rule and message for the gateway and
    both engines. A decoder holds prompt and completion in one context of `limit` tokens; an
    encoder-decoder (T5, `separate`) limits each on its own. `limit` None: not known here
    (the engine checks)."""
    if limit is None:
        return
    where = f"the maximum context length of {limit} tokens of model '{model}'"
    if separate:
        if prompt > limit:
            raise InvalidArgument(f"The prompt has {prompt} tokens, more than {where}.")
        if asked is not None and asked > limit:
            raise InvalidArgument(f"max_tokens is {asked}, more than {where}.")
        return
    if prompt >= limit:
        raise InvalidArgument(
            f"The prompt has {prompt} tokens, which leaves no room for a completion in {where}."
        )
    if asked is not None and prompt + asked > limit:
        raise InvalidArgument(
            f"The prompt has {prompt} tokens and max_tokens is {asked}: {prompt + asked} tokens "
            f"({prompt} in the prompt, {asked} for the completion) do not fit {where}. "
            "Reduce the prompt or max_tokens."
        )


def generate_request(
    model: str,
    input_ids: list[int],
    sampling: SamplingParams,
    *,
    request_id: str,
    stream: bool = True,
    logprobs: bool = False,
    coalesce_deltas: bool = True,
) -> InferRequest:
    """The client side of `parse_generate_request`: token ids in, deltas only (the
    prompt is never echoed), the sampling parameters as their JSON tensor."""
    inputs = [
        Tensor("input_ids", "INT64", np.asarray(input_ids, dtype=np.int64)),
        Tensor("sampling_parameters", "BYTES", as_bytes_array([sampling_to_json(sampling)])),
        Tensor("stream", "BOOL", np.asarray([stream], dtype=np.bool_)),
        Tensor("exclude_input_in_output", "BOOL", np.asarray([True], dtype=np.bool_)),
    ]
    if logprobs:
        inputs.append(Tensor("return_logprobs", "BOOL", np.asarray([True], dtype=np.bool_)))
    parameters: dict[str, Any] = {"coalesce_deltas": True} if coalesce_deltas else {}
    return InferRequest(model, inputs, id=request_id, parameters=parameters)


def parse_generate_request(
    request: InferRequest, request_id: str
) -> tuple[GenerateRequest, LLMOptions]:
    for tensor in request.inputs:
        if tensor.name not in _KNOWN_INPUTS:
            raise InvalidArgument(
                f"unknown input '{tensor.name}' for generative model '{request.model_name}' "
                f"(expected text_input or input_ids, sampling_parameters, stream, ...)"
            )
    text, ids = request.input("text_input"), request.input("input_ids")
    if (text is None) == (ids is None):
        raise InvalidArgument(
            "a generation request needs exactly one of 'text_input' or 'input_ids'"
        )
    prompt = prompt_ids = None
    if text is not None:
        if text.datatype != "BYTES":
            raise InvalidArgument(
                f"tensor 'text_input': datatype must be BYTES, got {text.datatype}"
            )
        try:
            prompt = bytes(_scalar(text)).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidArgument("tensor 'text_input': not valid UTF-8") from None
        if not prompt:
            raise InvalidArgument("tensor 'text_input': the prompt is empty")
    else:
        assert ids is not None  # exactly one of the two is set (checked above)
        if ids.datatype not in ("INT64", "INT32"):
            raise InvalidArgument(f"tensor 'input_ids': datatype must be INT64, got {ids.datatype}")
        if ids.data.ndim > 2 or (ids.data.ndim == 2 and ids.data.shape[0] != 1):
            raise InvalidArgument(
                f"tensor 'input_ids': expected shape [n] or [1, n], got {list(ids.shape)}"
            )
        prompt_ids = [int(v) for v in ids.data.ravel()]
        if not prompt_ids:
            raise InvalidArgument("tensor 'input_ids': the prompt is empty")
        if min(prompt_ids) < 0:
            raise InvalidArgument("tensor 'input_ids': token ids must be non-negative")
    values = {k: v for k, v in request.parameters.items() if k not in _PROTOCOL_PARAMETERS}
    sampling_json = request.input("sampling_parameters")
    if sampling_json is not None:
        try:
            decoded = json.loads(bytes(_scalar(sampling_json)).decode("utf-8") or "{}")
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise InvalidArgument(
                f"tensor 'sampling_parameters': not valid JSON ({error})"
            ) from None
        if not isinstance(decoded, dict):
            raise InvalidArgument("tensor 'sampling_parameters': expected a JSON object")
        values.update(decoded)
    parameters, empty_final = request.parameters, "triton_enable_empty_final_response"
    options = LLMOptions(
        empty_final_response=parse_bool(empty_final, parameters.get(empty_final, False)),
        coalesce_deltas=parse_bool("coalesce_deltas", parameters.get("coalesce_deltas", False)),
        requested_outputs=tuple(request.requested_outputs),
    )
    for flag in _FLAG_INPUTS:
        flag_tensor = request.input(flag)
        if flag_tensor is not None:
            setattr(options, flag, parse_bool(flag, _scalar(flag_tensor)))
    generate = GenerateRequest(
        request_id=request_id,
        model=request.model_name,
        sampling=sampling_from_mapping(values),
        prompt=prompt,
        prompt_token_ids=prompt_ids,
    )
    return generate, options


def _logprobs_json(deltas: list[GenerateDelta]) -> bytes:
    entries = []
    for delta in deltas:
        for i, token_id in enumerate(delta.token_ids):
            entry: dict[str, Any] = {"token_id": token_id}
            if delta.logprobs is not None and i < len(delta.logprobs):
                entry["logprob"] = delta.logprobs[i]
            if delta.top_logprobs is not None and i < len(delta.top_logprobs):
                entry["top_logprobs"] = {str(k): v for k, v in delta.top_logprobs[i].items()}
            entries.append(entry)
    return json.dumps(entries).encode()


def response_for(
    request: InferRequest,
    options: LLMOptions,
    deltas: list[GenerateDelta],
    *,
    text_prefix: str = "",
    n: int = 1,
) -> InferResponse:
    """One response from the deltas of one sequence (streaming) or a whole generation."""
    last = deltas[-1]
    final = last.finish_reason is not None
    text = text_prefix + "".join(d.text for d in deltas)
    ids = [t for d in deltas for t in d.token_ids]
    outputs = [
        Tensor("text_output", "BYTES", as_bytes_array([text])),
        Tensor("output_ids", "INT64", np.asarray(ids, dtype=np.int64)),
    ]
    if final or options.return_finish_reason:
        outputs.append(Tensor("finish_reason", "BYTES", as_bytes_array([last.finish_reason or ""])))
    if final or options.return_num_input_tokens:
        outputs.append(
            Tensor("num_input_tokens", "INT64", np.asarray([last.num_input_tokens], dtype=np.int64))
        )
    if final or options.return_num_output_tokens:
        outputs.append(
            Tensor(
                "num_output_tokens", "INT64", np.asarray([last.num_output_tokens], dtype=np.int64)
            )
        )
    if options.return_logprobs:
        outputs.append(Tensor("logprobs", "BYTES", as_bytes_array([_logprobs_json(deltas)])))
    if n > 1:
        outputs.append(Tensor("sequence_index", "INT64", np.asarray([last.index], dtype=np.int64)))
    if options.requested_outputs:
        wanted = set(options.requested_outputs)
        outputs = [t for t in outputs if t.name in wanted]
    parameters = {"triton_final_response": False} if options.empty_final_response else {}
    return InferResponse(
        model_name=request.model_name, id=request.id, outputs=outputs, parameters=parameters
    )


def empty_final_response(request: InferRequest) -> InferResponse:
    return InferResponse(
        model_name=request.model_name,
        id=request.id,
        outputs=[],
        parameters={"triton_final_response": True},
    )


# -- client side ---------------------------------------------------------------


def _raw_values(message: pb.ModelInferResponse) -> dict[str, Sequence[Any]] | None:
    """The per-token hot path: a raw-form response's outputs without numpy. None when
    the response is in another form or shape; the codec then decodes it."""
    raw, outputs = message.raw_output_contents, message.outputs
    if not raw or len(raw) != len(outputs):
        return None
    values: dict[str, Sequence[Any]] = {}
    for tensor, data in zip(outputs, raw, strict=True):
        shape = list(tensor.shape)
        if tensor.datatype == "BYTES" and shape == [1]:
            try:
                items = split_bytes(tensor.name, data)
            except InvalidArgument:
                return None
            if len(items) != 1:
                return None
            values[tensor.name] = items
        elif tensor.datatype == "INT64" and len(shape) == 1 and shape[0] * 8 == len(data):
            values[tensor.name] = struct.unpack(f"<{shape[0]}q", data)
        else:
            return None
    return values


def _first(values: Mapping[str, Sequence[Any]], name: str) -> Any:
    items = values.get(name)
    return items[0] if items is not None and len(items) else None


def delta_from_response(message: pb.ModelInferResponse) -> GenerateDelta:
    """The client side of `response_for`: one streamed response as the delta it carries.
    Counts the response does not carry (non-final responses) are 0; `logprobs` is None
    unless the response has a `logprobs` output."""
    values = _raw_values(message)
    if values is None:
        values = {t.name: t.data.ravel().tolist() for t in infer_response_from_pb(message).outputs}
    index, reason = _first(values, "sequence_index"), _first(values, "finish_reason")
    logprobs = _first(values, "logprobs")
    delta = GenerateDelta(
        index=int(index) if index is not None else 0,
        text=bytes(_first(values, "text_output") or b"").decode("utf-8"),
        token_ids=[int(v) for v in values.get("output_ids", ())],
        num_input_tokens=int(_first(values, "num_input_tokens") or 0),
        num_output_tokens=int(_first(values, "num_output_tokens") or 0),
        finish_reason=(bytes(reason).decode() or None) if reason is not None else None,
    )
    if logprobs is not None:
        entries = json.loads(bytes(logprobs))
        delta.logprobs = [float(e["logprob"]) for e in entries if "logprob" in e]
        tops = [e["top_logprobs"] for e in entries if "top_logprobs" in e]
        if tops:
            delta.top_logprobs = [{int(k): float(v) for k, v in top.items()} for top in tops]
    return delta
