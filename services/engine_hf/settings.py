"""Settings of the HF engine: the KServe Hugging Face runtime flags plus batching knobs.

One process serves one model (`--model_dir` / `--model_id`, as KServe's runtime) or several
from a planned model list (`--model_list` + `--models`: each entry brings its folder, name,
task and context length; every other flag applies to all of them).
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from services.common.settings import KServeRuntimeFlags

DTYPES = ("auto", "float32", "float16", "bfloat16", "float", "half")


class HFEngineSettings(KServeRuntimeFlags):
    max_batch_size: int = Field(
        32, description="encoder rows per forward pass (1: one request at a time)"
    )
    max_batch_wait_ms: float = Field(
        10.0,
        description="longest wait for company: an encoder batch smaller than the previous one, "
        "or the first generation request arriving at an idle engine",
    )
    max_concurrent_sequences: int = Field(32, description="generation sequences decoded together")
    num_threads: int = Field(0, description="torch intra-op threads (0: torch's default)")
    model_list: str | None = Field(
        None,
        description="planned model list (YAML, as the launcher writes it): serve the models "
        "--models names from it in this one process, each with its entry's folder, name, task "
        "and max_model_len (instead of --model_dir/--model_id)",
    )
    models: str | None = Field(
        None,
        description="with --model_list: comma-separated model names to serve (default: every "
        "model of the list the HF engine serves)",
    )
    omp_wait_policy: str = Field(
        "default",
        description="how torch's OpenMP threads wait between parallel regions (OMP_WAIT_POLICY, "
        "set before torch loads; an OMP_WAIT_POLICY already in the environment wins): "
        "'default' leaves OpenMP's bounded spinning (quickest on cores the engine mostly has "
        "to itself); 'passive' sleeps at once, leaving the CPU to the gateway, the tokenizer "
        "and other engines on busy shared cores (docs/performance.md); 'active' always spins",
    )

    @field_validator("backend")
    @classmethod
    def _this_backend(cls, value: str) -> str:
        if value == "vllm":
            raise ValueError(
                "--backend vllm: this is the transformers engine; run services.engine_vllm instead"
            )
        if value not in ("auto", "huggingface"):
            raise ValueError(f"this is the transformers engine (auto, huggingface), got '{value}'")
        return value

    @model_validator(mode="after")
    def _check(self) -> HFEngineSettings:
        if self.model_list and (self.model_dir or self.model_id):
            raise ValueError("give either --model_list or --model_dir/--model_id, not both")
        if self.models and not self.model_list:
            raise ValueError("--models names models of a --model_list")
        if not self.model_list and not self.model_dir and not self.model_id:
            raise ValueError(
                "give --model_dir (a local folder), --model_id (a hub id) or --model_list"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.max_batch_size < 1 or self.max_concurrent_sequences < 1:
            raise ValueError("--max_batch_size and --max_concurrent_sequences must be at least 1")
        if self.max_batch_wait_ms < 0:
            raise ValueError("--max_batch_wait_ms must be >= 0")
        if self.omp_wait_policy not in ("default", "passive", "active"):
            raise ValueError(
                f"--omp_wait_policy is default, passive or active, got {self.omp_wait_policy!r}"
            )
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError("--max_model_len must be at least 1")
        return self

    @property
    def tensor_inputs(self) -> tuple[str, ...] | None:
        if not self.tensor_input_names:
            return None
        return tuple(name.strip() for name in self.tensor_input_names.split(",") if name.strip())
