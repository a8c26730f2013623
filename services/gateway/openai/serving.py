"""OpenAI completions and chat completions over the mesh.

Everything that can be checked is checked before the first engine call
(task, ranges, empty prompt, context length); a streamed request also waits
for the engine's first answer before the HTTP status is sent, so an engine's
rejection is still a proper 4xx. Then deltas become OpenAI JSON or SSE.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from services.common.engine import GenerateDelta, Task
from services.common.errors import InternalError, InvalidArgument
from services.common.llm_tensors import check_context_length
from services.gateway.core import MeshClient, check_task
from services.gateway.genai import first_token, genai_request, genai_response
from services.gateway.grpc_clients import CallContext, Rendered
from services.gateway.metrics import GatewayMetrics
from services.gateway.openai import generation as gen
from services.gateway.openai.messages import hf_messages
from services.gateway.openai.protocol import (
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobs,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    Usage,
    new_id,
    now,
)
from services.gateway.openai.structured import structured_outputs, with_param
from services.gateway.openai.tool_parsers import ToolCallDelta, ToolCallStream
from services.gateway.openai.tools import ToolPlan, answer_message, finish_reason, plan_tools
from services.gateway.routing import ModelRoute
from services.gateway.streaming import LastChunk

logger = logging.getLogger(__name__)

GENERATIVE = tuple(task for task in Task if task.is_generative)
DONE = b"data: [DONE]\n\n"
NO_CALLS: list[ToolCallDelta] = []


class Chunks:
    """The SSE `data:` lines of one stream; the part every chunk shares is encoded once."""

    def __init__(self, chunk_id: str, kind: str, model: str, *, include_usage: bool) -> None:
        shared = json.dumps(
            {"id": chunk_id, "object": kind, "created": now(), "model": model},
            separators=(",", ":"),
        )
        self.head = b"data: " + shared[:-1].encode() + b',"choices":['
        self.tail = (b'],"usage":null}' if include_usage else b"]}") + b"\n\n"

    def choice(self, entry: dict[str, Any]) -> bytes:
        return self.head + json.dumps(entry, separators=(",", ":")).encode() + self.tail

    def content(self, index: int, text: str) -> bytes:
        """A chat chunk carrying only new text (the per-token case), without building a dict."""
        return b"".join(
            (
                self.head,
                b'{"index":',
                str(index).encode(),
                b',"delta":{"content":',
                json.dumps(text).encode(),
                b'},"logprobs":null,"finish_reason":null}',
                self.tail,
            )
        )

    def usage(self, usage: Usage) -> bytes:
        return self.head + b'],"usage":' + usage.model_dump_json().encode() + b"}\n\n"


class GenerationServing:
    def __init__(self, mesh: MeshClient, metrics: GatewayMetrics) -> None:
        self.mesh = mesh
        self.metrics = metrics

    # -- completions ---------------------------------------------------------

    async def completions(
        self, request: CompletionRequest, call: CallContext
    ) -> CompletionResponse | AsyncIterator[bytes]:
        genai_request(
            "text_completion",
            request.model,
            max_tokens=request.max_tokens,
            temperature=request.temperature,
        )
        call.session = call.session or request.user
        route = self.mesh.route(request.model, call)
        check_task(route, GENERATIVE, "/v1/completions")
        self.mesh.limits.sampling(n=request.n, best_of=request.best_of, stop=request.stop)
        structured, source = structured_outputs(request)
        sampling = gen.sampling_params(
            request, max_tokens=request.max_tokens, logprobs=request.logprobs, structured=structured
        )
        if request.suffix:
            raise InvalidArgument("'suffix' is not supported")
        if request.best_of is not None and request.best_of != request.n:
            raise InvalidArgument("'best_of' must equal 'n' (beam-style best_of is not supported)")
        if request.echo and request.logprobs is not None:
            raise InvalidArgument(
                "'echo' together with 'logprobs' needs prompt logprobs, which are not supported"
            )
        prompts = _prompts(request.prompt)
        self.mesh.limits.inputs(len(prompts))
        for prompt in prompts:
            self.mesh.limits.prompt(len(prompt))
        rendered = await asyncio.gather(*(self._prompt(route, call, p, request) for p in prompts))
        limit = self.mesh.max_model_len(route, rendered[0])
        for item in rendered:
            check_context_length(len(item.input_ids), request.max_tokens, limit, model=route.name)
        await self.mesh.reserve(
            call,
            sum(len(r.input_ids) for r in rendered),
            sequences=len(rendered) * max(request.n, request.best_of or 1),
            max_tokens=request.max_tokens,
        )
        streams = [
            self.mesh.generate(
                route,
                r.input_ids,
                sampling,
                call,
                logprobs=request.logprobs is not None,
                whole=not request.stream,
            )
            for r in rendered
        ]
        run = ChoiceStreams(self, route, call, request.n, rendered, streams, time.monotonic())
        with with_param(source):
            if request.stream:
                return await run.start_stream(self._completion_chunks(run, request))
            choices = await run.collect()
        out = []
        for choice in choices:
            text = (
                rendered[choice.index // request.n].prompt if request.echo else ""
            ) + choice.text
            logprobs = None
            if request.logprobs is not None:
                names = await run.names(choice)
                logprobs = gen.completion_logprobs(choice, names, request.logprobs)
            out.append(
                CompletionChoice(
                    index=choice.index,
                    text=text,
                    logprobs=logprobs,
                    finish_reason=choice.finish_reason,
                )
            )
        return CompletionResponse(
            id=run.id("cmpl"),
            created=now(),
            model=request.model,
            choices=out,
            usage=run.usage(choices),
        )

    async def _prompt(
        self,
        route: ModelRoute,
        call: CallContext,
        prompt: str | list[int],
        request: CompletionRequest,
    ) -> Rendered:
        if isinstance(prompt, str):
            return await self.mesh.tokenize(
                route, call, prompt, add_special_tokens=request.add_special_tokens
            )
        text = await self.mesh.detokenize(route, call, prompt) if request.echo else ""
        return Rendered(input_ids=prompt, prompt=text, max_model_len=None)

    async def _completion_chunks(
        self, run: ChoiceStreams, request: CompletionRequest
    ) -> AsyncIterator[bytes]:
        usage = request.stream_options is not None and request.stream_options.include_usage
        chunks = Chunks(run.id("cmpl"), "text_completion", request.model, include_usage=usage)
        async for batch in run.deltas():
            parts = []
            for choice, delta in batch:
                text = delta.text
                quiet = not text and not delta.finish_reason and not gen.has_logprobs(delta)
                if quiet and choice.started:
                    # nothing to tell the client yet (the detokenizer holds partial characters)
                    continue
                if request.echo and not choice.started:
                    text = run.rendered[choice.index // request.n].prompt + text
                choice.started = True
                logprobs = None
                if request.logprobs is not None and gen.has_logprobs(delta):
                    names = await run.names(delta)
                    logprobs = gen.completion_logprobs(delta, names, request.logprobs).model_dump()
                entry = {
                    "index": choice.index,
                    "text": text,
                    "logprobs": logprobs,
                    "finish_reason": delta.finish_reason,
                }
                parts.append(chunks.choice(entry))
            if written := _batch_bytes(run, parts, chunks, usage):
                yield written

    # -- chat ----------------------------------------------------------------

    async def chat(
        self, request: ChatCompletionRequest, call: CallContext
    ) -> ChatCompletionResponse | AsyncIterator[bytes]:
        max_tokens = request.max_completion_tokens
        if max_tokens is None:
            max_tokens = request.max_tokens
        genai_request("chat", request.model, max_tokens=max_tokens, temperature=request.temperature)
        call.session = call.session or request.user
        route = self.mesh.route(request.model, call)
        check_task(route, GENERATIVE, "/v1/chat/completions")
        self.mesh.limits.sampling(n=request.n, best_of=None, stop=request.stop)
        self.mesh.limits.chat_prompt(request.messages)
        top = request.top_logprobs or 0
        structured, source = structured_outputs(request)
        tools = plan_tools(request, route.entry.tool_parser, model=route.name, constrained=source)
        if tools.structured is not None:
            structured, source = tools.structured, "tool_choice"
        sampling = gen.sampling_params(
            request,
            max_tokens=max_tokens,
            logprobs=top if request.logprobs else None,
            structured=structured,
        )
        if request.top_logprobs and not request.logprobs:
            raise InvalidArgument("'top_logprobs' needs 'logprobs': true")
        rendered = await self.mesh.render_chat(
            route,
            call,
            messages=hf_messages(request.messages),
            tools=tools.tools,
            tool_parser=tools.tool_parser,
            documents=request.documents,
            chat_template=request.chat_template,
            chat_template_kwargs=request.chat_template_kwargs,
            add_generation_prompt=request.add_generation_prompt
            and not request.continue_final_message,
            continue_final_message=request.continue_final_message,
        )
        limit = self.mesh.max_model_len(route, rendered)
        check_context_length(len(rendered.input_ids), max_tokens, limit, model=route.name)
        if max_tokens is None and limit is not None:
            sampling.max_tokens = limit - len(rendered.input_ids)
        await self.mesh.reserve(
            call, len(rendered.input_ids), sequences=request.n, max_tokens=sampling.max_tokens
        )
        streams = [
            self.mesh.generate(
                route,
                rendered.input_ids,
                sampling,
                call,
                logprobs=request.logprobs,
                whole=not request.stream,
            )
        ]
        run = ChoiceStreams(self, route, call, request.n, [rendered], streams, time.monotonic())
        with with_param(source):
            if request.stream:
                return await run.start_stream(self._chat_chunks(run, request, tools))
            choices = await run.collect()
        out = []
        for choice in choices:
            logprobs = None
            if request.logprobs:
                names = await run.names(choice)
                logprobs = ChatLogprobs(content=gen.chat_logprobs(choice, names, top))
            message, finish = answer_message(tools, choice.text, choice.finish_reason)
            out.append(
                ChatChoice(
                    index=choice.index, message=message, logprobs=logprobs, finish_reason=finish
                )
            )
        return ChatCompletionResponse(
            id=run.id("chatcmpl"),
            created=now(),
            model=request.model,
            choices=out,
            usage=run.usage(choices),
        )

    async def _chat_chunks(
        self, run: ChoiceStreams, request: ChatCompletionRequest, tools: ToolPlan
    ) -> AsyncIterator[bytes]:
        usage = request.stream_options is not None and request.stream_options.include_usage
        chunks = Chunks(
            run.id("chatcmpl"), "chat.completion.chunk", request.model, include_usage=usage
        )
        top = request.top_logprobs or 0
        readers: dict[int, ToolCallStream] = {}
        async for batch in run.deltas():
            parts = []
            for choice, delta in batch:
                text, calls = delta.text, NO_CALLS
                if tools.reader is not None:
                    reader = readers.setdefault(choice.index, ToolCallStream(tools.reader))
                    text, calls = reader.feed(delta.text, final=delta.finish_reason is not None)
                if not choice.started:
                    choice.started = True
                    first = {
                        "index": choice.index,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                    parts.append(chunks.choice(first))
                if not delta.finish_reason and not gen.has_logprobs(delta) and not calls:
                    if text:
                        parts.append(chunks.content(choice.index, text))
                    continue  # no text: the detokenizer (or the tool parser) holds it
                logprobs = None
                if request.logprobs and gen.has_logprobs(delta):
                    names = await run.names(delta)
                    entries = gen.chat_logprobs(delta, names, top)
                    logprobs = {"content": [e.model_dump() for e in entries]}
                content: dict[str, Any] = {"content": text} if text else {}
                if calls:
                    content["tool_calls"] = [call.openai() for call in calls]
                called = choice.index in readers and bool(readers[choice.index].calls)
                entry = {
                    "index": choice.index,
                    "delta": content,
                    "logprobs": logprobs,
                    "finish_reason": finish_reason(delta.finish_reason, called),
                }
                parts.append(chunks.choice(entry))
            if written := _batch_bytes(run, parts, chunks, usage):
                yield written


def _batch_bytes(run: ChoiceStreams, parts: list[bytes], chunks: Chunks, usage: bool) -> bytes:
    """One write for a batch of chunks; once every choice has finished, the stream's closing
    write: the last choices, the usage chunk (when asked for) and `[DONE]` together."""
    if not run.finished:
        return b"".join(parts)
    if usage:
        parts.append(chunks.usage(run.usage(run.choices)))
    parts.append(DONE)
    return LastChunk(b"".join(parts))


def _prompts(prompt: str | list) -> list[str | list[int]]:
    if isinstance(prompt, str):
        items: list = [prompt]
    elif prompt and all(isinstance(p, int) for p in prompt):
        items = [list(prompt)]
    else:
        items = list(prompt)
    if not items:
        raise InvalidArgument("'prompt' is empty")
    for item in items:
        if not item:
            raise InvalidArgument("'prompt' is empty")
    return items


class ChoiceStreams:
    """One generation request's engine streams, one per prompt, and the choices they fill
    (choice index = prompt * n + sequence)."""

    def __init__(
        self,
        serving: GenerationServing,
        route: ModelRoute,
        call: CallContext,
        n: int,
        rendered: list[Rendered],
        streams: list[AsyncIterator[GenerateDelta]],
        arrival: float,
    ) -> None:
        self.serving, self.route, self.call, self.n, self.rendered = (
            serving,
            route,
            call,
            n,
            rendered,
        )
        self.arrival = arrival
        self.choices = [gen.Choice(index=i) for i in range(n * len(rendered))]
        self._id: str | None = None
        self._first_seen = False
        self._batches: AsyncGenerator[list[tuple[int, GenerateDelta]], None] = gen.merge(streams)

    def id(self, prefix: str) -> str:
        if self._id is None:
            self._id = new_id(prefix)
        return self._id

    @property
    def finished(self) -> bool:
        return all(c.finish_reason is not None for c in self.choices)

    async def deltas(self) -> AsyncIterator[list[tuple[gen.Choice, GenerateDelta]]]:
        """(choice, delta) pairs as the engines answer, one list per batch of responses that
        arrived together; deltas of one choice in a batch are combined."""
        async for batch in self._batches:
            if not self._first_seen:
                self._first_seen = True
                first_token()
                self.serving.metrics.ttft.labels(self.route.name).observe(
                    time.monotonic() - self.arrival
                )
            combined: dict[int, GenerateDelta] = {}
            for position, delta in batch:
                index = position * self.n + delta.index
                combined[index] = (
                    gen.combine(combined[index], delta) if index in combined else delta
                )
            out = []
            for index, delta in combined.items():
                choice = self.choices[index]
                if choice.finish_reason is not None:
                    continue  # exactly one finish_reason per choice
                choice.add(delta)
                out.append((choice, delta))
            if out:
                yield out
        unfinished = [c.index for c in self.choices if c.finish_reason is None]
        if unfinished:
            logger.error(
                "engine stream for %s ended without finishing choices %s",
                self.route.name,
                unfinished,
            )
            raise InternalError()
        usage = self.usage(self.choices)
        self.serving.metrics.generated_tokens.labels(self.route.name).inc(usage.completion_tokens)
        if self.call.quota is not None:
            await self.call.quota.settle(usage.prompt_tokens, usage.completion_tokens)
        genai_response(
            usage.prompt_tokens,
            usage.completion_tokens,
            [c.finish_reason for c in self.choices if c.finish_reason],
        )

    async def start_stream(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Wait for the engine's first answer (errors are still HTTP errors), then stream
        `chunks`, which read `deltas()`."""
        merged = self._batches
        try:
            first = [await merged.__anext__()]
        except StopAsyncIteration:
            first = []
        except BaseException:
            await merged.aclose()
            raise

        async def replay() -> AsyncGenerator[list[tuple[int, GenerateDelta]], None]:
            for item in first:
                yield item
            async for item in merged:
                yield item

        self._batches = replay()
        return chunks

    async def collect(self) -> list[gen.Choice]:
        async for _ in self.deltas():
            pass
        return self.choices

    async def names(self, source: gen.Logprobs) -> dict[int, str]:
        ids = sorted(set(gen.logprob_ids(source)))
        strings = await self.serving.mesh.token_strings(self.route, self.call, ids)
        return dict(zip(ids, strings, strict=True))

    def usage(self, choices: list[gen.Choice]) -> Usage:
        prompt = sum(len(r.input_ids) for r in self.rendered)
        completion = sum(c.num_output_tokens for c in choices)
        return Usage(
            prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
        )
