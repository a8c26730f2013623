"""vLLM alone vs. the hfmesh path, under the same streaming load, on one machine.

For each model, both servers are loaded (one after the other), then measured
in alternating rounds — a, b, a, b, ... — so a noisy neighbour on a shared
machine hits both alike; only the server being measured has work:

  (a) `python -m vllm.entrypoints.openai.api_server` — vLLM's own OpenAI server;
  (b) gateway → tokenizer → engine_vllm — the mesh (the engine gets token ids).

Both run the same vLLM engine settings (float32, same context length and KV
cache; the engine config vLLM logs is identical). The same client sends the
same prompts to `/v1/completions` with `stream=true`, `ignore_eos=true` and a
fixed `max_tokens`, `--concurrency` at a time, after a warm-up round. Printed
per model: output tokens/s (median of the rounds, and each round), the ratio
b/a, TTFT p50/p99, ITL p50 (gap between streamed chunks; 0 when chunks arrive
in bursts) and TPOT p50 over all rounds, and CPU seconds per 1000 output tokens
of every process tree.

    .venv/bin/python bench/vllm_mesh.py [--models smollm2-135m-instruct,tiny-llama]
        [--concurrency 32] [--requests 96] [--output-len 64] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.launcher.processes import ServiceProcess, free_port, start_service, wait_ready  # noqa: E402
from services.models.cache import ensure_model  # noqa: E402

CONTEXT = {"smollm2-135m-instruct": 1024, "tiny-llama": 512}
TOPICS = [
    "a lighthouse keeper",
    "the history of bread",
    "a robot learning to paint",
    "rain in a desert town",
    "the first day of school",
    "a chess tournament",
    "an old bicycle",
    "the migration of birds",
    "a night train to the coast",
    "volcanoes",
    "a library that never closes",
    "the smell of coffee",
    "a lost umbrella",
    "winter in the mountains",
    "a small bakery",
    "the moon landing",
]
ENV = {
    "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
    "HF_HUB_OFFLINE": "1",
}


def prompts(count: int) -> list[str]:
    return [
        f"Write a short paragraph about {TOPICS[i % len(TOPICS)]} (number {i})."
        for i in range(count)
    ]


@dataclass
class RequestStats:
    ttft: float
    itls: list[float]
    tokens: int
    tpot: float  # time per output token after the first


@dataclass
class RunStats:
    label: str
    wall: float
    requests: list[RequestStats] = field(default_factory=list)
    cpu_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        return sum(r.tokens for r in self.requests) / self.wall

    def ttft(self, q: float) -> float:
        return _quantile([r.ttft for r in self.requests], q)

    def itl(self, q: float) -> float:
        return _quantile([x for r in self.requests for x in r.itls], q)

    def tpot(self, q: float) -> float:
        return _quantile([r.tpot for r in self.requests], q)


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def one_request(
    client: httpx.AsyncClient, url: str, model: str, prompt: str, output_len: int
) -> RequestStats:
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": output_len,
        "temperature": 0.0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    arrivals: list[float] = []
    tokens = 0
    async with client.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(
                f"{url}: HTTP {response.status_code}: {(await response.aread())[:300]!r}"
            )
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                arrivals.append(time.perf_counter())
    if not arrivals:
        raise RuntimeError(f"{url}: no text streamed")
    itls = [b - a for a, b in itertools.pairwise(arrivals)]
    tokens = tokens or len(arrivals)
    tpot = (arrivals[-1] - arrivals[0]) / max(tokens - 1, 1)
    return RequestStats(ttft=arrivals[0] - start, itls=itls, tokens=tokens, tpot=tpot)


async def run_load(
    label: str,
    url: str,
    model: str,
    *,
    concurrency: int,
    requests: int,
    output_len: int,
    warm_up: bool,
    on_start=lambda: {},
) -> RunStats:
    limits = httpx.Limits(
        max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2
    )
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        gate = asyncio.Semaphore(concurrency)

        async def guarded(prompt: str) -> RequestStats:
            async with gate:
                return await one_request(client, url, model, prompt, output_len)

        if warm_up:  # not measured
            await asyncio.gather(*(guarded(p) for p in prompts(concurrency)))
        cpu_before = on_start()
        start = time.perf_counter()
        results = await asyncio.gather(*(guarded(p) for p in prompts(requests)))
        wall = time.perf_counter() - start
    short = [r.tokens for r in results if r.tokens != output_len]
    if short:
        raise RuntimeError(
            f"{label}: {len(short)} requests did not stream {output_len} tokens: {short[:5]}"
        )
    return RunStats(label, wall, list(results), cpu_before)


def cpu_seconds(services: list[ServiceProcess]) -> dict[str, float]:
    """CPU time (user + system) of each service's whole process tree so far."""
    out = {}
    for service in services:
        try:
            root = psutil.Process(service.process.pid)
            total = 0.0
            for proc in [root, *root.children(recursive=True)]:
                try:
                    times = proc.cpu_times()
                    total += times.user + times.system
                except psutil.NoSuchProcess:
                    pass
            out[service.name] = total
        except psutil.NoSuchProcess:
            out[service.name] = float("nan")
    return out


