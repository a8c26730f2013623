"""The gateway's transport-free core: the mesh seen as typed operations.

Routers (OpenAI, KServe V1/V2) translate HTTP to these calls and back; this
module orchestrates the hops (tokenizer → engine → tokenizer), checks what can
be checked before any engine work, and picks engine replicas with fallback.
No FastAPI here; protobuf stays inside `grpc_clients`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from services.common import llm_tensors
from services.common.codec import InferRequest, InferResponse, Tensor, as_bytes_array
from services.common.encoder_tensors import (
    RESULT_OUTPUT,
    TEXT_INPUT,
    TOKEN_COUNT_OUTPUT,
    TOKEN_COUNT_PARAMETER,
    TOKEN_INPUTS,
)
from services.common.engine import GenerateDelta, SamplingParams, Task
from services.common.errors import InvalidArgument, Unavailable
from services.gateway import grpc_clients as rpc
from services.gateway.grpc_clients import CallContext, Rendered
from services.gateway.limits import RequestLimits
from services.gateway.policy import Pick, RouteRequest
from services.gateway.replica import Replica
from services.gateway.routing import ModelRoute, ReplicaRouter
from services.gateway.settings import GatewaySettings

logger = logging.getLogger(__name__)
T = TypeVar("T")
#: The backend whose engines tokenize and post-process encoder text themselves.
TEXT_ENGINE_BACKEND = "huggingface"


@dataclass
class Encoded:
    """An encoder task's result and how many tokens its inputs held."""

    output: np.ndarray
    num_tokens: int
    token_counts: list[int]
    labels: list[str] | None = None  # each row's class name, when asked (classification)


def check_task(route: ModelRoute, wanted: tuple[Task, ...], endpoint: str) -> None:
    if route.task not in wanted:
        needs = " or ".join(t.value for t in wanted)
        raise InvalidArgument(
            f"model '{route.name}' serves task {route.task.value}; {endpoint} needs a {needs} model"
        )


