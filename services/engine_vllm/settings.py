"""Settings of the vLLM engine: KServe's Hugging Face runtime flags plus every vLLM engine argument.

The command line is split in two. Flags this service defines (the KServe names,
DESIGN.md §4, in `--snake_case` or `--kebab-case`) become `VLLMEngineSettings`;
everything else goes, unchanged, to vLLM's own `AsyncEngineArgs` parser, so
`--enable-lora --max-lora-rank 8 --kv-cache-dtype ... --speculative-config ...`
mean what vLLM says they mean, and a flag neither knows is an error.
The split is exact (no prefix matching), so vLLM's `--tokenizer` is never read
as our `--tokenizer_revision`.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydantic import Field, field_validator

from services.common.architecture import infer_task
from services.common.engine import Task
from services.common.errors import InvalidArgument
from services.common.settings import KServeRuntimeFlags, build_parser, parse_settings

if TYPE_CHECKING:
    from vllm.engine.arg_utils import AsyncEngineArgs

PROG = "python -m services.engine_vllm"
DESCRIPTION = (
    "OIP v2 gRPC server around vLLM's AsyncLLM. Flags not listed here are vLLM engine arguments. "
    "--disable_lower_case, --tensor_input_names and --return_token_type_ids are accepted for "
    "KServe compatibility and change nothing here."
)

#: Tasks vLLM serves here, and the vLLM runner for each.
RUNNER_FOR_TASK = {
    Task.TEXT_GENERATION: "generate",
    Task.TEXT_EMBEDDING: "pooling",
    Task.RERANK: "pooling",
    Task.SEQUENCE_CLASSIFICATION: "pooling",
}


class VLLMEngineSettings(KServeRuntimeFlags):
    lora_modules: list[str] = Field(
        default_factory=list,
        description="LoRA adapters served at start: name=path or JSON {name, path}",
    )
    cpu_kv_cache_sequences: int = Field(
        8,
        ge=0,
        description="on CPU, when neither --kv-cache-memory-bytes, --gpu-memory-utilization nor "
        "VLLM_CPU_KVCACHE_SPACE is given: size the KV cache for this many sequences of the full "
        "context length (max_model_len), at most --cpu_kv_cache_gib (0: --cpu_kv_cache_gib "
        "itself). vLLM's own default reserves 92%% of the machine's memory and refuses to "
        "start beside other services; on CPU the whole cache is resident from the start",
    )
    cpu_kv_cache_gib: int = Field(
        2,
        ge=1,
        description="on CPU: the most GiB the KV cache sized by --cpu_kv_cache_sequences takes",
    )

    @field_validator("backend")
    @classmethod
    def _this_backend(cls, value: str) -> str:
        if value not in ("auto", "vllm"):
            raise ValueError(f"this is the vLLM engine; '{value}' is served by another engine")
        return value


@dataclass(frozen=True)
class LoraModule:
    name: str
    path: str


@dataclass
class EngineConfig:
    """Everything the engine needs, resolved: our settings, vLLM's args, the task, the adapters."""

    settings: VLLMEngineSettings
    engine_args: AsyncEngineArgs  # vLLM is imported lazily, when the args are built
    task: Task | None
    lora_modules: list[LoraModule] = field(default_factory=list)

    @property
    def served_name(self) -> str:
        return self.settings.model_name


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """(our flags with their values, the rest for vLLM), by exact flag name."""
    actions = build_parser(
        VLLMEngineSettings, prog=PROG, description=DESCRIPTION
    )._option_string_actions
    ours: list[str] = []
    rest: list[str] = []
    index = 0
    while index < len(argv):
        token = argv[index]
        flag = token.split("=", 1)[0]
        action = actions.get(flag) if token.startswith("--") else None
        if action is None:
            rest.append(token)
            index += 1
            continue
        ours.append(token)
        index += 1
        if "=" in token or action.nargs == 0:
            continue
        if action.nargs == "*":
            while index < len(argv) and not argv[index].startswith("--"):
                ours.append(argv[index])
                index += 1
        elif index < len(argv):
            ours.append(argv[index])
            index += 1
    return ours, rest


def parse_lora_module(spec: str) -> LoraModule:
    """`name=path` or JSON `{"name": ..., "path": ...}`, as vLLM's --lora-modules takes them."""
    text = spec.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise InvalidArgument(f"--lora-modules: invalid JSON {spec!r} ({error})") from None
        if not isinstance(data, dict) or not data.get("name") or not data.get("path"):
            raise InvalidArgument(f"--lora-modules: {spec!r} needs 'name' and 'path'")
        return LoraModule(str(data["name"]), str(data["path"]))
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise InvalidArgument(f"--lora-modules: expected name=path, got {spec!r}")
    return LoraModule(name, path)


def vllm_dtype_arg(dtype: str, *, on_cpu: bool) -> str:
    """KServe's `auto`, with DESIGN.md §8: bfloat16 gives wrong answers on vLLM CPU, so auto is
    float32 there."""
    return "float32" if dtype == "auto" and on_cpu else dtype


