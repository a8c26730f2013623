"""Settings of the HF engine: the KServe Hugging Face runtime flags plus batching knobs."""

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
        if not self.model_dir and not self.model_id:
            raise ValueError("give --model_dir (a local folder) or --model_id (a hub id)")
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
