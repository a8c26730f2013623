"""`ModelRepository`: the models of one HF engine process behind one `Engine`.

A process that imports torch and transformers holds ~0.5 GB before its first model; a tiny
encoder adds a few MB to that. So one HF engine process may serve several models (the
launcher's engine groups, docs/engine-groups.md): each is an `HFEngine` of its own (its
batcher or generation scheduler, its worker thread, its series in the process's metrics), and
this class routes every call by model name, as OIP v2 addresses models.

The repository is the set of models the process was started with (`--model_dir`, or
`--model_list` + `--models`), as Triton's model repository is its folder. It implements
Triton's model repository extension:

- `models()` (RepositoryIndex) lists each of them, loaded or not: an unloaded one is
  UNAVAILABLE with the reason "unloaded", one being loaded LOADING, one being unloaded
  UNLOADING; LoRA adapters follow their base model.
- `load_model(name)` loads a model of the repository that is not loaded (a no-op for one that
  is, or for a loaded adapter); a name outside the repository is NOT_FOUND.
- `unload_model(name)` stops the model's batcher or scheduler (requests in flight on it fail
  UNAVAILABLE), drops it and gives its memory back: a garbage collection, torch's CUDA cache
  when there is one, and glibc's free lists (`malloc_trim`), so the process's RSS falls. The
  other models keep serving throughout.

Loads and unloads of one model are serialised. Every model is loaded at `start()`; a model
that fails then is fatal (the process exits and is restarted), one that fails a later
`load_model` is reported to that caller and stays unloaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from services.common import heap
from services.common.engine import (
    EncodeRequest,
    EncodeResult,
    GenerateDelta,
    GenerateRequest,
    ModelInfo,
    ModelState,
    Task,
)
from services.common.errors import InvalidArgument, NotFound, Unavailable
from services.common.model_list import load_model_list
from services.engine_hf.core import HFEngine
from services.engine_hf.metrics import EngineMetricFamilies, EngineMetrics
from services.engine_hf.settings import HFEngineSettings

logger = logging.getLogger(__name__)

UNLOADED = "unloaded"
PLATFORM = "hfmesh_transformers"


def model_settings(settings: HFEngineSettings) -> list[HFEngineSettings]:
    """The settings of each model the process serves: `settings` itself, or one per `--models`
    entry of `--model_list` (its folder, name, task and context length over the shared flags)."""
    if not settings.model_list:
        return [settings]
    try:
        plan = load_model_list(settings.model_list)
    except InvalidArgument as error:
        raise ValueError(f"--model_list: {error.message}") from None
    served = [e for e in plan.models if "huggingface" in e.backends]
    names = [n.strip() for n in (settings.models or "").split(",") if n.strip()]
    if names:
        by_name = {entry.name: entry for entry in plan.models}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise ValueError(f"--models: not in {settings.model_list}: {', '.join(unknown)}")
        elsewhere = [n for n in names if "huggingface" not in by_name[n].backends]
        if elsewhere:
            raise ValueError(f"--models: not served by the HF engine: {', '.join(elsewhere)}")
        served = [by_name[n] for n in dict.fromkeys(names)]
    if not served:
        raise ValueError(f"--model_list {settings.model_list} has no model for the HF engine")
    shared = {"model_list": None, "models": None, "model_id": None}
    return [
        settings.model_copy(
            update={
                **shared,
                "model_dir": str(Path(entry.source)),
                "model_name": entry.name,
                "task": entry.task,
                "max_model_len": entry.max_model_len,
            }
        )
        for entry in served
    ]


def release_memory() -> None:
    """Give freed memory back to the system: collect cycles (an engine and its batcher refer to
    each other; `heap.collect` reaches what the start froze too), empty torch's CUDA cache, and
    trim glibc's heap (freed small allocations otherwise stay in the process)."""
    import torch

    heap.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    libc = ctypes.util.find_library("c")
    if libc:
        trim = getattr(ctypes.CDLL(libc), "malloc_trim", None)
        if trim is not None:
            trim(0)


