"""Overload: admitted latency and refusal speed at 1×, capacity and 2× capacity.

    python bench/overload.py [--per-replica 4] [--seconds 30] [--max-tokens 32]
                             [--model tiny-llama] [--omp-wait-policy default|passive|active]
                             [--num-threads 0] [--client aiohttp|httpx] [--profile SECONDS]

Starts tiny-llama on one HF engine (with `--omp-wait-policy` and `--num-threads` as its
`--omp_wait_policy` and `--num_threads`),
the tokenizer and the gateway as real processes, the gateway admitting `--per-replica`
streams with no wait queue. Then three phases of `--seconds` each, clients looping
streamed chats of exactly `--max-tokens` tokens: one client (unloaded), `per-replica`
clients (at capacity) and twice that (2× capacity). A refused client waits a tenth of the
answer's Retry-After before it asks again.

Prints, per phase, the admitted streams' TTFT p50/p99 as the client saw them, how many
were refused (503) and how fast a refusal came back: as the client saw it, and inside the
gateway (`hfmesh_gateway_response_start_seconds`, interpolated within its buckets as
Prometheus' `histogram_quantile` does), and the 1-minute load average at the phase's end;
then the 2× phase's TTFT p99 over the unloaded one (target ≤ 2) and over the at-capacity
one. The first ratio is the cost of the slots plus that of the overload; the second is the
overload's alone. The default of 4 slots is where this mesh on 2 shared cores still streams at
near its unloaded latency; at 8 the cores are saturated at capacity already (docs/performance.md
has both). The clients share the machine with the mesh: `--client aiohttp` (default) costs them
less CPU than `httpx`, whose own event-loop delays show up in what it measures.
`--profile SECONDS` then drives the 2× load again, unmeasured, for that long under `py-spy`
(bench/profiling.py) and prints where the gateway, the tokenizer, the engine and this
client spend their CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import aiohttp  # noqa: E402
import httpx  # noqa: E402

from bench.profiling import Profile  # noqa: E402
from bench.soak import quantile  # noqa: E402
from services.models.cache import ensure_model  # noqa: E402
from tests.helpers.mesh import model_entry, running_mesh  # noqa: E402
from tests.helpers.metrics import scrape  # noqa: E402

PATH = "/openai/v1/chat/completions"
REFUSAL_SECONDS = "hfmesh_gateway_response_start_seconds_bucket"

#: One chat: its status, Retry-After, and seconds to its first event (200; None if none
#: came) or to the whole refusal (503).
Outcome = tuple[int, str | None, float | None]


def _body(max_tokens: int) -> dict:
    return {
        "model": "llm",
        "messages": [{"role": "user", "content": "Tell me a story."}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
    }


async def _closed_loop(
    clients: int, seconds: float, chat: Callable[[], Awaitable[Outcome]]
) -> dict[str, list[float]]:
    ttfts: list[float] = []
    refusals: list[float] = []
    stop = time.monotonic() + seconds

    async def client() -> None:
        while time.monotonic() < stop:
            status, retry_after, took = await chat()
            if status == 503 and took is not None:
                refusals.append(took)
                await asyncio.sleep(float(retry_after or "1") / 10)
            elif status != 200:
                raise RuntimeError(f"the gateway answered {status}")
            elif took is not None:
                ttfts.append(took)

    await asyncio.gather(*(client() for _ in range(clients)))
    return {"ttft": ttfts, "refused": refusals}


async def _phase_aiohttp(url: str, clients: int, seconds: float, body: dict) -> dict:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as session:

        async def chat() -> Outcome:
            started = time.monotonic()
            async with session.post(PATH, json=body) as reply:
                if reply.status != 200:
                    await reply.read()
                    took = time.monotonic() - started
                    return reply.status, reply.headers.get("Retry-After"), took
                first = None
                async for line in reply.content:
                    if first is None and line.startswith(b"data: {"):
                        first = time.monotonic() - started
                return 200, None, first

        return await _closed_loop(clients, seconds, chat)


async def _phase_httpx(url: str, clients: int, seconds: float, body: dict) -> dict:
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:

        async def chat() -> Outcome:
            started = time.monotonic()
            async with http.stream("POST", PATH, json=body) as reply:
                if reply.status_code != 200:
                    await reply.aread()
                    took = time.monotonic() - started
                    return reply.status_code, reply.headers.get("retry-after"), took
                first = None
                async for line in reply.aiter_lines():
                    if first is None and line.startswith("data: {"):
                        first = time.monotonic() - started
                return 200, None, first

        return await _closed_loop(clients, seconds, chat)


def _refusal_buckets(url: str) -> dict[float, float]:
    """The gateway's cumulative 503 counts of the OpenAI routes by bucket bound."""
    buckets = {}
    for sample, count in scrape(f"{url}/metrics").items():
        if sample.startswith(REFUSAL_SECONDS) and 'status="503"' in sample:
            if 'family="openai"' in sample:
                bound = sample.split('le="')[1].split('"')[0]
                buckets[float(bound)] = count
    return buckets


