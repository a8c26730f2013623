"""Gateway overhead: the same streaming load against the engine directly and through the gateway.

    python bench/gateway.py [--model tiny-llama] [--requests 48] [--concurrency 8]
                            [--max-tokens 64] [--rounds 6] [--no-pin] [--tracing]
                            [--profile SECONDS]
    python bench/gateway.py --model smollm2-135m-instruct      # the goals below, one table

Starts the model (tiny-llama, or smollm2-135m-instruct for a realistic per-token
cost, with fewer requests by default) on the HF engine, the tokenizer service and the gateway as
real processes, then runs the same chat workload two ways, alternating rounds,
in two phases: latency (one stream at a time, so TTFT differences are the
gateway's own hops, not the engine's batching) and throughput (concurrent
streams):
- direct: gRPC `ModelStreamInfer` to the engine with the rendered `input_ids`
  (rendered once up front, as a client holding token ids would) and the
  `coalesce_deltas` parameter the gateway sets too;
- gateway: HTTP `POST /openai/v1/chat/completions` with `stream: true` (SSE) →
  tokenizer `render` → engine `ModelStreamInfer`.
Every request generates exactly `--max-tokens` tokens (`ignore_eos`). TTFT is
the time to the first response carrying a token: direct, the first response
with `output_ids`; through the gateway, the first SSE chunk (which the gateway
sends when the engine's first token arrives). Prints output tokens/s of each
path and their ratio, TTFT p50/p99 with the TTFT the gateway and the tokenizer add,
and the peak resident set of each process while the load runs (sampled every 50 ms).

Then one table checks the throughput phase (c=8, 64 tokens) against its goals: the whole
mesh ≥ 4× KServe's HF backend (SmolLM2 one request at a time: ~15 tok/s on the 2-core
development machine, the reference quoted here) and ≥ 0.9× the engine called directly;
output tok/s ≥ 0.97× direct; added TTFT p50 ≤ 2 ms and p99 ≤ 10 ms; gateway RSS ≤ 150 MB
and tokenizer ≤ 300 MB. `--profile SECONDS` afterwards runs the throughput load through the
gateway for that long under `py-spy` (gateway, tokenizer, engine) and prints where each
process's CPU goes (bench/profiling.py).

Both clients are lean (raw tensors read in place; SSE split on blank lines with
only the usage event parsed), since on a small machine the client's CPU is
taken from the servers it measures. By default the engine runs on its own CPUs
(the first half, with as many torch threads) and the gateway, the tokenizer
and this client on the others, as services with their own CPU requests run;
the engine then is the same in both paths. With `--no-pin` every process
shares every CPU: on 2 cores the engine's torch threads then wait on whichever
core the gateway or client holds, which is what that number measures.

`--tracing`: the cost of tracing instead. Two identical meshes (engine, tokenizer, gateway),
one without an OTLP endpoint (tracing off: nothing installed) and one exporting every span
(`OTEL_TRACES_SAMPLER=always_on`) to an OTLP/gRPC receiver in this process; the same chat
workload through both gateways, alternating rounds. Targets: TTFT p50 +≤ 1 ms, output tokens/s
≥ 97%. It also times the tracing hooks a request passes while tracing is off (the cost of
"no endpoint").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import aiohttp  # noqa: E402
import grpc  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

from bench.profiling import PeakRss, Profile  # noqa: E402
from services.common.codec import InferRequest, Tensor, as_bytes_array  # noqa: E402
from services.common.converters import infer_request_to_pb, infer_response_from_pb  # noqa: E402
from services.common.pb import inference_pb2_grpc as pb_grpc  # noqa: E402
from services.launcher.processes import free_port, start_service  # noqa: E402
from services.models.cache import ensure_model  # noqa: E402
from tests.helpers.metrics import scrape, total  # noqa: E402
from tests.helpers.otlp import OtlpReceiver  # noqa: E402

#: KServe's HF server (transformers backend) generating with SmolLM2-135M-Instruct, one request
#: at a time, on the 2-core development machine: the reference of the ≥ 4× goal.
KSERVE_HF_TOKENS_PER_S = 15.0
# (latency phase, throughput phase) requests per round and path
DEFAULT_REQUESTS = {"tiny-llama": (40, 48), "smollm2-135m-instruct": (10, 16)}
TOPICS = [
    "the sea",
    "a robot",
    "autumn",
    "a lighthouse",
    "coffee",
    "mountains",
    "a train",
    "the moon",
]


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of a process (this one when `pid` is None)."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    mode: str
    seconds: float = 0.0
    tokens: int = 0
    requests: int = 0
    ttfts: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)
    engine_ttft: list[float] = field(default_factory=lambda: [0.0, 0.0])  # sum, count

    @property
    def engine_ttft_mean(self) -> float:
        return (
            self.engine_ttft[0] / self.engine_ttft[1] * 1000
            if self.engine_ttft[1]
            else float("nan")
        )

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def p(self, q: float) -> float:
        return float(np.percentile(self.ttfts, q)) * 1000 if self.ttfts else float("nan")


def engine_ttft(url: str) -> tuple[float, float]:
    """(sum, count) of the engine's own `vllm:time_to_first_token_seconds` histogram."""
    samples = scrape(url)
    name = "vllm:time_to_first_token_seconds"
    return total(samples, f"{name}_sum"), total(samples, f"{name}_count")


def messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Write a short story about {TOPICS[i % len(TOPICS)]}."}]


async def render_all(channel: grpc.aio.Channel, count: int) -> list[list[int]]:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    out = []
    for i in range(count):
        request = InferRequest(
            "llm.render", [Tensor("messages", "BYTES", as_bytes_array([json.dumps(messages(i))]))]
        )
        reply = infer_response_from_pb(
            await stub.ModelInfer(infer_request_to_pb(request), timeout=30)
        )
        out.append([int(v) for v in reply.outputs[0].data])
    return out


async def direct_one(stub, ids: list[int], max_tokens: int, result: Result) -> None:
    sampling = {"max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
    request = InferRequest(
        "llm",
        [
            Tensor("input_ids", "INT64", np.asarray(ids, dtype=np.int64)),
            Tensor("sampling_parameters", "BYTES", as_bytes_array([json.dumps(sampling)])),
            Tensor("stream", "BOOL", np.asarray([True])),
            Tensor("exclude_input_in_output", "BOOL", np.asarray([True])),
        ],
        parameters={"coalesce_deltas": True},
    )  # as the gateway asks, so both paths get the same engine behaviour
    message = infer_request_to_pb(request)

    async def requests():
        yield message

    started = time.perf_counter()
    first = None
    async for reply in stub.ModelStreamInfer(requests(), timeout=300):
        if reply.error_message:
            raise RuntimeError(reply.error_message)
        # Read the raw tensors in place (what a lean client does): new ids and the final count.
        response = reply.infer_response
        for tensor, data in zip(response.outputs, response.raw_output_contents, strict=True):
            if tensor.name == "output_ids" and first is None and data:
                first = time.perf_counter() - started
            elif tensor.name == "num_output_tokens" and data:
                result.tokens += int.from_bytes(data[:8], "little", signed=True)
    result.ttfts.append(first)
    result.requests += 1


async def gateway_one(
    session: aiohttp.ClientSession, i: int, max_tokens: int, result: Result
) -> None:
    body = {
        "model": "llm",
        "messages": messages(i),
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first = None
    pending = b""
    async with session.post("/openai/v1/chat/completions", json=body) as reply:
        if reply.status != 200:
            raise RuntimeError(f"gateway answered {reply.status}: {await reply.text()}")
        async for data in reply.content.iter_any():
            # Events are split on the blank line; only the usage event is parsed as JSON.
            events = (pending + data).split(b"\n\n")
            pending = events.pop()
            for event in events:
                if first is None and event.startswith(b"data: {") and b'"choices":[{' in event:
                    first = (
                        time.perf_counter() - started
                    )  # the gateway's first chunk waits for the first token
                if b'"usage":{' in event:
                    result.tokens += json.loads(event[6:])["usage"]["completion_tokens"]
    result.ttfts.append(first)
    result.requests += 1


async def run_load(
    make_call,
    count: int,
    concurrency: int,
    stagger: float,
    result: Result,
    pids: dict[str, int | None],
    metrics_url: str,
) -> None:
    """`concurrency` streams, each sending its share of `count` requests back to back,
    started `stagger` seconds apart so arrivals spread as in steady traffic (in
    lockstep, the engine's batching rather than the path would decide the numbers)."""

    async def stream(worker: int) -> None:
        await asyncio.sleep(worker * stagger)  # the stream's phase offset, not synchronisation
        for i in range(worker, count, concurrency):
            await make_call(i)

    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    ttft_before = engine_ttft(metrics_url)
    started = time.perf_counter()
    await asyncio.gather(*(stream(w) for w in range(concurrency)))
    result.seconds += time.perf_counter() - started
    ttft_after = engine_ttft(metrics_url)
    result.engine_ttft = [result.engine_ttft[i] + ttft_after[i] - ttft_before[i] for i in range(2)]
    for name, pid in pids.items():
        result.cpu[name] = result.cpu.get(name, 0.0) + cpu_seconds(pid) - cpu_before[name]


def split_cpus() -> tuple[set[int], set[int]]:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("--pin needs at least 2 CPUs")
    half = len(cpus) // 2
    return set(cpus[:half]), set(cpus[half:])


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of a process (threads started later inherit it)."""
    for thread in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(thread), cpus)


@dataclass(frozen=True)
class Phase:
    name: str
    concurrency: int
    requests: int
    max_tokens: int
    stagger: float = 0.0


@dataclass
class LoadPath:
    """One way of sending the workload: how to send request `i`, and the mesh it loads."""

    mode: str
    call: Any  # (i, max_tokens, result) -> awaitable
    pids: dict[str, int | None]
    metrics_url: str


async def run_phase(phase: Phase, rounds: int, paths: list[LoadPath]) -> list[Result]:
    results = [Result(path.mode) for path in paths]
    for round_ in range(rounds):
        for path, result in zip(paths, results, strict=True):
            tokens, seconds = result.tokens, result.seconds
            await run_load(
                lambda i, path=path, result=result: path.call(i, phase.max_tokens, result),
                phase.requests,
                phase.concurrency,
                phase.stagger,
                result,
                path.pids,
                path.metrics_url,
            )
            rate = (result.tokens - tokens) / (result.seconds - seconds)
            print(
                f"  {phase.name.split(' ')[0]} round {round_ + 1}/{rounds}, {path.mode}: "
                f"{rate:.1f} tok/s",
                flush=True,
            )
    return results


async def bench(args, phases: list[Phase], stacks: list[Stack]):
    """Direct vs gateway on `stacks[0]`, or (`--tracing`) gateway vs gateway on the two."""
    tokenizer_channel = grpc.aio.insecure_channel(stacks[0].tokenizer_address)
    engine_channel = grpc.aio.insecure_channel(stacks[0].engine_address)
    stub = pb_grpc.GRPCInferenceServiceStub(engine_channel)
    prompts = await render_all(tokenizer_channel, len(TOPICS))
    width = max(p.concurrency for p in phases) * 2
    results = []
    async with contextlib.AsyncExitStack() as exits:
        clients = []
        for stack in stacks:
            session = aiohttp.ClientSession(
                base_url=stack.gateway_url,
                connector=aiohttp.TCPConnector(limit=width),
                timeout=aiohttp.ClientTimeout(total=300),
            )
            clients.append(await exits.enter_async_context(session))
        paths = [
            LoadPath(
                stack.label,
                lambda i, n, r, client=client: gateway_one(client, i, n, r),
                stack.pids,
                stack.metrics_url,
            )
            for stack, client in zip(stacks, clients, strict=True)
        ]
        if len(stacks) == 1:
            direct = LoadPath(
                "direct gRPC → engine",
                lambda i, n, r: direct_one(stub, prompts[i % len(prompts)], n, r),
                stacks[0].pids,
                stacks[0].metrics_url,
            )
            paths = [direct, *paths]
        await run_phase(Phase("warm-up", 4, 8, 8), 1, paths)
        watched = {name: pid for name, pid in stacks[0].pids.items() if pid is not None}
        for phase in phases:
            with PeakRss(watched) as rss:
                measured = await run_phase(phase, args.rounds, paths)
            results.append((phase, rss, *measured))
        recording = None
        if args.profile:
            recording = Profile(watched, args.profile, Path(tempfile.mkdtemp(prefix="hfmesh-spy-")))
            await timed_load(paths[-1], phases[-1], args.profile)
    await tokenizer_channel.close()
    await engine_channel.close()
    return results, recording


async def timed_load(path: LoadPath, phase: Phase, seconds: float) -> None:
    """`phase`'s load on `path` for `seconds` (no measurement: a profiler watches)."""
    deadline = time.perf_counter() + seconds
    result = Result(path.mode)

    async def stream(worker: int) -> None:
        await asyncio.sleep(worker * phase.stagger)
        i = worker
        while time.perf_counter() < deadline:
            await path.call(i, phase.max_tokens, result)
            i += phase.concurrency

    await asyncio.gather(*(stream(w) for w in range(phase.concurrency)))


def report(
    phase: Phase, rss: PeakRss, direct: Result, through: Result, rounds: int, tracing: bool
) -> None:
    print(
        f"\n{phase.name}: {rounds}×{phase.requests} streamed chat requests per path, "
        f"concurrency {phase.concurrency} (streams {phase.stagger * 1000:.0f} ms apart), "
        f"{phase.max_tokens} new tokens each (ignore_eos)"
    )
    print(
        f"{'path':56} {'requests':>8} {'tokens':>7} {'seconds':>8} {'tok/s':>8} "
        f"{'TTFT p50 ms':>12} {'TTFT p99 ms':>12}"
        f" {'engine TTFT mean ms':>20}  CPU s: engine / tokenizer / gateway / client"
    )
    for r in (direct, through):
        cpu = " / ".join(
            f"{r.cpu.get(k, 0.0):.2f}" for k in ("engine", "tokenizer", "gateway", "client")
        )
        print(
            f"{r.mode:56} {r.requests:8d} {r.tokens:7d} {r.seconds:8.2f} {r.rate:8.1f} "
            f"{r.p(50):12.1f} {r.p(99):12.1f}"
            f" {r.engine_ttft_mean:20.1f}  {cpu}"
        )
    ratio = through.rate / direct.rate if direct.rate else float("nan")
    versus, ratio_target, ttft_target = (
        ("traced / untraced", 0.97, 1) if tracing else ("gateway / direct", 0.97, 2)
    )
    print(f"  output tokens/s ratio ({versus}): {ratio:.3f}   (target >= {ratio_target})")
    print(
        f"  added TTFT: p50 {through.p(50) - direct.p(50):+.2f} ms (target <= {ttft_target} ms), "
        f"p99 {through.p(99) - direct.p(99):+.2f} ms"
    )
    peaks = ", ".join(
        f"{name} {rss.peaks[name]:.0f} (idle {rss.start[name]:.0f})" for name in rss.peaks
    )
    print(f"  peak RSS MB{' (first mesh)' if tracing else ''}: {peaks}")


def report_goals(phase: Phase, rss: PeakRss, direct: Result, mesh: Result) -> None:
    """The throughput phase against the goals of the whole mesh (module docstring)."""
    ratio = mesh.rate / direct.rate if direct.rate else float("nan")
    reference = mesh.rate / KSERVE_HF_TOKENS_PER_S
    added = {q: mesh.p(q) - direct.p(q) for q in (50, 99)}
    beyond = {r.mode: float(np.mean(r.ttfts)) * 1000 - r.engine_ttft_mean for r in (direct, mesh)}
    rows = [
        (
            f"whole mesh tok/s / KServe HF backend ({KSERVE_HF_TOKENS_PER_S:.0f} tok/s)",
            f"{mesh.rate:.1f} / {KSERVE_HF_TOKENS_PER_S:.0f} = {reference:.2f}x",
            ">= 4x",
            reference >= 4,
        ),
        (
            "whole mesh tok/s / engine direct tok/s",
            f"{mesh.rate:.1f} / {direct.rate:.1f} = {ratio:.3f}",
            ">= 0.9",
            ratio >= 0.9,
        ),
        ("streamed output tok/s / direct", f"{ratio:.3f}", ">= 0.97", ratio >= 0.97),
        (
            "TTFT p50 ms: direct, mesh, added",
            f"{direct.p(50):.1f}, {mesh.p(50):.1f}, {added[50]:+.2f}",
            "added <= 2 ms",
            added[50] <= 2,
        ),
        (
            "TTFT p99 ms: direct, mesh, added",
            f"{direct.p(99):.1f}, {mesh.p(99):.1f}, {added[99]:+.2f}",
            "added <= 10 ms",
            added[99] <= 10,
        ),
        (
            "TTFT mean beyond the engine's own, ms",
            f"direct {beyond[direct.mode]:.1f}, mesh {beyond[mesh.mode]:.1f}",
            "(what the hops add)",
            None,
        ),
        (
            "gateway RSS MB, peak (idle)",
            f"{rss.peaks['gateway']:.0f} ({rss.start['gateway']:.0f})",
            "<= 150",
            rss.peaks["gateway"] <= 150,
        ),
        (
            "tokenizer RSS MB, peak (idle)",
            f"{rss.peaks['tokenizer']:.0f} ({rss.start['tokenizer']:.0f})",
            "<= 300",
            rss.peaks["tokenizer"] <= 300,
        ),
        (
            "engine RSS MB, peak (idle)",
            f"{rss.peaks['engine']:.0f} ({rss.start['engine']:.0f})",
            "",
            None,
        ),
    ]
    print(
        f"\ngoals, {phase.name} phase (c={phase.concurrency}, {phase.max_tokens} tokens), "
        f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())} at the end"
    )
    print(f"{'measure':56} {'measured':34} {'target':24} met")
    for name, value, target, met in rows:
        verdict = "" if met is None else "yes" if met else "NO"
        print(f"{name:56} {value:34} {target:24} {verdict}")


