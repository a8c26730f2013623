"""The gateway's settings. The only place the gateway reads the environment."""

from __future__ import annotations

import os
from typing import ClassVar, Literal

from pydantic import Field, field_validator

from services.common.settings import TlsFlags, parse_settings
from services.gateway.policy import RoutingOptions

ROUTE_PREFIX_ENV = "KSERVE_OPENAI_ROUTE_PREFIX"
ENCODER_ROUTES = ("auto", "split")


class GatewaySettings(TlsFlags):
    """`--tls_*` secure the gateway's gRPC calls into the mesh; its HTTP port is plain."""

    tls_serves: ClassVar[bool] = False

    host: str = Field("0.0.0.0", description="HTTP listen address")
    port: int = Field(8080, description="HTTP port")
    model_list: str | None = Field(
        None, description="mesh model list (YAML): models, tasks, backends, endpoints"
    )
    control_plane: str | None = Field(
        None,
        description="host:port of the control plane: follow each model's replicas from it "
        "(the model list's endpoints are then only where it starts)",
    )
    openai_route_prefix: str = Field(
        "openai", description=f"prefix of the OpenAI routes (env {ROUTE_PREFIX_ENV}; empty: none)"
    )
    api_key: str | None = Field(
        None,
        description="require 'Authorization: Bearer <key>' on inference routes (the key is "
        "one more tenant, 'default': every model, no budget)",
    )
    tenants_file: str | None = Field(
        None,
        description="tenants file (YAML or JSON): each tenant's hashed API keys, models and "
        "requests/tokens per minute (docs/tenants.md); keys are then required",
    )
    tenants_reload: float = Field(
        2.0, ge=0, description="seconds between checks of the tenants file for changes (0: never)"
    )
    output_token_estimate: int = Field(
        256,
        ge=0,
        description="tokens a generation reserves per sequence from its tenant's token budget "
        "until it settles: min(max_tokens, this)",
    )
    redis_url: str | None = Field(
        None,
        description="Redis holding the tenants' budgets, shared by every gateway replica "
        "(redis://host:6379/0); none: each gateway keeps its own in memory",
    )
    redis_failure_mode: Literal["open", "closed"] = Field(
        "open",
        description="when Redis does not answer: open admits requests without a budget check "
        "(logged, counted), closed refuses them with 503 + Retry-After",
    )
    redis_timeout: float = Field(
        0.5, gt=0, description="seconds a budget operation waits for Redis (then the failure mode)"
    )
    redis_key_prefix: str = Field(
        "hfmesh:budget", description="prefix of the budgets' Redis keys (one per tenant)"
    )
    max_body_bytes: int = Field(
        16 * 1024 * 1024, description="largest request body accepted (413 above)"
    )
    max_header_bytes: int = Field(
        32 * 1024, ge=1024, description="largest total size of the request headers (431 above)"
    )
    max_json_depth: int = Field(
        64, ge=2, description="deepest nesting of arrays/objects in a JSON body (400 above)"
    )
    max_inputs: int = Field(
        2048,
        ge=1,
        description="most inputs in one embeddings / rerank (documents) / KServe V1 "
        "(instances) / V2 encoder request (400 above)",
    )
    max_prompt_chars: int = Field(
        1024 * 1024,
        ge=1,
        description="longest prompt, in characters, of one completion prompt or one chat's "
        "messages together, checked before tokenizing (400 above)",
    )
    max_n: int = Field(16, ge=1, le=128, description="largest 'n' / 'best_of' (400 above)")
    max_stop_sequences: int = Field(
        16, ge=0, description="most stop strings in one request (400 above)"
    )
    max_requested_outputs: int = Field(
        32, ge=1, description="most requested outputs in one V2 infer request (400 above)"
    )
    request_timeout: float = Field(
        600.0,
        gt=0,
        description="default deadline budget of one request across every gRPC hop, seconds "
        "(a request may ask for another with the X-Request-Timeout header)",
    )
    max_request_timeout: float = Field(
        3600.0, gt=0, description="largest budget X-Request-Timeout may ask for, seconds"
    )
    max_in_flight_per_replica: int = Field(
        32,
        ge=0,
        description="admission control: generation sequences / encoder requests admitted at "
        "once per ready engine replica of a model ('n' counts n times); 0 turns admission off",
    )
    max_queued_per_replica: int = Field(
        32,
        ge=0,
        description="admission control: requests that may wait for a slot per ready engine "
        "replica (more → 503 + Retry-After at once)",
    )
    max_queue_wait: float = Field(
        10.0, ge=0, description="longest a request waits for an admission slot, seconds (then 503)"
    )
    tokenizer_timeout: float = Field(
        30.0,
        description="deadline of one tokenizer call, and the longest a request waits for a "
        "tokenizer while none is up (one restarting), seconds",
    )
    encoder_route: str = Field(
        "auto",
        description="text inputs of encoder tasks (embeddings, rerank, classification, "
        "fill-mask): 'auto' sends them straight to a model's HF engine, which tokenizes and "
        "post-processes itself (one gRPC call instead of three; models on the vLLM engine and "
        "requests for class names still go through the tokenizer); 'split' always goes "
        "tokenizer preprocess -> engine tensors -> tokenizer postprocess",
    )
    retry_after: int = Field(1, description="Retry-After seconds on 503/429 answers")
    drain_grace: float = Field(
        30.0,
        ge=0,
        description="on SIGTERM: seconds requests in flight (streams included) may take to "
        "finish; readiness answers 503 and no new connection is accepted meanwhile",
    )
    scale_from_zero_wait: float = Field(
        60.0,
        ge=0,
        description="seconds a request to a model scaled to zero waits for a replica (then 503)",
    )
    prefix_block_tokens: int = Field(
        16,
        ge=1,
        description="tokens per hashed block of prefix routing (the engines' KV block size or a "
        "divisor of it: vLLM's is 16 on GPU, 128 on CPU)",
    )
    prefix_index_blocks: int = Field(
        65536,
        ge=1,
        description="prefix index cap: block hashes kept per model and replica (LRU; about "
        "200 bytes each)",
    )
    routing_load_margin: float = Field(
        4.0,
        ge=0,
        description="prefix routing stays on the replica holding the prompt unless its load "
        "exceeds the least loaded other's by more than this many requests",
    )
    routing_token_unit: int = Field(
        1024,
        ge=1,
        description="uncached prompt tokens awaiting prefill that weigh as much as one "
        "request in flight in a replica's load",
    )
    session_header: str = Field(
        "x-session-id",
        description="request header with the session key of the session routing policy "
        "(the OpenAI 'user' field when absent)",
    )
    session_load_factor: float = Field(
        1.25,
        ge=1,
        description="session routing: a replica takes at most this factor times the mean "
        "requests in flight before a session spills to the next on the ring",
    )
    model_list_reload: float = Field(
        2.0,
        ge=0,
        description="seconds between checks of the model list file for changed traffic "
        "weights and routing policies (0: never re-read)",
    )
    served_by: str = Field("hfmesh", description="owned_by in /v1/models")
    log_level: str = Field("INFO", description="logging level")

    @field_validator("openai_route_prefix")
    @classmethod
    def _strip_slashes(cls, value: str) -> str:
        return value.strip().strip("/")

    @field_validator("encoder_route")
    @classmethod
    def _known_route(cls, value: str) -> str:
        if value not in ENCODER_ROUTES:
            raise ValueError(
                f"--encoder_route is one of {', '.join(ENCODER_ROUTES)}, got {value!r}"
            )
        return value

    @property
    def routing_options(self) -> RoutingOptions:
        return RoutingOptions(
            block_tokens=self.prefix_block_tokens,
            index_blocks=self.prefix_index_blocks,
            load_margin=self.routing_load_margin,
            token_unit=self.routing_token_unit,
            session_load_factor=self.session_load_factor,
        )

    @property
    def openai_prefix_path(self) -> str:
        """ "/openai" or "" (routes then start at /v1)."""
        return f"/{self.openai_route_prefix}" if self.openai_route_prefix else ""


def load_settings(
    argv: list[str] | None = None, env: dict[str, str] | None = None
) -> GatewaySettings:
    """Flags, then `HFMESH_*` variables, then KServe's `KSERVE_OPENAI_ROUTE_PREFIX`."""
    env = dict(os.environ) if env is None else env
    settings, _ = parse_settings(
        GatewaySettings,
        argv,
        prog="python -m services.gateway",
        description="hfmesh gateway: OpenAI and KServe V1/V2 REST in front of the gRPC mesh",
        env=env,
    )
    given = argv is not None and any(
        a.split("=")[0] in ("--openai_route_prefix", "--openai-route-prefix") for a in argv
    )
    if not given and ROUTE_PREFIX_ENV in env:
        settings = settings.model_copy(
            update={"openai_route_prefix": env[ROUTE_PREFIX_ENV].strip().strip("/")}
        )
    return settings
