"""Overload: admitted latency and refusal speed at 1×, capacity and 2× capacity.

    python bench/overload.py [--per-replica 8] [--seconds 30] [--max-tokens 32]
                             [--model tiny-llama]

Starts tiny-llama on one HF engine, the tokenizer and the gateway as real processes, the
gateway admitting `--per-replica` streams with no wait queue. Then three phases of
`--seconds` each, clients looping streamed chats of exactly `--max-tokens` tokens:
one client (unloaded), `per-replica` clients (at capacity) and twice that (2× capacity).
Prints, per phase, the admitted streams' TTFT p50/p99, how many were refused (503) and
how fast a refusal came back (p50/p99), and the 2× phase's TTFT p99 over the unloaded one
(target ≤ 2) and over the at-capacity one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx  # noqa: E402

from bench.soak import quantile  # noqa: E402
from services.models.cache import ensure_model  # noqa: E402
from tests.helpers.mesh import model_entry, running_mesh  # noqa: E402


async def _phase(url: str, clients: int, seconds: float, max_tokens: int) -> dict:
    ttfts: list[float] = []
    refusals: list[float] = []
    body = {
        "model": "llm",
        "messages": [{"role": "user", "content": "Tell me a story."}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
    }
    stop = time.monotonic() + seconds

    async def client(http: httpx.AsyncClient) -> None:
        while time.monotonic() < stop:
            started = time.monotonic()
            async with http.stream("POST", "/openai/v1/chat/completions", json=body) as reply:
                if reply.status_code == 503:
                    await reply.aread()
                    refusals.append(time.monotonic() - started)
                    await asyncio.sleep(float(reply.headers.get("retry-after", "1")) / 10)
                    continue
                first = True
                async for line in reply.aiter_lines():
                    if first and line.startswith("data: {"):
                        first = False
                        ttfts.append(time.monotonic() - started)

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return {"ttft": ttfts, "refused": refusals}


def main() -> int:
    # SIGTERM unwinds like Ctrl-C, so that the services this bench started are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--per-replica", type=int, default=8, help="admission slots")
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds per phase")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--model", default="tiny-llama")
    args = parser.parse_args()
    env = {
        "HFMESH_MAX_IN_FLIGHT_PER_REPLICA": str(args.per_replica),
        "HFMESH_MAX_QUEUED_PER_REPLICA": "0",
    }
    llm = model_entry("llm", str(ensure_model(args.model)), "text_generation", max_model_len=512)
    phases = {
        "unloaded (c=1)": 1,
        "at capacity": args.per_replica,
        "2x capacity": 2 * args.per_replica,
    }
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        with running_mesh([llm], Path(folder), env=env) as mesh:
            url = mesh["gateway"].url
            asyncio.run(_phase(url, args.per_replica, 5, args.max_tokens))  # warm-up
            for name, clients in phases.items():
                results[name] = asyncio.run(_phase(url, clients, args.seconds, args.max_tokens))
    print(
        f"\noverload: {args.model} on one HF engine, {args.per_replica} admission slots, no "
        f"queue, {args.max_tokens} tokens per stream, {args.seconds:.0f} s per phase"
    )
    print(
        f"{'phase':<18}{'clients':>8}{'streams':>9}{'TTFT p50':>10}{'TTFT p99':>10}"
        f"{'refused':>9}{'503 p50':>9}{'503 p99':>9}"
    )
    for name, clients in phases.items():
        ttft, refused = results[name]["ttft"], results[name]["refused"]
        print(
            f"{name:<18}{clients:>8}{len(ttft):>9}{quantile(ttft, 0.5) * 1000:>8.0f}ms"
            f"{quantile(ttft, 0.99) * 1000:>8.0f}ms{len(refused):>9}"
            f"{quantile(refused, 0.5) * 1000:>7.1f}ms{quantile(refused, 0.99) * 1000:>7.1f}ms"
        )
    over = quantile(results["2x capacity"]["ttft"], 0.99)
    print(
        f"\n2x capacity TTFT p99 / unloaded p99: "
        f"{over / quantile(results['unloaded (c=1)']['ttft'], 0.99):.2f} (target <= 2); "
        f"/ at-capacity p99: {over / quantile(results['at capacity']['ttft'], 0.99):.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
