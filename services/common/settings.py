"""Typed settings: one pydantic model per service, filled from flags and environment.

The KServe Hugging Face runtime flags are declared once here: `TokenizerFlags`
(tokenizing and post-processing, which the tokenizer service takes) and
`KServeRuntimeFlags` (all of them, which both engines take), so a flag has one
type, default and alias set wherever it is accepted. Both extend `ReplicaFlags`:
where a replica listens and the control plane it registers with.

`parse_settings(Model, argv)` builds an argparse parser from the model's fields
(the field descriptions become `--help`), reads `HFMESH_<FIELD>` environment
variables as defaults, validates, and returns the model plus any arguments it
did not know (the vLLM engine passes those through to vLLM; other services
reject them). This is the only place services read the environment.
"""

from __future__ import annotations

import argparse
import os
import types
import typing
from typing import Any, ClassVar, TypeVar, Union

from pydantic import BaseModel, Field, ValidationError, model_validator

from services.common.engine import Task
from services.common.errors import InvalidArgument
from services.common.model_source import parse_source
from services.common.registration import Registration
from services.common.server import MAX_MESSAGE_BYTES
from services.common.tls import TlsConfig

M = TypeVar("M", bound=BaseModel)

ENV_PREFIX = "HFMESH_"


def _base_type(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0]) if len(args) == 1 else str
    return annotation


def _env_value(name: str, env: dict[str, str]) -> str | None:
    return env.get(ENV_PREFIX + name.upper())


def build_parser(model: type[BaseModel], *, prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,  # `--tokenizer` must never be read as `--tokenizer_revision`
    )
    for name, field in model.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        flags = [f"--{name}"]
        if "-" not in name and "_" in name:
            flags.append(f"--{name.replace('_', '-')}")
        aliases = extra.get("aliases")
        flags += [str(alias) for alias in aliases] if isinstance(aliases, list) else []
        help_text = (field.description or "") + f" [env {ENV_PREFIX}{name.upper()}]"
        kind = _base_type(field.annotation)
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        if kind is bool:
            parser.add_argument(
                *flags,
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=default,
                help=help_text,
            )
        elif typing.get_origin(kind) is list:
            parser.add_argument(*flags, dest=name, nargs="*", default=default, help=help_text)
        else:
            parser.add_argument(
                *flags, dest=name, default=default, help=help_text, metavar=name.upper()
            )
    return parser


def parse_settings(
    model: type[M],
    argv: list[str] | None = None,
    *,
    prog: str,
    description: str,
    allow_unknown: bool = False,
    env: dict[str, str] | None = None,
) -> tuple[M, list[str]]:
    env = dict(os.environ) if env is None else env
    parser = build_parser(model, prog=prog, description=description)
    if allow_unknown:
        namespace, unknown = parser.parse_known_args(argv)
    else:
        namespace, unknown = parser.parse_args(argv), []
    values: dict[str, Any] = {}
    given = vars(namespace)
    for name, field in model.model_fields.items():
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        value = given.get(name)
        if value == default:
            from_env = _env_value(name, env)
            if from_env is not None:
                value = from_env
        if value is not None or not field.is_required():
            values[name] = value
    try:
        return model.model_validate(values), unknown
    except ValidationError as error:
        problems = "; ".join(
            f"--{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()
        )
        parser.error(problems)
        raise  # unreachable: parser.error exits


class TlsFlags(BaseModel):
    """TLS of this process's gRPC port and of its gRPC channels in the mesh (docs/tls.md)."""

    tls_cert: str | None = Field(
        None,
        description="PEM certificate (chain) this process presents on its gRPC port and to "
        "the gRPC services it calls; with --tls_key (none: plain gRPC). Reloaded when the file "
        "changes",
    )
    tls_key: str | None = Field(None, description="PEM private key of --tls_cert")
    tls_ca: str | None = Field(
        None,
        description="PEM CA bundle peers are verified against: a gRPC port given one REQUIRES "
        "client certificates signed by it (mutual TLS); a client checks servers with it "
        "(without it: the system's roots)",
    )
    tls_server_name: str | None = Field(
        None,
        description="name checked in the certificates of the servers this process calls, "
        "instead of the host it dials (replicas dialled by address under one mesh certificate)",
    )

    #: Whether this process serves gRPC (a CA alone then makes no sense: no certificate to show).
    tls_serves: ClassVar[bool] = True

    @model_validator(mode="after")
    def _tls_files(self) -> TlsFlags:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("--tls_cert and --tls_key go together: give both or neither")
        if self.tls_serves and self.tls_ca and not self.tls_cert:
            raise ValueError("--tls_ca on a gRPC server needs --tls_cert and --tls_key")
        for flag in ("tls_cert", "tls_key", "tls_ca"):
            path = getattr(self, flag)
            if path and not os.path.isfile(path):
                raise ValueError(f"--{flag} {path}: no such file")
        return self

    @property
    def tls(self) -> TlsConfig | None:
        """The TLS configuration, or None for plain gRPC."""
        config = TlsConfig(self.tls_cert, self.tls_key, self.tls_ca, self.tls_server_name)
        return config if config.enabled else None


