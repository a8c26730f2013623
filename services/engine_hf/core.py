"""`HFEngine`: a transformers model behind the `Engine` interface, for all seven tasks.

Encoder tasks go through a `DynamicBatcher` (concurrent requests share a forward
pass); generation goes through the `GenerationScheduler` (concurrent sequences
decode together, admitted between steps). Both run their forward passes in
worker threads. No protobuf here: `services.common.oip_servicer` adapts it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from services.common import heap, tracing
from services.common.engine import (
    EncodeRequest,
    EncodeResult,
    GenerateDelta,
    GenerateRequest,
    ModelInfo,
    ModelState,
    Task,
)
from services.common.errors import InvalidArgument, NotFound, Unavailable, Unimplemented
from services.common.llm_tensors import check_context_length
from services.engine_hf import grammar, sampling
from services.engine_hf.adapters import AdapterSet
from services.engine_hf.batcher import DynamicBatcher
from services.engine_hf.encoder import EncoderRunner, request_rows
from services.engine_hf.generation import GenerationScheduler
from services.engine_hf.loading import LoadedModel, load_model
from services.engine_hf.metadata import tensor_specs
from services.engine_hf.metrics import EngineMetrics
from services.engine_hf.sequence import ActiveRequest
from services.engine_hf.settings import HFEngineSettings

logger = logging.getLogger(__name__)


class HFEngine:
    """One model. `metrics`: its series in the process's registry (default: a registry of its
    own); `services.engine_hf.repository` serves several of these in one process."""

    def __init__(self, settings: HFEngineSettings, metrics: EngineMetrics | None = None) -> None:
        self.settings = settings
        self.name = settings.model_name
        self.metrics = metrics or EngineMetrics(settings.model_name)
        self.loaded: LoadedModel | None = None
        self._state = ModelState.LOADING
        self._reason = ""
        self._task: Task | None = settings.task
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-encoder")
        self._batcher: DynamicBatcher[EncodeRequest, EncodeResult] | None = None
        self._scheduler: GenerationScheduler | None = None
        self._runner: EncoderRunner | None = None
        self.adapters: AdapterSet | None = None
        self._grammars: grammar.GrammarCache | None = None  # built on first structured request
        # Fast tokenizers are not safe to call from several threads at once.
        self._tokenizer_lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Load the model off the event loop; failures are fatal (re-raised)."""
        try:
            self.loaded = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._load_sync
            )
        except Exception as error:
            self._state, self._reason = ModelState.UNAVAILABLE, str(error)
            raise
        self._task = self.loaded.task
        if self._task.is_generative:
            self.adapters = AdapterSet(self.loaded.model)
            self._scheduler = GenerationScheduler(
                model=self.loaded.model,
                tokenizer=self.loaded.tokenizer,
                seq2seq=self._task is Task.TEXT2TEXT_GENERATION,
                max_model_len=self.loaded.max_model_len,
                max_sequences=self.settings.max_concurrent_sequences,
                batch_wait_ms=self.settings.max_batch_wait_ms,
                metrics=self.metrics,
                adapter_scope=self.adapters.using,
            )
            self._scheduler.start()
        else:
            self._batcher = DynamicBatcher(
                self._run_encoder_batch,
                rows=request_rows,
                max_batch_size=self.settings.max_batch_size,
                max_wait_ms=self.settings.max_batch_wait_ms,
                executor=self._executor,
                on_change=self._encoder_load,
            )
            self._batcher.start()
        self._state = ModelState.READY

    def _load_sync(self) -> LoadedModel:
        import torch

        if self.settings.num_threads > 0:
            torch.set_num_threads(self.settings.num_threads)
        loaded = load_model(self.settings)
        if not loaded.task.is_generative:
            self._runner = EncoderRunner(
                loaded,
                add_special_tokens=not self.settings.disable_special_tokens,
                tensor_inputs=self.settings.tensor_inputs,
                return_probabilities=self.settings.return_probabilities,
                return_raw_logits=self.settings.return_raw_logits,
            )
        return loaded

    async def shutdown(self) -> None:
        self._state = ModelState.UNLOADING
        if self._batcher is not None:
            await self._batcher.stop()
        if self._scheduler is not None:
            await asyncio.to_thread(self._scheduler.stop)
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._state = ModelState.UNAVAILABLE

    # -- Engine interface --------------------------------------------------------

    def models(self) -> list[ModelInfo]:
        task = self._task or Task.TEXT_GENERATION
        inputs, outputs = tensor_specs(task, self._runner, self.loaded, self.settings)
        base = ModelInfo(
            name=self.name,
            task=task,
            state=self._state,
            reason=self._reason,
            platform="hfmesh_transformers",
            max_model_len=self.loaded.max_model_len if self.loaded else None,
            inputs=inputs,
            outputs=outputs,
        )
        infos = [base]
        if self.adapters is not None:
            for name in self.adapters.names():
                infos.append(
                    ModelInfo(
                        name=name,
                        task=task,
                        state=self._state,
                        platform=base.platform,
                        max_model_len=base.max_model_len,
                        inputs=inputs,
                        outputs=outputs,
                        base_model=self.name,
                    )
                )
        return infos

    def healthy(self) -> bool:
        """False once the generation thread has died (the process should exit and be restarted)."""
        return not (
            self._scheduler is not None
            and self._state is ModelState.READY
            and not self._scheduler.alive()
        )

    def _check_model(self, name: str) -> None:
        known = [self.name, *(self.adapters.names() if self.adapters else [])]
        if name not in known:
            raise NotFound(f"unknown model '{name}' (this engine serves: {', '.join(known)})")
        if self._state is not ModelState.READY:
            raise Unavailable(f"model '{name}' is not ready ({self._state.value.lower()})")

    async def encode(self, request: EncodeRequest) -> EncodeResult:
        self._check_model(request.model)
        if self._batcher is None:
            assert self._task is not None, "start() sets the task before the model is ready"
            raise Unimplemented(
                f"model '{self.name}' serves {self._task.value}; encoding needs an encoder task"
            )
        if not self.settings.disable_log_requests:
            logger.info("encode %s: %d rows", request.request_id, request_rows(request))
        return await self._batcher.submit(request)

    def _encoder_load(self, waiting: int, running: int) -> None:
        self.metrics.waiting.set(waiting)
        self.metrics.running.set(running)

    def _run_encoder_batch(self, requests: list[EncodeRequest]):
        assert self._runner is not None
        return self._runner.run_batch(requests)

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateDelta]:
        self._check_model(request.model)
        if self._scheduler is None or self.loaded is None:
            assert self._task is not None, "start() sets the task before the model is ready"
            raise Unimplemented(
                f"model '{self.name}' serves {self._task.value}; generation needs text_generation "
                "or text2text_generation"
            )
        prompt_ids = await asyncio.to_thread(self._prompt_ids, request)
        max_tokens = self._max_tokens(request, len(prompt_ids))
        sampling.validate(
            request.sampling,
            vocab_size=self._vocab_size(),
            max_sequences=self.settings.max_concurrent_sequences,
        )
        if not self.settings.disable_log_requests:
            logger.info(
                "generate %s: %d prompt tokens, max_tokens %d, n %d",
                request.request_id,
                len(prompt_ids),
                max_tokens,
                request.sampling.n,
            )
        adapter = request.model if request.model != self.name else None
        constraint = grammar.constraint(request.sampling.extra)
        compiled = await asyncio.to_thread(self._compile, constraint) if constraint else None
        active = ActiveRequest(
            request,
            prompt_ids,
            max_tokens,
            asyncio.get_running_loop(),
            asyncio.Queue(),
            adapter,
            grammar=compiled,
        )
        active.trace = tracing.current_request()
        self._scheduler.submit(active)
        remaining = request.sampling.n
        try:
            while remaining:
                item = await active.queue.get()
                if isinstance(item, BaseException):
                    raise item
                if item.finish_reason is not None:
                    remaining -= 1
                yield item
        finally:
            if remaining:
                self._scheduler.abort(request.request_id)

    def _compile(self, key: tuple[str, str, bool]) -> object:
        """The compiled grammar of a structured-output constraint (cached by its text)."""
        assert self.loaded is not None and self._scheduler is not None
        with self._tokenizer_lock:
            if self._grammars is None:
                self._grammars = grammar.GrammarCache(
                    self.loaded.tokenizer,
                    vocab_size=self._vocab_size(),
                    stop_ids=self._scheduler.eos_ids,
                )
        return self._grammars.compile(key)

    def _vocab_size(self) -> int:
        assert self.loaded is not None
        return int(self.loaded.model.get_output_embeddings().weight.shape[0])

    def _prompt_ids(self, request: GenerateRequest) -> list[int]:
        assert self.loaded is not None
        if request.prompt_token_ids is not None:
            ids = list(request.prompt_token_ids)
            vocab = self._vocab_size()
            bad = [t for t in ids if not 0 <= t < vocab]
            if bad:
                raise InvalidArgument(
                    f"tensor 'input_ids': token id {bad[0]} is outside the vocabulary [0, "
                    f"{vocab - 1}]"
                )
            return ids
        with self._tokenizer_lock:
            ids = self.loaded.tokenizer(request.prompt or "")["input_ids"]
        if not ids:
            raise InvalidArgument("the prompt tokenizes to nothing")
        return list(ids)

    def _max_tokens(self, request: GenerateRequest, prompt_len: int) -> int:
        """The tokens to generate at most: `max_tokens`, or when unset all the model allows."""
        assert self.loaded is not None
        limit = self.loaded.max_model_len
        asked = request.sampling.max_tokens
        separate = self._task is Task.TEXT2TEXT_GENERATION
        check_context_length(prompt_len, asked, limit, model=request.model, separate=separate)
        if asked is not None:
            return asked
        return limit if separate else limit - prompt_len

    async def abort(self, request_id: str) -> None:
        if self._scheduler is not None:
            self._scheduler.abort(request_id)

    async def load_adapter(self, name: str, path: str) -> None:
        if self.adapters is None or self._state is not ModelState.READY:
            raise Unimplemented(
                f"model '{self.name}' ({(self._task or Task.TEXT_GENERATION).value}) takes no LoRA "
                "adapters"
            )
        if name == self.name:
            raise InvalidArgument(f"adapter name '{name}' is the base model's name")
        await asyncio.get_running_loop().run_in_executor(
            self._executor, self.adapters.load, name, path
        )

    async def unload_adapter(self, name: str) -> None:
        if name == self.name:
            raise InvalidArgument(f"'{name}' is the base model; only adapters can be unloaded")
        if self.adapters is None or name not in self.adapters.names():
            raise NotFound(f"unknown adapter '{name}'")
        self.adapters.unload(name)
        await asyncio.to_thread(heap.resettle)
