"""Settings of the HF engine: the KServe Hugging Face runtime flags plus batching knobs."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from services.common.engine import Task

DTYPES = ("auto", "float32", "float16", "bfloat16", "float", "half")


class HFEngineSettings(BaseModel):
    host: str = Field("0.0.0.0", description="gRPC listen address")
    port: int = Field(8001, description="gRPC port (0 picks a free one)")
    model_name: str = Field("model", description="name the model is served under")
    model_id: str | None = Field(None, description="Hugging Face hub id to load (needs a reachable hub)")
    model_dir: str | None = Field(None, description="local model folder to load")
    model_revision: str | None = Field(None, description="hub revision of the model")
    tokenizer_revision: str | None = Field(None, description="hub revision of the tokenizer")
    dtype: str = Field("auto", description="auto (float32 on CPU, as KServe), float32, float16, bfloat16")
    task: Task | None = Field(None, description="task; inferred from the architecture when absent")
    backend: Literal["auto", "huggingface", "vllm"] = Field(
        "huggingface", description="KServe's backend choice; this engine is the huggingface backend"
    )
    max_model_len: int | None = Field(
        None,
        description="context length; default the model's limit",
        json_schema_extra={"aliases": ["--max_length"]},
    )
    disable_lower_case: bool = Field(False, description="do not lower-case text in the tokenizer")
    disable_special_tokens: bool = Field(False, description="do not add special tokens when tokenizing")
    trust_remote_code: bool = Field(False, description="allow model code from the model repository")
    tensor_input_names: str | None = Field(
        None, description="comma-separated token tensors accepted on the tensor path (default all the model takes)"
    )
    return_token_type_ids: bool = Field(
        False,
        description="KServe flag for a transformer in front of a remote predictor (the tokenizer service); "
        "here the model always gets the token_type_ids its tokenizer makes",
    )
    return_probabilities: bool = Field(False, description="classification/fill_mask: answer softmax probabilities")
    return_raw_logits: bool = Field(False, description="classification/fill_mask: answer raw logits")
    disable_log_requests: bool = Field(False, description="do not log each request")
    max_batch_size: int = Field(32, description="encoder rows per forward pass (1: one request at a time)")
    max_batch_wait_ms: float = Field(
        10.0,
        description="longest wait for company: an encoder batch smaller than the previous one, "
        "or the first generation request arriving at an idle engine",
    )
    max_concurrent_sequences: int = Field(32, description="generation sequences decoded together")
    metrics_port: int = Field(0, description="Prometheus /metrics port (0: off)")
    num_threads: int = Field(0, description="torch intra-op threads (0: torch's default)")
    log_level: str = Field("INFO", description="logging level")

    @model_validator(mode="after")
    def _check(self) -> "HFEngineSettings":
        if not self.model_dir and not self.model_id:
            raise ValueError("give --model_dir (a local folder) or --model_id (a hub id)")
        if self.backend == "vllm":
            raise ValueError("--backend vllm: this is the transformers engine; run services.engine_vllm instead")
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.max_batch_size < 1 or self.max_concurrent_sequences < 1:
            raise ValueError("--max_batch_size and --max_concurrent_sequences must be at least 1")
        if self.max_batch_wait_ms < 0:
            raise ValueError("--max_batch_wait_ms must be >= 0")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError("--max_model_len must be at least 1")
        return self

    @property
    def tensor_inputs(self) -> tuple[str, ...] | None:
        if not self.tensor_input_names:
            return None
        return tuple(name.strip() for name in self.tensor_input_names.split(",") if name.strip())