def vllm_parser() -> argparse.ArgumentParser:
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog=f"{PROG} (vLLM engine arguments)")
    return AsyncEngineArgs.add_cli_args(parser)


def build_config(argv: list[str] | None = None, *, on_cpu: bool | None = None) -> EngineConfig:
    """Parse the whole command line into an `EngineConfig`; bad flags exit with a usage message."""
    import sys

    from vllm.engine.arg_utils import AsyncEngineArgs

    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        build_parser(VLLMEngineSettings, prog=PROG, description=DESCRIPTION).print_help()
        print("\nEvery other flag is a vLLM engine argument:\n")
        vllm_parser().print_help()
        raise SystemExit(0)
    ours, rest = split_argv(argv)
    settings, _ = parse_settings(
        VLLMEngineSettings, ours, prog=PROG, description=DESCRIPTION, allow_unknown=True
    )
    parser = vllm_parser()
    namespace = parser.parse_args(rest)
    model = settings.model_dir or settings.model_id
    if model is None and any(t.split("=", 1)[0] == "--model" for t in rest):
        model = namespace.model
    if model is None:
        parser.error("give the model with --model_dir (a local folder) or --model_id")
    try:
        task: Task | None = infer_task(model, settings.task)
    except InvalidArgument:
        task = None  # a hub id, or an architecture KServe's rules do not name: vLLM decides
    try:
        lora_modules = [parse_lora_module(spec) for spec in settings.lora_modules]
    except InvalidArgument as error:
        parser.error(error.message)
    if task is not None and task not in RUNNER_FOR_TASK:
        parser.error(
            f"task {task.value} is not served by the vLLM engine; "
            "use the HF engine (--backend huggingface)"
        )
    if on_cpu is None:
        from vllm.platforms import current_platform

        on_cpu = current_platform.is_cpu()
    # Our flags win over vLLM's defaults; set on the namespace, since AsyncEngineArgs
    # resolves the model path as soon as it is constructed.
    overrides = {
        "model": model,
        "served_model_name": [settings.model_name],
        "dtype": vllm_dtype_arg(settings.dtype, on_cpu=on_cpu),
        "trust_remote_code": settings.trust_remote_code,
        "enable_log_requests": not settings.disable_log_requests,
        "max_model_len": settings.max_model_len,
        "revision": settings.model_revision,
        "tokenizer_revision": settings.tokenizer_revision,
        "runner": RUNNER_FOR_TASK[task] if task is not None else None,
        "enable_lora": True if lora_modules else None,
    }
    for name, value in overrides.items():
        if value is not None:
            setattr(namespace, name, value)
    args = AsyncEngineArgs.from_cli_args(namespace)
    if on_cpu and _kv_cache_unsized(rest):
        args.kv_cache_memory_bytes = cpu_kv_cache_bytes(args, settings)
    return EngineConfig(settings=settings, engine_args=args, task=task, lora_modules=lora_modules)


#: KV cache sizes are rounded up to whole blocks of the largest block size vLLM's CPU backends
#: use (its attention backends take 128 or 256 tokens per block).
KV_BLOCK_TOKENS = 256


def cpu_kv_cache_bytes(args: AsyncEngineArgs, settings: VLLMEngineSettings) -> int:
    """The KV cache `--cpu_kv_cache_sequences` full contexts take, at most `--cpu_kv_cache_gib`.

    Per token, every attention layer holds a key and a value per KV head: 2 x layers x KV heads
    x head size x the cache dtype's bytes (for models whose layers do not all attend over the
    whole context, an upper bound). `max_model_len` as vLLM resolves it (the flag, or the
    model's limit)."""
    cap = settings.cpu_kv_cache_gib * 2**30
    if not settings.cpu_kv_cache_sequences:
        return cap
    model = args.create_model_config()
    cache_dtype = str(args.kv_cache_dtype)
    if cache_dtype.startswith("fp8"):
        itemsize = 1
    elif cache_dtype in ("bfloat16", "float16"):
        itemsize = 2
    else:
        itemsize = getattr(model.dtype, "itemsize", 4)  # resolved to a torch dtype by now
    per_token = (
        2
        * model.get_total_num_hidden_layers()
        * model.get_total_num_kv_heads()
        * model.get_head_size()
        * itemsize
    )
    tokens = settings.cpu_kv_cache_sequences * model.max_model_len
    blocks = -(-tokens // KV_BLOCK_TOKENS)
    return min(cap, blocks * KV_BLOCK_TOKENS * per_token)


def _kv_cache_unsized(vllm_argv: list[str]) -> bool:
    import os

    given = {token.split("=", 1)[0].replace("_", "-") for token in vllm_argv}
    sized = {"--kv-cache-memory-bytes", "--gpu-memory-utilization"} & given
    return not sized and not os.environ.get("VLLM_CPU_KVCACHE_SPACE")