class ModelRepository:
    """The models `models` configures (`model_settings`), each named once."""

    def __init__(self, models: list[HFEngineSettings]) -> None:
        self.metrics = EngineMetricFamilies()
        self._configs = {config.model_name: config for config in models}
        if len(self._configs) != len(models):
            raise ValueError("a model name is given twice")
        self._engines: dict[str, HFEngine] = {}
        self._tasks: dict[str, Task | None] = {n: c.task for n, c in self._configs.items()}
        self._locks = {name: asyncio.Lock() for name in self._configs}
        # `models()` is asked on every request: its answer is kept while no load, unload or
        # adapter change is under way (the only times a model's state changes).
        self._infos: list[ModelInfo] | None = None
        self._changing = 0

    @property
    def names(self) -> list[str]:
        """The repository's model names, in the order given."""
        return list(self._configs)

    # -- lifecycle -------------------------------------------------------------

    @contextlib.contextmanager
    def _changes(self) -> Iterator[None]:
        """Around anything that changes a model's state: `models()` is computed afresh."""
        self._changing += 1
        self._infos = None
        try:
            yield
        finally:
            self._changing -= 1
            self._infos = None

    async def start(self) -> None:
        """Load every model, one after the other; the first failure is fatal (re-raised)."""
        with self._changes():
            for name in self._configs:
                await self._load(name)

    async def shutdown(self) -> None:
        with self._changes():
            for engine in list(self._engines.values()):
                await engine.shutdown()

    async def _load(self, name: str) -> None:
        engine = HFEngine(self._configs[name], EngineMetrics(name, self.metrics))
        self._engines[name] = engine
        try:
            await engine.start()
        except BaseException:
            del self._engines[name]
            await engine.shutdown()
            raise
        self._tasks[name] = engine.loaded.task if engine.loaded else self._tasks[name]

    async def load_model(self, name: str) -> None:
        if name not in self._configs:
            self._engine_of(name)  # a loaded adapter: nothing to do; anything else: NOT_FOUND
            return
        async with self._locks[name]:
            if name in self._engines:
                return
            logger.info("loading model %s", name)
            try:
                with self._changes():
                    await self._load(name)
            except Exception as error:  # noqa: BLE001 - reported to the caller, not fatal
                logger.exception("loading %s failed", name)
                raise Unavailable(f"model '{name}' failed to load: {error}") from None
            await asyncio.to_thread(heap.resettle)

    async def unload_model(self, name: str) -> None:
        if name not in self._configs:
            raise NotFound(f"unknown model '{name}' (this engine serves: {', '.join(self.names)})")
        async with self._locks[name]:
            engine = self._engines.get(name)
            if engine is None:
                return
            with self._changes():
                await engine.shutdown()
                del self._engines[name]
            del engine
            await asyncio.to_thread(release_memory)
            logger.info("unloaded model %s", name)

    # -- Engine interface --------------------------------------------------------

    def models(self) -> list[ModelInfo]:
        if self._infos is not None:
            return self._infos
        infos: list[ModelInfo] = []
        for name in self._configs:
            engine = self._engines.get(name)
            if engine is not None:
                infos += engine.models()
            else:
                task = self._tasks[name] or Task.TEXT_GENERATION
                infos.append(
                    ModelInfo(
                        name, task, ModelState.UNAVAILABLE, reason=UNLOADED, platform=PLATFORM
                    )
                )
        if not self._changing:
            self._infos = infos
        return infos

    def healthy(self) -> bool:
        return all(engine.healthy() for engine in self._engines.values())

    def _engine_of(self, model: str) -> HFEngine:
        """The engine serving `model` (a base model or one of its adapters)."""
        engine = self._engines.get(model)
        if engine is not None:
            return engine
        for candidate in self._engines.values():
            if candidate.adapters is not None and model in candidate.adapters.names():
                return candidate
        if model in self._configs:
            raise Unavailable(f"model '{model}' is not loaded (RepositoryModelLoad loads it)")
        known = ", ".join(info.name for info in self.models())
        raise NotFound(f"unknown model '{model}' (this engine serves: {known})")

    async def encode(self, request: EncodeRequest) -> EncodeResult:
        return await self._engine_of(request.model).encode(request)

    def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateDelta]:
        return self._engine_of(request.model).generate(request)

    async def abort(self, request_id: str) -> None:
        for engine in list(self._engines.values()):
            await engine.abort(request_id)

    async def load_adapter(self, name: str, path: str) -> None:
        """A LoRA adapter on the repository's one generative model."""
        if name in self._configs:
            raise InvalidArgument(f"adapter name '{name}' is a model's name")
        generative = [engine for engine in self._engines.values() if engine.adapters is not None]
        if len(generative) != 1:
            served = ", ".join(e.name for e in generative) or "none"
            raise InvalidArgument(
                f"a LoRA adapter loads on an engine with one generative model; this one has "
                f"{len(generative)} ({served}): serve the base model in an engine group of its "
                "own"
            )
        with self._changes():
            await generative[0].load_adapter(name, path)

    async def unload_adapter(self, name: str) -> None:
        if name in self._configs:
            raise InvalidArgument(f"'{name}' is a model, not an adapter")
        with self._changes():
            await self._engine_of(name).unload_adapter(name)
