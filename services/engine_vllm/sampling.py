"""`services.common.engine.SamplingParams` → vLLM `SamplingParams`, with errors that name the
parameter.

Every field of ours has the vLLM name and meaning, so msgspec reads the
dataclass's attributes straight into vLLM's struct. `extra` may hold any other
public vLLM field (`logit_bias`, `structured_outputs`, `bad_words`,
`allowed_token_ids`, `min_tokens`, ...) and the older `guided_*` names of
structured outputs. A key vLLM does not have, or one that would change what
the stream carries (`output_kind`, `detokenize`, prompt logprobs), is refused
with `InvalidArgument` naming it — never silently ignored.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from services.common.engine import SamplingParams
from services.common.errors import InvalidArgument
from services.common.llm_tensors import GUIDED_ALIASES, structured_outputs

# vLLM fields a request may not set: the engine needs incremental, detokenized output.
RESERVED_FIELDS = frozenset(
    {
        "output_kind",
        "detokenize",
        "skip_clone",
        "output_text_buffer_length",
        "flat_logprobs",
        "prompt_logprobs",
        "prompt_logprob_token_ids",
        "prompt_logprob_start",
        "trace_decode_token_ids",
        "routed_experts_prompt_start",
    }
)


def vllm_field_names() -> frozenset[str]:
    import msgspec
    from vllm import SamplingParams as VLLMSamplingParams

    return frozenset(
        f.name for f in msgspec.structs.fields(VLLMSamplingParams) if not f.name.startswith("_")
    )


def vllm_extras(extra: dict[str, Any]) -> dict[str, Any]:
    """The extras as vLLM fields (guided aliases folded into `structured_outputs`);
    a reserved or unknown key raises `InvalidArgument` naming it."""
    known = vllm_field_names()
    values: dict[str, Any] = {}
    for key, value in extra.items():
        if key in GUIDED_ALIASES or key == "structured_outputs":
            continue
        if key in RESERVED_FIELDS:
            raise InvalidArgument(f"sampling parameter '{key}' cannot be set on this engine")
        if key not in known:
            raise InvalidArgument(
                f"unknown sampling parameter '{key}' (not a vLLM SamplingParams field)"
            )
        values[key] = value
    structured = structured_outputs(extra)
    if structured is not None:
        values["structured_outputs"] = structured
    return values


def _parameter_of(error: Exception) -> str | None:
    """The field a msgspec error points at (`... - at `$.n``)."""
    text = str(error)
    marker = "`$."
    start = text.find(marker)
    if start < 0:
        return None
    name = text[start + len(marker) :].split("`", 1)[0]
    return name.split(".", 1)[0].split("[", 1)[0] or None


def to_vllm(sampling: SamplingParams):
    """A vLLM `SamplingParams` streaming deltas; bad values raise `InvalidArgument` naming the
    parameter."""
    import msgspec
    from vllm import SamplingParams as VLLMSamplingParams
    from vllm.exceptions import VLLMValidationError
    from vllm.sampling_params import RequestOutputKind

    extras = vllm_extras(sampling.extra)
    # Extras are read as attributes beside ours; without any, the dataclass is read as it is.
    source = SimpleNamespace(**{**vars(sampling), **extras}) if extras else sampling
    try:
        params = msgspec.convert(source, VLLMSamplingParams, strict=False, from_attributes=True)
    except msgspec.ValidationError as error:
        name = _parameter_of(error)
        where = f"sampling parameter '{name}'" if name else "sampling parameters"
        raise InvalidArgument(f"{where}: {str(error).split(' - at ', 1)[0]}") from None
    except VLLMValidationError as error:
        raise InvalidArgument(f"invalid sampling parameters: {error}") from None
    except (ValueError, TypeError) as error:
        raise InvalidArgument(f"invalid sampling parameters: {error}") from None
    params.output_kind = RequestOutputKind.DELTA
    return params