def vllm_alone(name: str, folder: str, log_dir: Path) -> tuple[list[ServiceProcess], str]:
    args = [
        "--model",
        folder,
        "--served-model-name",
        name,
        "--dtype",
        "float32",
        "--host",
        "127.0.0.1",
        "--max-model-len",
        str(CONTEXT[name]),
    ]
    server = start_service(
        "vllm.entrypoints.openai.api_server",
        args,
        name=f"vllm-{name}",
        env=ENV,
        ready="none",
        log_dir=log_dir,
    )
    wait_ready(server, "http", 600, path="/health")
    return [server], f"{server.url}/v1/completions"


def mesh(name: str, folder: str, log_dir: Path) -> tuple[list[ServiceProcess], str]:
    engine_port, tokenizer_port = free_port(), free_port()
    model_list = log_dir / f"mesh-{name}.yaml"
    model_list.write_text(
        yaml.safe_dump(
            {
                "models": [
                    {
                        "name": name,
                        "source": folder,
                        "task": "text_generation",
                        "backend": "vllm",
                        "max_model_len": CONTEXT[name],
                        "endpoints": {
                            "tokenizer": [f"127.0.0.1:{tokenizer_port}"],
                            "vllm": [f"127.0.0.1:{engine_port}"],
                        },
                    }
                ]
            }
        )
    )
    started: list[ServiceProcess] = []
    try:
        started.append(
            start_service(
                "services.engine_vllm",
                [
                    "--model_dir",
                    folder,
                    "--model_name",
                    name,
                    "--host",
                    "127.0.0.1",
                    "--max_model_len",
                    str(CONTEXT[name]),
                    "--disable_log_requests",
                ],
                name=f"engine_vllm-{name}",
                port=engine_port,
                env=ENV,
                ready="none",
                log_dir=log_dir,
            )
        )
        started.append(
            start_service(
                "services.tokenizer",
                ["--model_list", str(model_list), "--host", "127.0.0.1"],
                name=f"tokenizer-{name}",
                port=tokenizer_port,
                ready="none",
                log_dir=log_dir,
            )
        )
        for service in started:
            wait_ready(service, "grpc", timeout=600)
        gateway = start_service(
            "services.gateway",
            ["--model_list", str(model_list), "--host", "127.0.0.1"],
            name=f"gateway-{name}",
            ready="http",
            ready_timeout=120,
            log_dir=log_dir,
        )
        started.append(gateway)
    except BaseException:
        for service in started:
            service.stop()
        raise
    return started, f"{gateway.url}/openai/v1/completions"


@dataclass
class Server:
    label: str
    services: list[ServiceProcess]
    url: str
    rounds: list[RunStats] = field(default_factory=list)

    def tokens_per_second(self) -> float:
        return statistics.median(r.tokens_per_second for r in self.rounds)

    def pooled(self) -> RunStats:
        pooled = RunStats(self.label, sum(r.wall for r in self.rounds))
        for run in self.rounds:
            pooled.requests += run.requests
            for name, spent in run.cpu_seconds.items():
                pooled.cpu_seconds[name] = pooled.cpu_seconds.get(name, 0.0) + spent
        return pooled