def bucket_quantile(q: float, before: dict[float, float], after: dict[float, float]) -> float:
    """`histogram_quantile` over what the buckets gained between two scrapes."""
    bounds = sorted(after)
    gained = [after[b] - before.get(b, 0.0) for b in bounds]
    if not gained or gained[-1] <= 0:
        return float("nan")
    rank = q * gained[-1]
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, gained, strict=True):
        if count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = bound, count
    return lower


def main() -> int:
    # SIGTERM unwinds like Ctrl-C, so that the services this bench started are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--per-replica", type=int, default=4, help="admission slots")
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds per phase")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--model", default="tiny-llama")
    parser.add_argument(
        "--omp-wait-policy",
        choices=("default", "passive", "active"),
        default="default",
        help="the HF engine's --omp_wait_policy",
    )
    parser.add_argument(
        "--num-threads", type=int, default=0, help="the HF engine's --num_threads (0: torch's)"
    )
    parser.add_argument("--client", choices=("aiohttp", "httpx"), default="aiohttp")
    parser.add_argument(
        "--profile",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="after the phases, py-spy every process under the 2x load for this long",
    )
    parser.add_argument("--profile-top", type=int, default=12, help="functions per process")
    args = parser.parse_args()
    env = {
        "HFMESH_MAX_IN_FLIGHT_PER_REPLICA": str(args.per_replica),
        "HFMESH_MAX_QUEUED_PER_REPLICA": "0",
    }
    llm = model_entry(
        "llm",
        str(ensure_model(args.model)),
        "text_generation",
        max_model_len=512,
        engine_args=[
            "--omp_wait_policy",
            args.omp_wait_policy,
            "--num_threads",
            str(args.num_threads),
        ],
    )
    phase = _phase_aiohttp if args.client == "aiohttp" else _phase_httpx
    body = _body(args.max_tokens)
    phases = {
        "unloaded (c=1)": 1,
        "at capacity": args.per_replica,
        "2x capacity": 2 * args.per_replica,
    }
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        with running_mesh([llm], Path(folder), env=env) as mesh:
            url = mesh["gateway"].url
            asyncio.run(phase(url, args.per_replica, 5, body))  # warm-up
            for name, clients in phases.items():
                before = _refusal_buckets(url)
                results[name] = asyncio.run(phase(url, clients, args.seconds, body))
                results[name]["load"] = os.getloadavg()[0]
                after = _refusal_buckets(url)
                results[name]["server"] = [bucket_quantile(q, before, after) for q in (0.5, 0.99)]
            recording = None
            if args.profile:
                pids = {name: service.process.pid for name, service in mesh.services.items()}
                pids["client"] = os.getpid()
                spy = Path(tempfile.mkdtemp(prefix="hfmesh-spy-"))
                recording = Profile(pids, args.profile, spy)
                asyncio.run(phase(url, 2 * args.per_replica, args.profile, body))
    print(
        f"\noverload: {args.model} on one HF engine (--omp_wait_policy {args.omp_wait_policy}, "
        f"--num_threads {args.num_threads}), "
        f"{args.per_replica} admission slots, no queue, {args.max_tokens} tokens per stream, "
        f"{args.seconds:.0f} s per phase, {args.client} clients"
    )
    print(
        f"{'phase':<16}{'clients':>8}{'streams':>8}{'TTFT p50':>10}{'TTFT p99':>10}"
        f"{'refused':>8}{'503 p50':>9}{'503 p99':>9}{'gw 503 p50':>12}{'gw 503 p99':>12}"
        f"{'load':>6}"
    )
    for name, clients in phases.items():
        ttft, refused = results[name]["ttft"], results[name]["refused"]
        server = results[name]["server"]
        print(
            f"{name:<16}{clients:>8}{len(ttft):>8}{quantile(ttft, 0.5) * 1000:>8.0f}ms"
            f"{quantile(ttft, 0.99) * 1000:>8.0f}ms{len(refused):>8}"
            f"{quantile(refused, 0.5) * 1000:>7.1f}ms{quantile(refused, 0.99) * 1000:>7.1f}ms"
            f"{server[0] * 1000:>10.2f}ms{server[1] * 1000:>10.2f}ms"
            f"{results[name]['load']:>6.1f}"
        )
    over = quantile(results["2x capacity"]["ttft"], 0.99)
    print(
        f"\n2x capacity TTFT p99 / unloaded p99: "
        f"{over / quantile(results['unloaded (c=1)']['ttft'], 0.99):.2f} (target <= 2); "
        f"/ at-capacity p99: {over / quantile(results['at capacity']['ttft'], 0.99):.2f}"
    )
    if recording is not None:
        print(f"\nwhere the CPU went under the 2x load ({args.profile:.0f} s, py-spy):")
        recording.report(args.profile_top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