class ReplicaFlags(TlsFlags):
    """Where a replica (an engine or a tokenizer) listens, and whom it tells (DESIGN.md §6)."""

    host: str = Field("0.0.0.0", description="gRPC listen address")
    control_plane: str | None = Field(
        None,
        description="host:port of the control plane to register with once serving "
        "(deregistered on SIGTERM); none: not registered",
    )
    advertise_host: str | None = Field(
        None,
        description="host others dial this replica at (default: --host, or when that is a "
        "wildcard this machine's address on the route to the control plane)",
    )
    log_level: str = Field("INFO", description="logging level")
    max_message_bytes: int = Field(
        MAX_MESSAGE_BYTES,
        ge=1024,
        description="largest gRPC message received or sent (RESOURCE_EXHAUSTED above; KServe's "
        "gRPC cap is also 8 MiB)",
    )
    drain_grace: float = Field(
        30.0,
        ge=0,
        description="on SIGTERM: seconds calls in flight may take to finish after health turns "
        "NOT_SERVING and new calls are refused",
    )

    def registration(
        self, *, service: str, models: list[str], backend: str = ""
    ) -> Registration | None:
        """What to register once serving; None without `--control_plane`."""
        if not self.control_plane:
            return None
        return Registration(
            self.control_plane, service, tuple(models), backend, self.advertise_host, tls=self.tls
        )


def metrics_port_field() -> Any:
    """Every service's `--metrics_port` (the gateway serves `/metrics` on its HTTP port)."""
    return Field(None, description="HTTP port of Prometheus /metrics (off when absent or 0)")


class TokenizerFlags(ReplicaFlags):
    """The KServe runtime flags about tokenizing and post-processing."""

    max_model_len: int | None = Field(
        None,
        description="context length (default: the model's limit); "
        "encoder inputs are truncated to it",
        json_schema_extra={"aliases": ["--max_length", "--max-length"]},
    )
    disable_lower_case: bool = Field(False, description="do not lower-case text in the tokenizer")
    disable_special_tokens: bool = Field(
        False, description="do not add special tokens when tokenizing"
    )
    tensor_input_names: str | None = Field(
        None,
        description="comma-separated token tensors: those sent to the predictor, or taken on "
        "the HF engine's tensor path (default: all the model takes)",
    )
    return_token_type_ids: bool | None = Field(
        None,
        description="return token_type_ids from preprocessing (default: as the tokenizer does); "
        "an engine always gives its model the token_type_ids its tokenizer makes",
    )
    return_probabilities: bool = Field(
        False, description="classification / fill_mask: answer softmax probabilities, not class ids"
    )
    return_raw_logits: bool = Field(
        False, description="classification / fill_mask: answer raw logits"
    )


class KServeRuntimeFlags(TokenizerFlags):
    """Every KServe Hugging Face runtime flag an engine takes (DESIGN.md §4)."""

    port: int = Field(8081, description="gRPC port (0 picks a free one)")
    model_name: str = Field("model", description="name the model is served under")
    model_id: str | None = Field(
        None,
        description="Hugging Face hub id, org/name or hf://org/name[@revision] (without a "
        "reachable hub: from the local HF cache); other sources are fetched first "
        "(python -m services.models fetch) and given as --model_dir",
    )
    model_dir: str | None = Field(None, description="local model folder (wins over --model_id)")
    model_revision: str | None = Field(None, description="hub revision of the model")
    tokenizer_revision: str | None = Field(None, description="hub revision of the tokenizer")
    dtype: str = Field(
        "auto", description="auto (float32 on CPU, as KServe), float32, float16, bfloat16"
    )
    task: Task | None = Field(None, description="task; inferred from the architecture when absent")
    backend: str = Field(
        "auto", description="KServe's backend choice: auto, or this engine's backend"
    )
    trust_remote_code: bool = Field(False, description="allow model code from the model repository")
    disable_log_requests: bool = Field(False, description="do not log each request")
    metrics_port: int | None = metrics_port_field()
    max_pending_requests: int = Field(
        256,
        ge=1,
        description="requests (each 'n' sequence counted) this engine holds at once, running or "
        "queued; more are refused with UNAVAILABLE (the backstop behind the gateway's admission "
        "control)",
    )

    @model_validator(mode="after")
    def _hub_model_id(self) -> KServeRuntimeFlags:
        """`--model_id` in the model source syntax: `hf://org/name@rev` is the hub id `org/name`
        at revision `rev` (an explicit --model_revision wins); a source that needs fetching is
        refused with how to fetch it, not handed to transformers as a path."""
        if not self.model_id:
            return self
        try:
            source = parse_source(self.model_id)
        except InvalidArgument as error:
            raise ValueError(f"--model_id: {error.message}") from None
        if source.kind == "hf":
            self.model_id = source.location
            self.model_revision = self.model_revision or source.revision
        elif source.remote:
            raise ValueError(
                f"--model_id {source.display}: fetch it first (python -m services.models fetch "
                "SOURCE prints its folder) and give that folder as --model_dir"
            )
        return self
