"""The interface every engine implements, and the typed values that cross it.

`engine_hf` and `engine_vllm` both implement `Engine`; the shared OIP v2
servicer (`services.common.oip_servicer`), the tests and fakes only ever see
this protocol. Nothing here imports protobuf, torch or an engine library, nor numpy at run time
(its arrays are only named in annotations): the model list, which the launcher, the gateway and
the control plane read, imports this module for `Task`.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np


class Task(str, enum.Enum):
    """The seven tasks, named as KServe's Hugging Face runtime names them."""

    TEXT_GENERATION = "text_generation"
    TEXT2TEXT_GENERATION = "text2text_generation"
    FILL_MASK = "fill_mask"
    TOKEN_CLASSIFICATION = "token_classification"
    SEQUENCE_CLASSIFICATION = "sequence_classification"
    TEXT_EMBEDDING = "text_embedding"
    RERANK = "rerank"

    @property
    def is_generative(self) -> bool:
        return self in (Task.TEXT_GENERATION, Task.TEXT2TEXT_GENERATION)


class ModelState(str, enum.Enum):
    """Repository states, as Triton's RepositoryIndex reports them."""

    LOADING = "LOADING"
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    UNLOADING = "UNLOADING"


@dataclass(frozen=True)
class TensorSpec:
    """One input or output as ModelMetadata describes it (-1: any size)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass
class ModelInfo:
    """A model (or LoRA adapter) an engine serves."""

    name: str
    task: Task
    state: ModelState = ModelState.LOADING
    reason: str = ""
    platform: str = ""
    max_model_len: int | None = None
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)
    # For an adapter: the model it applies to.
    base_model: str | None = None

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY


@dataclass
class SamplingParams:
    """Sampling parameters, with vLLM's `SamplingParams` field names and defaults.

    `extra` holds fields one engine understands and another may not (vLLM's
    structured outputs, `logit_bias`, ...); an engine that cannot honour a key
    raises `InvalidArgument` naming it rather than ignoring it.
    """

    max_tokens: int | None = 16
    min_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    n: int = 1
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None
    skip_special_tokens: bool = True
    extra: dict[str, object] = field(default_factory=dict)


@dataclass
class GenerateRequest:
    """One generation. Exactly one of `prompt` / `prompt_token_ids` is set."""

    request_id: str
    model: str
    sampling: SamplingParams
    prompt: str | None = None
    prompt_token_ids: list[int] | None = None


@dataclass
class GenerateDelta:
    """New output of one sequence (`index` < n) since the previous delta.

    `text` and `token_ids` are increments, never cumulative. The last delta of
    a sequence has `finish_reason` set ("stop", "length", "abort").
    `logprobs[i]` is the log-probability of `token_ids[i]` when requested.
    """

    index: int
    text: str
    token_ids: list[int]
    num_input_tokens: int
    num_output_tokens: int
    finish_reason: str | None = None
    logprobs: list[float] | None = None
    # Top-k alternatives per new token: [{token_id: logprob}], when requested.
    top_logprobs: list[dict[int, float]] | None = None


@dataclass
class EncodeRequest:
    """An encoder-task request in one of two styles.

    Text style: `texts` (one per batch item; for rerank, `pairs` of
    query/document). Tensor style: `tensors` by input name (`input_ids`,
    `attention_mask`, `token_type_ids`, [N, L] int64) → raw tensors out.
    """

    request_id: str
    model: str
    texts: list[str] | None = None
    pairs: list[tuple[str, str]] | None = None
    tensors: dict[str, np.ndarray] | None = None
    # Per-request options (e.g. return_probabilities) from OIP parameters.
    options: dict[str, object] = field(default_factory=dict)


@dataclass
class EncodeResult:
    """Named output arrays; text-style results use BYTES (object arrays of bytes) where the task
    answers text."""

    outputs: dict[str, np.ndarray]


@runtime_checkable
class Engine(Protocol):
    """What the OIP v2 servicer and `services.common.server.serve_engine` need from an engine."""

    async def start(self) -> None:
        """Load the model (health stays NOT_SERVING meanwhile); raises when it cannot be served."""
        ...

    async def shutdown(self) -> None:
        """Stop the engine's work and release the model (after the server has drained)."""
        ...

    def models(self) -> list[ModelInfo]:
        """Every model this engine serves (base models and adapters)."""
        ...

    def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateDelta]:
        """Stream deltas; raises `InvalidArgument` for bad parameters before yielding."""
        ...

    async def encode(self, request: EncodeRequest) -> EncodeResult: ...

    async def abort(self, request_id: str) -> None:
        """Stop a running request; a no-op when it has already finished."""
        ...

    async def load_model(self, name: str) -> None:
        """Triton's RepositoryModelLoad of a model (not an adapter): load it if it is in this
        engine's repository and not loaded; a no-op when it is loaded."""
        ...

    async def unload_model(self, name: str) -> None:
        """Triton's RepositoryModelUnload of a base model: stop serving it and free its memory
        (it stays in the repository index as UNAVAILABLE), or refuse when this engine cannot."""
        ...

    async def load_adapter(self, name: str, path: str) -> None: ...

    async def unload_adapter(self, name: str) -> None: ...

    def healthy(self) -> bool:
        """False once the engine cannot serve any more (the process should exit)."""
        ...