def main() -> None:
    # SIGTERM unwinds like Ctrl-C, so that the services this bench started are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        default="tiny-llama",
        choices=sorted(DEFAULT_REQUESTS),
        help="model served by the HF engine",
    )
    parser.add_argument(
        "--requests",
        type=int,
        help="throughput phase: requests per round and path (default per model)",
    )
    parser.add_argument(
        "--concurrency", type=int, default=8, help="throughput phase: concurrent streams"
    )
    parser.add_argument(
        "--max-tokens", type=int, default=64, help="throughput phase: new tokens per request"
    )
    parser.add_argument(
        "--stagger-ms",
        type=float,
        default=25.0,
        help="throughput phase: start offset between streams",
    )
    parser.add_argument(
        "--latency-requests",
        type=int,
        help="latency phase: requests per round and path (default per model)",
    )
    parser.add_argument(
        "--rounds", type=int, default=6, help="alternating rounds per path and phase"
    )
    parser.add_argument(
        "--engine-flags", default="", help="extra HF engine flags, e.g. '--num_threads 1'"
    )
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=len(os.sched_getaffinity(0)) >= 2,
        help="give the engine its own CPUs (the first half; torch threads to match) and the "
        "gateway, tokenizer and this client the rest, as services with their own CPU requests run "
        "(default: on with 2 or more CPUs; --no-pin lets every process use every CPU)",
    )
    parser.add_argument(
        "--profile",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="after the measurement, run the throughput load through the gateway for this long "
        "under py-spy (gateway, tokenizer, engine) and print each process's heaviest functions",
    )
    parser.add_argument("--profile-top", type=int, default=25, help="functions listed per process")
    parser.add_argument(
        "--tracing",
        action="store_true",
        help="compare a mesh with tracing off (no endpoint) with one exporting every span to a "
        "local OTLP receiver, instead of direct vs gateway",
    )
    args = parser.parse_args()
    args.latency_requests = args.latency_requests or DEFAULT_REQUESTS[args.model][0]
    args.requests = args.requests or DEFAULT_REQUESTS[args.model][1]
    phases = [
        Phase(
            "latency (one stream at a time: the gateway's own added TTFT)",
            1,
            args.latency_requests,
            16,
        ),
        Phase(
            "throughput", args.concurrency, args.requests, args.max_tokens, args.stagger_ms / 1000
        ),
    ]
    engine_cpus, other_cpus = split_cpus() if args.pin else (None, None)
    engine_flags = args.engine_flags.split()
    if engine_cpus and "--num_threads" not in engine_flags:
        engine_flags += ["--num_threads", str(len(engine_cpus))]
    folder = str(ensure_model(args.model))
    stacks: list[Stack] = []
    with contextlib.ExitStack() as exits:
        if args.tracing:
            receiver = exits.enter_context(OtlpReceiver())
            traced = {
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                "OTEL_TRACES_SAMPLER": "always_on",
            }
            labels = [("gateway, tracing off (no endpoint)", {}), ("gateway, tracing on", traced)]
        else:
            labels = [("HTTP SSE → gateway → tokenizer → engine", {})]
        for label, env in labels:
            stack = start_stack(label, folder, engine_flags, env)
            exits.callback(stack.stop)
            stacks.append(stack)
        if engine_cpus:
            for stack in stacks:
                pin(stack.services[0].process.pid, engine_cpus)
                for service in stack.services[1:]:
                    pin(service.process.pid, other_cpus)
            pin(os.getpid(), other_cpus)
        results, recording = asyncio.run(bench(args, phases, stacks))
        if args.tracing:
            spans = len(receiver.spans)
        if recording is not None:
            # read while the processes still run (py-spy's recorders end on their own)
            print(f"\nprofile: {args.profile:g} s of the throughput load through the gateway")
            recording.report(args.profile_top)
    placement = (
        f"engine pinned to CPUs {sorted(engine_cpus)}, gateway + tokenizer + client to "
        f"{sorted(other_cpus)}"
        if engine_cpus
        else "no pinning"
    )
    order = "untraced / traced" if args.tracing else "direct / gateway"
    print(
        f"\n{args.model} on the HF engine ({' '.join(engine_flags) or 'default flags'}), "
        f"{os.cpu_count()} CPU cores, "
        f"{placement}; rounds alternate {order}"
    )
    for phase, rss, first, second in results:
        report(phase, rss, first, second, args.rounds, args.tracing)
    if not args.tracing:
        report_goals(*results[-1])
    if args.tracing:
        print(f"\nspans received by the OTLP receiver: {spans}")
        print_hook_cost()