def measure(
    server: Server, everything: list[ServiceProcess], name: str, args: argparse.Namespace
) -> RunStats:
    """One round on one server; CPU time is counted for every process, measured or idle."""
    stats = asyncio.run(
        run_load(
            server.label,
            server.url,
            name,
            concurrency=args.concurrency,
            requests=args.requests,
            output_len=args.output_len,
            warm_up=not server.rounds,
            on_start=lambda: cpu_seconds(everything),
        )
    )
    after = cpu_seconds(everything)
    stats.cpu_seconds = {k: after[k] - stats.cpu_seconds.get(k, 0.0) for k in after}
    server.rounds.append(stats)
    return stats


def report(name: str, servers: list[Server], args: argparse.Namespace) -> str:
    alone, meshed = servers
    rows = [
        f"\n{name}: {len(alone.rounds)} rounds x {args.requests} requests, concurrency "
        f"{args.concurrency}, {args.output_len} output tokens each (ignore_eos), streamed"
    ]
    rows.append(
        f"  {'server':<36}{'out tok/s':>10}{'TTFT p50':>10}{'TTFT p99':>10}"
        f"{'ITL p50':>10}{'TPOT p50':>10}"
        "   rounds tok/s"
    )
    for server in servers:
        pooled = server.pooled()
        each = " ".join(f"{r.tokens_per_second:.0f}" for r in server.rounds)
        rows.append(
            f"  {server.label:<36}{server.tokens_per_second():>10.1f}"
            f"{pooled.ttft(0.5) * 1e3:>8.0f}ms{pooled.ttft(0.99) * 1e3:>8.0f}ms"
            f"{pooled.itl(0.5) * 1e3:>8.1f}ms{pooled.tpot(0.5) * 1e3:>8.1f}ms"
            f"   {each}"
        )
    rows.append(
        "  ratio b/a (output tokens/s, medians): "
        f"{meshed.tokens_per_second() / alone.tokens_per_second():.3f}"
    )
    for server in servers:
        pooled = server.pooled()
        tokens = sum(r.tokens for r in pooled.requests) / 1000
        spent = ", ".join(f"{k} {v / tokens:.2f}" for k, v in pooled.cpu_seconds.items())
        rows.append(f"  CPU s / 1000 output tokens while {server.label[:3]} ran: {spent}")
    return "\n".join(rows)


def bench_model(name: str, log_dir: Path, args: argparse.Namespace) -> str:
    folder = str(ensure_model(name))
    servers: list[Server] = []
    try:
        for label, setup in (
            ("(a) vllm openai api_server", vllm_alone),
            ("(b) gateway->tokenizer->engine_vllm", mesh),
        ):
            services, url = setup(name, folder, log_dir)
            servers.append(Server(label, services, url))
        everything = [s for server in servers for s in server.services]
        for round_index in range(args.rounds):
            for server in servers:
                stats = measure(server, everything, name, args)
                print(
                    f"{name} round {round_index + 1} {server.label[:3]}: "
                    f"{stats.tokens_per_second:.1f} tok/s",
                    flush=True,
                )
        return report(name, servers, args)
    finally:
        for server in servers:
            for service in server.services:
                service.stop()


def main(argv: list[str] | None = None) -> int:
    # SIGTERM unwinds like Ctrl-C, so that the services this bench started are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="smollm2-135m-instruct,tiny-llama")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--log-dir", default=None, help="service logs (default: a temporary folder)"
    )
    args = parser.parse_args(argv)
    unknown = [m for m in args.models.split(",") if m not in CONTEXT]
    if unknown:
        parser.error(f"unknown model {unknown[0]!r} (known: {', '.join(CONTEXT)})")
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="hfmesh-bench-vllm-"))
    print(f"service logs: {log_dir}", flush=True)
    reports = [bench_model(name, log_dir, args) for name in args.models.split(",")]
    print("\n".join(reports))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