class MeshClient:
    """What the HTTP layers can ask of the mesh."""

    def __init__(self, routes: ReplicaRouter, settings: GatewaySettings) -> None:
        self.routes = routes
        self.settings = settings
        self.limits = RequestLimits.from_settings(settings)

    def route(self, model: str, call: CallContext) -> ModelRoute:
        """The model's route; a model the caller's tenant may not use is unknown (404)."""
        visible = call.quota.tenant.allows if call.quota is not None else None
        return self.routes.route(model, call.session, visible)

    def names(self, call: CallContext | None) -> list[str]:
        """The model names the caller may use."""
        quota = call.quota if call is not None else None
        return self.routes.names(quota.tenant.allows if quota is not None else None)

    async def reserve(
        self,
        call: CallContext,
        prompt_tokens: int,
        *,
        sequences: int = 0,
        max_tokens: int | None = None,
    ) -> None:
        """Take the request's share of its tenant's token budget, once its prompt's tokens
        are known exactly: the prompt plus `min(max_tokens, --output_token_estimate)` per
        generated sequence (429 over budget)."""
        if call.quota is None:
            return
        estimate = self.settings.output_token_estimate
        per_sequence = estimate if max_tokens is None else min(max_tokens, estimate)
        await call.quota.reserve(prompt_tokens, per_sequence * sequences)

    async def engine(
        self,
        route: ModelRoute,
        call: CallContext,
        exclude: set[Replica] | frozenset = frozenset(),
        request: RouteRequest | None = None,
    ) -> Pick:
        """The engine replica for the next call, by the model's routing policy. A model
        scaled to zero gets a bounded wait for its first replica (`scale_from_zero_wait`,
        within the request's deadline), then UNAVAILABLE (503 + Retry-After); a retry after
        a failed replica never waits."""
        wait = self.settings.scale_from_zero_wait
        if not exclude and wait > 0 and route.scales_to_zero and route.backend is None:
            if not await self.routes.wait_for_replica(route.name, call.timeout(wait)):
                raise Unavailable(
                    f"no engine is ready for model '{route.name}' (scaled to zero; "
                    f"none became ready within {wait:g} s)"
                )
        return route.pick(exclude, request)

    async def tokenizer(self, route: ModelRoute, call: CallContext) -> Replica:
        """The tokenizer replica for the next call. When every configured tokenizer is down
        (a restarting one comes back in seconds) the call waits for one, up to
        `tokenizer_timeout` within the request's deadline, then UNAVAILABLE: a tokenizer
        restart costs latency, not failed requests."""
        if route.tokenizers and not any(r.available for r in route.tokenizers):
            timeout = call.timeout(self.settings.tokenizer_timeout)
            await self.routes.wait_for_tokenizer(route.name, timeout)
        return route.tokenizer()

    async def _on_tokenizer(
        self, route: ModelRoute, call: CallContext, hop: Callable[[Replica], Awaitable[T]]
    ) -> T:
        """One tokenizer hop. A hop that fails UNAVAILABLE (its tokenizer died or stopped
        mid-call) is made once more on a tokenizer that is up, waiting for a restarting one
        as `tokenizer` does: tokenizer work has no side effects, so repeating it is safe."""
        replica = await self.tokenizer(route, call)
        try:
            return await hop(replica)
        except Unavailable as error:
            logger.warning(
                "tokenizer %s unavailable for %s (%s); trying again",
                replica.address,
                route.name,
                error.message,
            )
            replica.mark_failed()
            return await hop(await self.tokenizer(route, call))

    def max_model_len(self, route: ModelRoute, rendered: Rendered | None = None) -> int | None:
        return route.entry.max_model_len or (rendered.max_model_len if rendered else None)

    # -- tokenizer hops ------------------------------------------------------

    async def render_chat(self, route: ModelRoute, call: CallContext, **fields: Any) -> Rendered:
        return await self._on_tokenizer(
            route,
            call,
            lambda tokenizer: rpc.render(
                tokenizer,
                route.name,
                call,
                cap=self.settings.tokenizer_timeout,
                **fields,
            ),
        )

    async def tokenize(
        self,
        route: ModelRoute,
        call: CallContext,
        text: str,
        *,
        add_special_tokens: bool | None = None,
    ) -> Rendered:
        if not text:
            raise InvalidArgument("the prompt is empty")
        return await self._on_tokenizer(
            route,
            call,
            lambda tokenizer: rpc.render(
                tokenizer,
                route.name,
                call,
                cap=self.settings.tokenizer_timeout,
                text_input=text,
                add_special_tokens=add_special_tokens,
            ),
        )

    async def detokenize(
        self,
        route: ModelRoute,
        call: CallContext,
        ids: list[int],
        *,
        skip_special_tokens: bool = True,
    ) -> str:
        return await self._on_tokenizer(
            route,
            call,
            lambda tokenizer: rpc.detokenize(
                tokenizer,
                route.name,
                ids,
                call,
                cap=self.settings.tokenizer_timeout,
                skip_special_tokens=skip_special_tokens,
            ),
        )

    async def token_strings(
        self, route: ModelRoute, call: CallContext, ids: list[int], *, vocabulary: bool = False
    ) -> list[str]:
        """Each id decoded on its own, or with `vocabulary` its vocabulary string."""
        if not ids:
            return []
        return await self._on_tokenizer(
            route,
            call,
            lambda tokenizer: rpc.token_strings(
                tokenizer,
                route.name,
                ids,
                call,
                cap=self.settings.tokenizer_timeout,
                output="token_strs" if vocabulary else "tokens",
            ),
        )

    # -- generation ----------------------------------------------------------

    async def generate(
        self,
        route: ModelRoute,
        input_ids: list[int],
        sampling: SamplingParams,
        call: CallContext,
        *,
        logprobs: bool,
        whole: bool = False,
    ) -> AsyncIterator[GenerateDelta]:
        """Stream engine deltas. An engine answering UNAVAILABLE before any output is
        skipped and the next replica (or the fallback backend) is tried. With `whole` (the
        client waits for the complete answer, nothing is streamed to it) a replica's deltas
        are held until its stream ends, so a replica lost mid-generation is replaced too:
        the answer is generated again on the next one.

        The replica is picked on the exact `input_ids` (and the call's session key); until
        its first output arrives, the prompt tokens it does not hold yet count as its pending
        prefill load."""
        request = llm_tensors.generate_request(
            route.engine_model, input_ids, sampling, logprobs=logprobs, request_id=call.request_id
        )
        wanted = RouteRequest(input_ids=input_ids, session=call.session)
        tried: set[Replica] = set()
        while True:
            pick = await self.engine(route, call, tried, wanted)
            replica = pick.replica
            started = False
            held: list[GenerateDelta] = []
            pending = max(0, len(input_ids) - pick.matched_blocks * route.options.block_tokens)
            replica.in_flight += 1
            replica.pending_tokens += pending
            try:
                async for delta in rpc.stream_generate(replica, request, call):
                    replica.pending_tokens -= pending
                    pending = 0
                    if whole:
                        held.append(delta)
                        continue
                    started = True
                    yield delta
            except Unavailable as error:
                if started:
                    raise
                _skip_replica(replica, route, error, tried)
                continue
            finally:
                replica.in_flight -= 1
                replica.pending_tokens -= pending
            for delta in held:
                yield delta
            return

    # -- encoder tasks (tokenizer preprocess → engine tensors → tokenizer postprocess,
    #    or text straight to an HF engine)

    async def encode(
        self,
        route: ModelRoute,
        call: CallContext,
        *,
        texts: list[str] | None = None,
        pairs: list[str] | None = None,
        token_ids: list[list[int]] | None = None,
        parameters: dict[str, Any] | None = None,
        label: bool = False,
    ) -> Encoded:
        cap = self.settings.tokenizer_timeout
        self.limits.inputs(len(token_ids) if token_ids is not None else len(texts or []))
        budgeted = call.quota is not None and call.quota.tenant.limited
        if (
            token_ids is None
            and not label
            and not budgeted
            and self._engine_takes_text(route, pairs)
        ):
            return await self._encode_on_engine(route, call, texts or [], pairs, parameters)
        if token_ids is not None:
            encoded = _pad(token_ids)
        else:
            encoded = await self._on_tokenizer(
                route,
                call,
                lambda tokenizer: rpc.preprocess(
                    tokenizer, route.name, texts or [], pairs, call, cap=cap
                ),
            )
        counts = [int(c) for c in encoded["attention_mask"].sum(axis=1)]
        limit = self.max_model_len(route)
        if token_ids is not None and limit is not None and max(counts) > limit:
            raise InvalidArgument(
                f"an input has {max(counts)} tokens; the model's limit is {limit}"
            )
        await self.reserve(call, sum(counts))
        sent = [Tensor(n, "INT64", encoded[n]) for n in TOKEN_INPUTS if n in encoded]
        raw = await self.infer_engine(
            route, InferRequest(route.name, sent, id=call.request_id), call
        )
        if call.quota is not None:
            await call.quota.settle(sum(counts), 0)
        outputs = {t.name: t.data for t in raw.outputs}
        result, labels = await self._on_tokenizer(
            route,
            call,
            lambda tokenizer: rpc.postprocess(
                tokenizer,
                route.name,
                outputs,
                encoded,
                call,
                cap=cap,
                parameters=parameters,
                label=label,
            ),
        )
        return Encoded(output=result, num_tokens=sum(counts), token_counts=counts, labels=labels)

    def _engine_takes_text(self, route: ModelRoute, pairs: list[str] | None) -> bool:
        """Whether text goes straight to the engine (`--encoder_route auto`): the model's
        engines that would answer now (the first backend with a replica up, else its first
        backend) are HF engines, which hold the model's tokenizer. Text pairs go that way
        only for rerank (the engine pairs segments for rerank alone); class names (`label`)
        come from the tokenizer's postprocess. A tenant with a budget takes the split path
        (its caller checks): the budget is reserved from the exact token count before any
        engine work."""
        if self.settings.encoder_route != "auto" or (
            pairs is not None and route.task is not Task.RERANK
        ):
            return False
        live = [b for b, replicas in route.engines if any(r.available for r in replicas)]
        backends = live or [b for b, _ in route.engines]
        return bool(backends) and backends[0] == TEXT_ENGINE_BACKEND

    async def _encode_on_engine(
        self,
        route: ModelRoute,
        call: CallContext,
        texts: list[str],
        pairs: list[str] | None,
        parameters: dict[str, Any] | None,
    ) -> Encoded:
        """One engine call, text in: the engine tokenizes as the tokenizer's preprocess does
        (the model's own tokenizer files, the same call) and answers the task result with
        each input's token count (`TOKEN_COUNT_OUTPUT`)."""
        inputs = [Tensor(TEXT_INPUT, "BYTES", as_bytes_array(texts))]
        if pairs is not None:
            inputs.append(Tensor("text_pair", "BYTES", as_bytes_array(pairs)))
        request = InferRequest(
            route.name,
            inputs,
            id=call.request_id,
            parameters={**(parameters or {}), TOKEN_COUNT_PARAMETER: True},
        )
        outputs = {t.name: t.data for t in (await self.infer_engine(route, request, call)).outputs}
        counts = [int(c) for c in outputs[TOKEN_COUNT_OUTPUT]]
        if call.quota is not None:  # a tenant without budgets: its usage is still counted
            await call.quota.settle(sum(counts), 0)
        return Encoded(output=outputs[RESULT_OUTPUT], num_tokens=sum(counts), token_counts=counts)

    async def infer_engine(
        self, route: ModelRoute, request: InferRequest, call: CallContext
    ) -> InferResponse:
        """One unary engine call, skipping replicas that answer UNAVAILABLE."""
        tried: set[Replica] = set()
        while True:
            replica = (await self.engine(route, call, tried)).replica
            replica.in_flight += 1
            try:
                return await rpc.infer(replica, request, call)
            except Unavailable as error:
                _skip_replica(replica, route, error, tried)
            finally:
                replica.in_flight -= 1

    async def engine_metadata(self, route: ModelRoute, call: CallContext) -> dict[str, Any]:
        replica = (await self.engine(route, call)).replica
        return await rpc.model_metadata(replica, route.name, call)


def _skip_replica(
    replica: Replica, route: ModelRoute, error: Unavailable, tried: set[Replica]
) -> None:
    """An engine replica answered UNAVAILABLE before any output: said in the log (the
    client's 503 then names no replica), skipped for a cooldown and by this request."""
    logger.warning(
        "engine %s unavailable for %s (%s); trying another",
        replica.address,
        route.name,
        error.message,
    )
    replica.mark_failed()
    tried.add(replica)


def _pad(rows: list[list[int]]) -> dict[str, np.ndarray]:
    """Token-id inputs as tensors: right-padded with 0 under a zero attention mask."""
    if not rows or any(not row for row in rows):
        raise InvalidArgument("token id inputs must be non-empty lists of ids")
    width = max(len(row) for row in rows)
    ids = np.zeros((len(rows), width), dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        if min(row) < 0:
            raise InvalidArgument("token ids must be non-negative")
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return {"input_ids": ids, "attention_mask": mask}