@dataclass
class Stack:
    """One mesh of the bench: engine, tokenizer and gateway processes."""

    label: str
    services: list
    engine_address: str
    tokenizer_address: str
    gateway_url: str
    metrics_url: str

    @property
    def pids(self) -> dict[str, int | None]:
        engine, tokenizer, gateway = (s.process.pid for s in self.services)
        return {"engine": engine, "tokenizer": tokenizer, "gateway": gateway, "client": None}

    def stop(self) -> None:
        for service in self.services:
            service.stop()


def start_stack(label: str, folder: str, engine_flags: list[str], env: dict[str, str]) -> Stack:
    engine_port, tokenizer_port, metrics_port = free_port(), free_port(), free_port()
    model_list = Path(tempfile.mkdtemp(prefix="hfmesh-bench-")) / "mesh.yaml"
    endpoints = {
        "tokenizer": [f"127.0.0.1:{tokenizer_port}"],
        "huggingface": [f"127.0.0.1:{engine_port}"],
    }
    entry = {
        "name": "llm",
        "source": folder,
        "task": "text_generation",
        "backend": "huggingface",
        "max_model_len": 512,
        "endpoints": endpoints,
    }
    model_list.write_text(yaml.safe_dump({"models": [entry]}))
    services = []
    try:
        engine_args = ["--model_dir", folder, "--model_name", "llm", "--host", "127.0.0.1"]
        services.append(
            start_service(
                "services.engine_hf",
                [*engine_args, "--metrics_port", str(metrics_port), *engine_flags],
                name="bench-engine",
                port=engine_port,
                env=env,
            )
        )
        services.append(
            start_service(
                "services.tokenizer",
                ["--model_list", str(model_list), "--host", "127.0.0.1"],
                name="bench-tokenizer",
                port=tokenizer_port,
                env=env,
            )
        )
        services.append(
            start_service(
                "services.gateway",
                ["--model_list", str(model_list), "--host", "127.0.0.1", "--log_level", "WARNING"],
                name="bench-gateway",
                ready="http",
                env=env,
            )
        )
    except BaseException:
        for service in services:
            service.stop()
        raise
    return Stack(
        label,
        services,
        f"127.0.0.1:{engine_port}",
        f"127.0.0.1:{tokenizer_port}",
        services[2].url,
        f"http://127.0.0.1:{metrics_port}/metrics",
    )


def print_hook_cost(repeat: int = 200_000) -> None:
    """What tracing costs with no endpoint: every hook one request passes, timed while off
    (no provider, no interceptor, no middleware are installed then)."""
    from services.common import tracing
    from services.gateway import genai

    assert not tracing.enabled()
    metadata = (("x-request-id", "r"),)

    def one_request() -> None:
        genai.genai_request("chat", "llm", max_tokens=16, temperature=0.0)
        for _ in range(2):  # render, then the engine stream
            tracing.with_trace_context(metadata)
        with tracing.span("render"), tracing.engine_request("llm", generative=True):
            tracing.current_request()
        genai.first_token()
        genai.genai_response(10, 16, ["length"])

    started = time.perf_counter()
    for _ in range(repeat):
        one_request()
    per_request = (time.perf_counter() - started) / repeat
    print(
        f"tracing off (no endpoint): the hooks of one request cost {per_request * 1e6:.2f} µs "
        f"in all ({repeat} requests timed in this process)"
    )


if __name__ == "__main__":
    main()
