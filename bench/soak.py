"""Soak: mixed traffic through the whole mesh with random client disconnects.

    python bench/soak.py [--duration 600] [--concurrency 32] [--disconnect 0.1]
                         [--model tiny-llama] [--replicas 1] [--warmup 30]

Starts the mesh as real processes (the generative model on the HF engine, `replicas`
of it, all-minilm-l6-v2 for embeddings, the tokenizer service and the gateway, with the
gateway's default limits and admission control), then runs `concurrency` clients for
`duration` seconds. Each client loops over a random mix: streamed chat (45%), whole chat
(20%), streamed completion (15%), embeddings (20%); a `disconnect` share of requests is
abandoned by the client at a random point within its first second.

Every request is classified: complete (a stream ending in `[DONE]`, or a whole answer
that parses), a well-formed error (4xx / 503 / 504 with an error body, or a stream ending
with an error event and `[DONE]`), disconnected by the client on purpose, or **lost**
(anything else: a truncated stream, a reset, a body that does not parse). 5xx other than
503/504 are **unexpected**. Resident memory of every process is sampled after the warm-up
and at the end. After the run the mesh must be idle (admission slots, queue, and each
engine's running + waiting all 0).

Prints one table; exits non-zero on a lost request, an unexpected 5xx, RSS drift >= 5% or
a mesh left busy.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx  # noqa: E402

from services.models.cache import ensure_model  # noqa: E402
from tests.helpers.mesh import model_entry, running_mesh  # noqa: E402
from tests.helpers.metrics import scrape, total, wait_until  # noqa: E402

MIX = (("chat-stream", 0.45), ("chat", 0.20), ("completion-stream", 0.15), ("embeddings", 0.20))


@dataclasses.dataclass
class Tally:
    outcomes: Counter = dataclasses.field(default_factory=Counter)
    statuses: Counter = dataclasses.field(default_factory=Counter)
    ttfts: list[float] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)

    def note(self, outcome: str, detail: str = "") -> None:
        self.outcomes[outcome] += 1
        if outcome in ("lost", "unexpected-5xx") and len(self.problems) < 10:
            self.problems.append(detail[:300])


def _body(kind: str, rng: random.Random, model: str) -> tuple[str, dict]:
    topic = rng.choice(["bread", "rain", "trains", "chess", "volcanoes", "coffee", "the moon"])
    if kind == "embeddings":
        inputs = [f"a sentence about {topic} {i}" for i in range(rng.randint(1, 8))]
        return "/openai/v1/embeddings", {"model": "embed", "input": inputs}
    tokens = rng.randint(8, 128)
    if kind == "completion-stream":
        body = {"model": model, "prompt": f"A story about {topic}:", "max_tokens": tokens}
        return "/openai/v1/completions", {**body, "stream": True}
    messages = [{"role": "user", "content": f"Tell me about {topic}."}]
    body = {"model": model, "messages": messages, "max_tokens": tokens}
    return "/openai/v1/chat/completions", {**body, "stream": kind == "chat-stream"}


def _error_body_ok(raw: bytes) -> bool:
    try:
        error = json.loads(raw)["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return bool(error)


async def _stream(client: httpx.AsyncClient, path: str, body: dict, tally: Tally) -> None:
    started = time.monotonic()
    async with client.stream("POST", path, json=body) as reply:
        tally.statuses[reply.status_code] += 1
        if reply.status_code != 200:
            await _classify_error(reply.status_code, await reply.aread(), tally)
            return
        done, error, first = False, None, True
        async for line in reply.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[len("data: ") :]
            if data == "[DONE]":
                done = True
                continue
            event = json.loads(data)
            if "error" in event:
                error = event["error"]
            elif first:
                first = False
                tally.ttfts.append(time.monotonic() - started)
    if not done:
        tally.note("lost", f"{path}: stream without [DONE]")
    elif error is None:
        tally.note("complete")
    elif error.get("code") in (503, 504) or error.get("code", 500) < 500:
        tally.note("error-event")
    else:
        tally.note("unexpected-5xx", f"{path}: error event {error}")


async def _classify_error(status: int, raw: bytes, tally: Tally) -> None:
    if not _error_body_ok(raw):
        tally.note("lost", f"HTTP {status} without an error body: {raw[:200]!r}")
    elif status >= 500 and status not in (503, 504):
        tally.note("unexpected-5xx", f"HTTP {status}: {raw[:200]!r}")
    else:
        tally.note(f"error-{status}")


async def _whole(client: httpx.AsyncClient, path: str, body: dict, tally: Tally) -> None:
    reply = await client.post(path, json=body)
    tally.statuses[reply.status_code] += 1
    if reply.status_code != 200:
        await _classify_error(reply.status_code, reply.content, tally)
        return
    try:
        answer = reply.json()
        assert answer["data"] if path.endswith("embeddings") else answer["choices"]
    except (ValueError, KeyError, AssertionError):
        tally.note("lost", f"{path}: 200 with a body that does not parse")
        return
    tally.note("complete")


async def _client(url: str, args: argparse.Namespace, seed: int, stop: float, tally: Tally):
    rng = random.Random(seed)
    kinds, weights = zip(*MIX, strict=True)
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        while time.monotonic() < stop:
            kind = rng.choices(kinds, weights)[0]
            path, body = _body(kind, rng, args.model_name)
            work = (_stream if body.get("stream") else _whole)(client, path, body, tally)
            try:
                if rng.random() < args.disconnect:
                    async with asyncio.timeout(rng.uniform(0.0, 1.0)):
                        await work
                else:
                    await work
            except TimeoutError:
                tally.note("disconnected")
            except httpx.HTTPError as error:
                tally.note("lost", f"{path}: {type(error).__name__}: {error}")


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def _run(url: str, args: argparse.Namespace, seconds: float, tally: Tally) -> float:
    started = time.monotonic()
    stop = started + seconds
    await asyncio.gather(
        *(_client(url, args, seed, stop, tally) for seed in range(args.concurrency))
    )
    return time.monotonic() - started


def main() -> int:
    # SIGTERM unwinds like Ctrl-C, so that the services this bench started are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds before RSS is taken")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--disconnect", type=float, default=0.1, help="share abandoned early")
    parser.add_argument("--model", default="tiny-llama", help="generative model (cache name)")
    parser.add_argument("--replicas", type=int, default=1, help="HF engine replicas")
    args = parser.parse_args()
    args.model_name = "llm"
    llm = dataclasses.replace(
        model_entry("llm", str(ensure_model(args.model)), "text_generation", max_model_len=512),
        replicas=args.replicas,
    )
    embed = model_entry("embed", str(ensure_model("all-minilm-l6-v2")), "text_embedding")
    with tempfile.TemporaryDirectory() as folder:
        with running_mesh([llm, embed], Path(folder), metrics=["llm"]) as mesh:
            url = mesh["gateway"].url
            names = sorted(mesh.services)
            warm = Tally()
            asyncio.run(_run(url, args, args.warmup, warm))
            before = {n: _rss_mib(mesh[n].process.pid) for n in names}
            tally = Tally()
            wall = asyncio.run(_run(url, args, args.duration, tally))
            after = {n: _rss_mib(mesh[n].process.pid) for n in names}
            engines = [s for n, s in mesh.services.items() if "metrics" in s.extra_ports]

            def idle() -> bool:
                samples = scrape(f"{url}/metrics")
                busy = total(samples, "hfmesh_gateway_admission_slots_in_use") + total(
                    samples, "hfmesh_gateway_admission_queued"
                )
                for engine in engines:
                    metrics = scrape(f"http://127.0.0.1:{engine.extra_ports['metrics']}/metrics")
                    busy += total(metrics, "vllm:num_requests_running")
                    busy += total(metrics, "vllm:num_requests_waiting")
                return busy == 0

            settled = wait_until(idle, 15, interval=0.1)
    return report(args, tally, wall, before, after, settled)


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def report(
    args: argparse.Namespace,
    tally: Tally,
    wall: float,
    before: dict[str, float],
    after: dict[str, float],
    settled: bool,
) -> int:
    requests = sum(tally.outcomes.values())
    print(
        f"\nsoak: {wall:.0f} s, c={args.concurrency}, disconnect {args.disconnect:.0%}, "
        f"model {args.model} x{args.replicas} (HF engine) + all-minilm-l6-v2"
    )
    print(f"{'outcome':<22}{'requests':>10}")
    for outcome, count in sorted(tally.outcomes.items()):
        print(f"{outcome:<22}{count:>10}")
    print(f"{'total':<22}{requests:>10}   ({requests / wall:.1f} req/s)")
    print("HTTP statuses: " + ", ".join(f"{k}: {v}" for k, v in sorted(tally.statuses.items())))
    print(
        f"stream TTFT p50 {quantile(tally.ttfts, 0.5) * 1000:.0f} ms, "
        f"p99 {quantile(tally.ttfts, 0.99) * 1000:.0f} ms"
    )
    print(f"\n{'process':<28}{'RSS after warm-up':>18}{'RSS at end':>12}{'drift':>8}")
    drifts = {}
    for name in before:
        drifts[name] = (after[name] - before[name]) / before[name] if before[name] else 0.0
        print(f"{name:<28}{before[name]:>15.0f} MiB{after[name]:>8.0f} MiB{drifts[name]:>+8.1%}")
    lost = tally.outcomes["lost"]
    unexpected = tally.outcomes["unexpected-5xx"]
    worst = max(drifts.values(), default=0.0)
    print(
        f"\nlost {lost}, unexpected 5xx {unexpected}, worst RSS drift {worst:+.1%}, "
        f"mesh idle after the run: {'yes' if settled else 'NO'}"
    )
    for problem in tally.problems:
        print("  " + problem)
    return 0 if not lost and not unexpected and worst < 0.05 and settled else 1


if __name__ == "__main__":
    sys.exit(main())
