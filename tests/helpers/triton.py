"""`tritonclient` inputs as a Triton user builds them (one `InferInput` serves grpc and aio)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from tritonclient.grpc import InferenceServerClient, InferInput

from services.launcher.processes import ServiceProcess


@contextmanager
def clients(services: Mapping[str, ServiceProcess]) -> Iterator[dict[str, InferenceServerClient]]:
    """One gRPC client per service, by the same keys; closed on exit."""
    made = {name: InferenceServerClient(service.address) for name, service in services.items()}
    try:
        yield made
    finally:
        for client in made.values():
            client.close()


def _input(name: str, datatype: str, array: np.ndarray) -> InferInput:
    tensor = InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def bytes_input(name: str, values: Sequence[str]) -> InferInput:
    """BYTES [len(values)], each string UTF-8 encoded."""
    return _input(name, "BYTES", np.array([v.encode() for v in values], dtype=object))


def bool_input(name: str, value: bool) -> InferInput:
    """BOOL [1]: the flags of the LLM and tokenizer models."""
    return _input(name, "BOOL", np.array([value]))


def int_input(name: str, array: Any) -> InferInput:
    """INT64 in the array's shape (token ids, attention masks)."""
    return _input(name, "INT64", np.ascontiguousarray(array, dtype=np.int64))


def llm_inputs(
    prompt: str | Sequence[int], sampling: dict[str, Any], **flags: bool
) -> list[InferInput]:
    """`text_input` (`input_ids` for token ids), `sampling_parameters` JSON, one BOOL per flag."""
    first = (
        bytes_input("text_input", [prompt])
        if isinstance(prompt, str)
        else int_input("input_ids", prompt)
    )
    flag_inputs = [bool_input(name, value) for name, value in flags.items()]
    return [first, bytes_input("sampling_parameters", [json.dumps(sampling)]), *flag_inputs]
