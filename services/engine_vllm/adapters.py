"""LoRA adapters served as model names of their own, on one vLLM engine.

An adapter is a PEFT folder; loading one checks its rank against the engine's
`--max-lora-rank` before vLLM sees it, so a bad folder is a clear
`InvalidArgument` rather than a worker error. Each load gets a fresh LoRA id
(vLLM caches adapters by id), so reloading a name from a new path is safe.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from services.common.errors import InvalidArgument, NotFound, Unimplemented

logger = logging.getLogger(__name__)


def adapter_rank(path: str) -> int:
    """The rank in a PEFT adapter folder's `adapter_config.json`; a missing or bad folder is a
    bad request."""
    config = Path(path) / "adapter_config.json"
    try:
        data = json.loads(config.read_text())
    except OSError:
        raise InvalidArgument(
            f"lora_path '{path}' is not a PEFT adapter folder (no adapter_config.json)"
        ) from None
    except json.JSONDecodeError as error:
        raise InvalidArgument(
            f"lora_path '{path}': adapter_config.json is not valid JSON ({error})"
        ) from None
    ranks = [data.get("r", 0), *(data.get("rank_pattern") or {}).values()]
    try:
        return max(int(r) for r in ranks)
    except (TypeError, ValueError):
        raise InvalidArgument(
            f"lora_path '{path}': adapter_config.json has no valid rank 'r'"
        ) from None


class Adapters:
    """Adapter name → vLLM `LoRARequest` for the base model `base_name`."""

    def __init__(self, base_name: str) -> None:
        self.base_name = base_name
        self._by_name: dict[str, Any] = {}
        self._next_id = 1

    def names(self) -> list[str]:
        return list(self._by_name)

    def request_for(self, model: str) -> Any:
        """None for the base model, the adapter's `LoRARequest`, or NotFound."""
        if model == self.base_name:
            return None
        if model in self._by_name:
            return self._by_name[model]
        raise NotFound(
            f"unknown model '{model}' (this engine serves: "
            f"{', '.join([self.base_name, *self._by_name])})"
        )

    async def load(self, llm: Any, name: str, path: str) -> None:
        from vllm.lora.request import LoRARequest

        lora_config = llm.vllm_config.lora_config
        if lora_config is None:
            raise Unimplemented(
                "LoRA adapters need the engine started with --enable-lora (or --lora-modules)"
            )
        if not name or name == self.base_name:
            raise InvalidArgument(f"an adapter cannot be named '{name}' (the base model's name)")
        rank = adapter_rank(path)
        if rank > lora_config.max_lora_rank:
            raise InvalidArgument(
                f"adapter '{name}' has rank {rank}; this engine allows at most --max-lora-rank "
                f"{lora_config.max_lora_rank}"
            )
        previous = self._by_name.pop(name, None)
        if previous is not None:
            await llm.remove_lora(previous.lora_int_id)
        lora = LoRARequest(
            lora_name=name,
            lora_int_id=self._next_id,
            lora_path=str(Path(path).resolve()),
            base_model_name=self.base_name,
        )
        self._next_id += 1
        try:
            await llm.add_lora(lora)
        except Exception as error:  # noqa: BLE001 - vLLM reports adapter problems as plain exceptions
            logger.warning("loading adapter %s from %s failed: %s", name, path, error)
            raise InvalidArgument(
                f"cannot load LoRA adapter '{name}' from '{path}': {error}"
            ) from None
        self._by_name[name] = lora
        logger.info("LoRA adapter %s loaded from %s", name, path)

    async def unload(self, llm: Any, name: str) -> None:
        if name == self.base_name:
            raise InvalidArgument(f"'{name}' is the base model; only LoRA adapters can be unloaded")
        lora = self._by_name.pop(name, None)
        if lora is None:
            raise NotFound(f"no LoRA adapter named '{name}' is loaded")
        if llm is not None and not llm.errored:
            await llm.remove_lora(lora.lora_int_id)
        logger.info("LoRA adapter %s unloaded", name)
