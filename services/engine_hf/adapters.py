"""LoRA adapters on the served generative model (PEFT through transformers' adapter API).

Each adapter is served as its own model name (DESIGN.md §3). Loading and
unloading change the model's modules, so they hold the same lock the
generation thread holds around each forward pass (`using`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from services.common.errors import InvalidArgument, NotFound

logger = logging.getLogger(__name__)


class AdapterSet:
    def __init__(self, model: Any) -> None:
        self._model = model
        self._names: list[str] = []
        self._lock = threading.RLock()

    def names(self) -> list[str]:
        return list(self._names)

    def load(self, name: str, path: str) -> None:
        folder = Path(path)
        if not (folder / "adapter_config.json").is_file():
            raise InvalidArgument(
                f"lora_path '{path}' is not a PEFT adapter folder (no adapter_config.json)"
            )
        with self._lock:
            if name in self._names:
                raise InvalidArgument(f"adapter '{name}' is already loaded")
            try:
                self._model.load_adapter(str(folder), adapter_name=name)
            except (ValueError, RuntimeError, KeyError, OSError) as error:
                raise InvalidArgument(
                    f"cannot load adapter '{name}' from '{path}': {error}"
                ) from error
            self._names.append(name)
            self._model.disable_adapters()
        logger.info("loaded LoRA adapter %s from %s", name, path)

    def unload(self, name: str) -> None:
        with self._lock:
            if name not in self._names:
                raise NotFound(f"unknown adapter '{name}'")
            self._model.delete_adapter(name)
            self._names.remove(name)
        logger.info("unloaded LoRA adapter %s", name)

    @contextlib.contextmanager
    def using(self, name: str | None) -> Iterator[None]:
        """Hold the model with `name` active (None: the base model) for one forward pass."""
        with self._lock:
            if name is not None and name not in self._names:
                raise NotFound(f"adapter '{name}' was unloaded")
            if self._names:
                if name is None:
                    self._model.disable_adapters()
                else:
                    self._model.enable_adapters()
                    self._model.set_adapter(name)
            yield
