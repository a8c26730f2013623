"""`VLLMEngine`: the `Engine` protocol around vLLM's `AsyncLLM` (no protobuf here).

vLLM does the serving work — continuous batching, paged KV, prefix caching,
chunked prefill, LoRA, speculative decoding, pooling. This class only maps our
typed requests onto it: prompt token ids (or text) + `SamplingParams` →
`AsyncLLM.generate` with `RequestOutputKind.DELTA`, whose outputs become one
`GenerateDelta` per sequence step. LoRA adapters are served as model names of
their own. vLLM's `EngineDeadError` (or the engine core process dying) makes
`healthy()` False; `serve_engine` then drains and exits non-zero.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from services.common import tracing
from services.common.engine import (
    EncodeRequest,
    EncodeResult,
    GenerateDelta,
    GenerateRequest,
    ModelInfo,
    ModelState,
    Task,
)
from services.common.errors import (
    InternalError,
    InvalidArgument,
    NotFound,
    Unavailable,
    Unimplemented,
)
from services.common.llm_tensors import LLM_INPUTS, LLM_OUTPUTS, check_context_length
from services.engine_vllm.adapters import Adapters
from services.engine_vllm.pooling import PoolingRunner, pooling_specs
from services.engine_vllm.sampling import to_vllm
from services.engine_vllm.settings import EngineConfig

logger = logging.getLogger(__name__)

PLATFORM = "vllm"
# Text prompts shorter than this are tokenized on the event loop (microseconds); longer ones in a
# thread.
INLINE_TOKENIZE_CHARS = 4096
_TASK_FROM_VLLM = (
    ("generate", Task.TEXT_GENERATION),
    ("embed", Task.TEXT_EMBEDDING),
    ("classify", Task.SEQUENCE_CLASSIFICATION),
)


def _in_top(rank: int | None, top_k: int) -> bool:
    """vLLM adds the sampled token to the top-k even when it ranks lower; keep only the real
    top-k (-1: all)."""
    return top_k < 0 or (rank is not None and rank <= top_k)


def _delta(output: Any, num_input: int, num_output: int, top_k: int | None) -> GenerateDelta:
    """One vLLM `CompletionOutput` (DELTA kind) as a `GenerateDelta`."""
    token_ids = list(output.token_ids)
    logprobs = top = None
    if top_k is not None and output.logprobs is not None:
        steps = list(output.logprobs)
        logprobs = [
            float(step[t].logprob) if t in step else float("nan")
            for t, step in zip(token_ids, steps, strict=True)
        ]
        top = [
            {int(t): float(lp.logprob) for t, lp in step.items() if _in_top(lp.rank, top_k)}
            for step in steps
        ]
    return GenerateDelta(
        index=output.index,
        text=output.text,
        token_ids=token_ids,
        num_input_tokens=num_input,
        num_output_tokens=num_output,
        finish_reason=output.finish_reason,
        logprobs=logprobs,
        top_logprobs=top,
    )


class VLLMEngine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.name = config.served_name
        self.task = config.task
        self._llm: Any = None
        self._pooling: PoolingRunner | None = None
        self._state = ModelState.LOADING
        self._reason = ""
        self._max_model_len = config.settings.max_model_len
        self._adapters = Adapters(self.name)

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        """Load the model (minutes on CPU) without blocking the event loop, then the static
        adapters."""
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        logger.info("loading %s with vLLM (%s)", self.config.engine_args.model, self.name)
        try:
            # A server's scheduler defaults (max_num_seqs, max_num_batched_tokens), as vLLM's own
            # API server.
            self._llm = await asyncio.to_thread(
                AsyncLLM.from_engine_args,
                self.config.engine_args,
                usage_context=UsageContext.OPENAI_API_SERVER,
            )
            self._max_model_len = self._llm.model_config.max_model_len
            if self.task is None:
                supported = await self._llm.get_supported_tasks()
                self.task = next(
                    (task for name, task in _TASK_FROM_VLLM if name in supported), None
                )
                if self.task is None:
                    raise RuntimeError(
                        f"vLLM offers tasks {supported}, none of which this engine serves"
                    )
            if not self.task.is_generative:
                settings = self.config.settings
                self._pooling = PoolingRunner(
                    self._llm,
                    self.task,
                    max_model_len=self._max_model_len,
                    add_special_tokens=not settings.disable_special_tokens,
                    return_probabilities=settings.return_probabilities,
                    return_raw_logits=settings.return_raw_logits,
                )
            for module in self.config.lora_modules:
                await self.load_adapter(module.name, module.path)
        except BaseException as error:
            self._state = ModelState.UNAVAILABLE
            self._reason = getattr(error, "message", None) or str(error) or type(error).__name__
            raise
        self._state = ModelState.READY
        logger.info(
            "model %s ready (task %s, context %d)", self.name, self.task.value, self._max_model_len
        )

    async def shutdown(self) -> None:
        self._state = ModelState.UNAVAILABLE
        llm, self._llm, self._pooling = self._llm, None, None
        if llm is not None:
            await asyncio.to_thread(llm.shutdown)

    def healthy(self) -> bool:
        if self._llm is None:
            return self._state is not ModelState.UNAVAILABLE
        return not self._llm.errored

    # -- models --------------------------------------------------------------

    def _state_now(self) -> ModelState:
        if self._llm is not None and self._llm.errored:
            return ModelState.UNAVAILABLE
        return self._state

    def models(self) -> list[ModelInfo]:
        task = self.task or Task.TEXT_GENERATION
        if task.is_generative:
            inputs, outputs = list(LLM_INPUTS), list(LLM_OUTPUTS)
        else:
            inputs, outputs = pooling_specs(task)
        state = self._state_now()
        reason = (
            "the vLLM engine died"
            if state is ModelState.UNAVAILABLE and not self._reason
            else self._reason
        )
        base = ModelInfo(
            self.name, task, state, reason, PLATFORM, self._max_model_len, inputs, outputs
        )
        adapters = [
            ModelInfo(
                name,
                task,
                state,
                reason,
                PLATFORM,
                self._max_model_len,
                inputs,
                outputs,
                base_model=self.name,
            )
            for name in self._adapters.names()
        ]
        return [base, *adapters]

    def _ready_llm(self) -> Any:
        state = self._state_now()
        if state is ModelState.LOADING:
            raise Unavailable(f"model '{self.name}' is loading")
        if state is not ModelState.READY:
            raise Unavailable(
                f"model '{self.name}' is unavailable: {self._reason or 'the vLLM engine died'}"
            )
        return self._llm

    # -- generation ----------------------------------------------------------

    async def _prompt_ids(self, request: GenerateRequest) -> list[int]:
        if request.prompt_token_ids is not None:
            if not request.prompt_token_ids:
                raise InvalidArgument("the prompt is empty")
            return list(request.prompt_token_ids)
        if not request.prompt:
            raise InvalidArgument("the prompt is empty")
        tokenizer = self._llm.get_tokenizer()
        if len(request.prompt) < INLINE_TOKENIZE_CHARS:
            return list(tokenizer.encode(request.prompt))
        return list(await asyncio.to_thread(tokenizer.encode, request.prompt))

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateDelta]:
        from vllm.exceptions import VLLMClientError
        from vllm.inputs.engine import tokens_input
        from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

        llm = self._ready_llm()
        assert self.task is not None, "start() sets the task before the model is ready"
        if not self.task.is_generative:
            raise Unimplemented(
                f"model '{self.name}' is a {self.task.value} model; it does not generate text"
            )
        lora = self._adapters.request_for(request.model)
        params = to_vllm(request.sampling)
        ids = await self._prompt_ids(request)
        check_context_length(len(ids), params.max_tokens, self._max_model_len, model=request.model)
        prompt = tokens_input(ids, prompt=request.prompt) if request.prompt else tokens_input(ids)
        produced: dict[int, int] = {}
        top_k = params.logprobs
        try:
            trace = tracing.current_request()
            async for out in llm.generate(prompt, params, request.request_id, lora_request=lora):
                if trace is not None and out.metrics is not None and out.metrics.scheduled_ts:
                    trace.queued(out.metrics.scheduled_ts - out.metrics.queued_ts)
                num_input = len(out.prompt_token_ids or ids)
                for output in out.outputs:
                    if not output.token_ids and output.finish_reason is None:
                        continue
                    produced[output.index] = produced.get(output.index, 0) + len(output.token_ids)
                    yield _delta(output, num_input, produced[output.index], top_k)
        except VLLMClientError as error:
            raise InvalidArgument(_named(str(error), params)) from None
        except EngineDeadError:
            logger.error("the vLLM engine died during request %s", request.request_id)
            raise Unavailable("the vLLM engine died; this server is shutting down") from None
        except EngineGenerateError as error:
            cause = error.__cause__
            if not produced and isinstance(cause, (ValueError, TypeError)):
                # Rejected while vLLM prepared the request (e.g. a structured-output grammar that
                # does not compile): the request is bad, as vLLM's own server answers with a 400.
                raise InvalidArgument(
                    _named(f"vLLM rejected the request: {cause}", params)
                ) from None
            logger.exception("vLLM failed request %s", request.request_id)
            raise InternalError() from None

    async def abort(self, request_id: str) -> None:
        if self._llm is not None and not self._llm.errored:
            await self._llm.abort(request_id)

    # -- encoders ------------------------------------------------------------

    async def encode(self, request: EncodeRequest) -> EncodeResult:
        from vllm.exceptions import VLLMClientError

        self._ready_llm()
        if self._pooling is None:
            raise Unimplemented(
                f"model '{self.name}' generates text; encoder requests need a pooling model"
            )
        if request.model != self.name:
            raise NotFound(f"unknown model '{request.model}' (this engine serves: {self.name})")
        try:
            return await self._pooling.encode(request)
        except VLLMClientError as error:
            raise InvalidArgument(str(error)) from None

    # -- repository ----------------------------------------------------------

    async def load_model(self, name: str) -> None:
        """The served model (and a loaded adapter) is loaded already: a no-op."""
        if name != self.name and name not in self._adapters.names():
            raise NotFound(f"unknown model '{name}' (this engine serves: {self.name})")

    async def unload_model(self, name: str) -> None:
        raise InvalidArgument(
            f"'{name}' is the base model; only LoRA adapters can be unloaded (the vLLM engine "
            "serves its model until the process stops)"
        )

    # -- LoRA adapters -------------------------------------------------------

    async def load_adapter(self, name: str, path: str) -> None:
        if self._llm is None or self._state_now() is ModelState.UNAVAILABLE:
            raise Unavailable(f"model '{self.name}' is not loaded")
        await self._adapters.load(self._llm, name, path)

    async def unload_adapter(self, name: str) -> None:
        await self._adapters.unload(self._llm, name)


_CONSTRAINT_WORDS = ("grammar", "regex", "schema", "json", "choice")


def _named(message: str, params: Any) -> str:
    """vLLM's refusal of a structured-output constraint, prefixed with the parameter it names
    (`structured_outputs`), as the HF engine words it, so the gateway can tell the client which
    field was at fault."""
    lowered = message.lower()
    if getattr(params, "structured_outputs", None) is not None and any(
        word in lowered for word in _CONSTRAINT_WORDS
    ):
        return f"'structured_outputs' does not compile: {message}"
    return message
