"""Prefix-affinity routing vs. least-loaded routing over two vLLM replicas, in one run.

Two `services.engine_vllm` replicas of one model (each with its own CPU cores when the machine
has them), one tokenizer, and two gateways over the same replicas: one whose model list says
`routing: least_loaded`, one `routing: prefix`. Each replica's KV cache is sized to hold only
`--kv-fraction` of all prefix groups (plus room for the running requests), so a replica that
sees every group keeps evicting, while the two together can hold them all.

Workload: `--groups` prefix groups, each a fixed `--prefix-tokens`-token system prompt,
followed by a fresh `--question-tokens`-token question per request; `--requests` requests per
phase pick a group at random and stream `--output-len` tokens (`ignore_eos`, token-id prompts
on `/v1/completions`, so the prefixes are exact). For each concurrency of `--concurrency`
(rising), least_loaded runs, then prefix, each on groups of its own (no phase inherits the
other's cache). Before each phase is measured, each of its groups is sent
`--warm-per-group` times (unmeasured, through the same gateway), so that the phase measures
the steady state of a long-running service rather than the first sight of each prefix,
which costs a miss under any policy (with 96 requests over 24 groups, first sights alone
would be a quarter of the requests). Printed per phase: TTFT p50/p90, output tokens/s,
the engines' prefix-cache hit rate (`vllm:prefix_cache_hits` / `queries` over the
phase), each replica's share of the requests, and the gateway's affinity hits / misses /
spills; then the ratios prefix / least_loaded.

    .venv/bin/python bench/prefix_routing.py [--model smollm2-135m-instruct] [--groups 24]
        [--prefix-tokens 1000] [--question-tokens 16] [--output-len 32]
        [--concurrency 4,8,16] [--requests 192] [--warm-per-group 1] [--kv-fraction 0.5]
        [--block-size 32] [--gateway-args '--routing_token_unit 256']

The defaults are the CPU set-up docs/routing.md measures: each cache holds half of the groups
(the two together hold them all, as the prefix policy needs), 32-token KV blocks (vLLM's CPU
default of 128 leaves up to 127 prompt tokens of every hit to prefill again), and a routing
token unit of 256 on both gateways (a 1,000-token prefill on CPU costs about what four
requests in flight do). `--block-size 0 --gateway-args ''` runs both with their own defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import shlex
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.vllm_mesh import RequestStats, _quantile, one_request  # noqa: E402
from services.launcher.processes import ServiceProcess, free_port, start_service, wait_ready  # noqa: E402
from services.models.cache import ensure_model  # noqa: E402
from tests.helpers.metrics import scrape  # noqa: E402

POLICIES = ("least_loaded", "prefix")
MODEL_NAME = "llm"


@dataclass
class Phase:
    policy: str
    concurrency: int
    wall: float = 0.0
    requests: list[RequestStats] = field(default_factory=list)
    cache_hits: float = 0.0
    cache_queries: float = 0.0
    per_replica: dict[str, float] = field(default_factory=dict)
    reasons: dict[str, float] = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        return sum(r.tokens for r in self.requests) / self.wall

    def ttft(self, q: float) -> float:
        return _quantile([r.ttft for r in self.requests], q)

    @property
    def hit_rate(self) -> float:
        return self.cache_hits / self.cache_queries if self.cache_queries else float("nan")

    @property
    def top_share(self) -> float:
        total = sum(self.per_replica.values())
        return max(self.per_replica.values()) / total if total else float("nan")


def kv_cache_bytes(config: dict, tokens: int) -> int:
    """fp32 K and V for `tokens` tokens of a Llama-style model."""
    heads = config.get("num_key_value_heads") or config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    return 2 * config["num_hidden_layers"] * heads * head_dim * 4 * tokens


def core_sets(replicas: int) -> list[str | None]:
    """Disjoint OpenMP core ranges per replica (`VLLM_CPU_OMP_THREADS_BIND`), or none."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < replicas:
        return [None] * replicas
    per = len(cores) // replicas
    return [",".join(str(c) for c in cores[i * per : (i + 1) * per]) for i in range(replicas)]


class Mesh:
    def __init__(self, args: argparse.Namespace, log_dir: Path) -> None:
        self.services: list[ServiceProcess] = []
        folder = str(ensure_model(args.model))
        config = yaml.safe_load((Path(folder) / "config.json").read_text())
        context = args.prefix_tokens + args.question_tokens + args.output_len + 16
        running = args.max_concurrency * (args.question_tokens + args.output_len + 32)
        cached = math.ceil(args.kv_fraction * args.groups * args.prefix_tokens)
        self.kv_tokens = cached + running + context
        kv_bytes = kv_cache_bytes(config, self.kv_tokens)
        self.vocab = int(config["vocab_size"])
        self.engines = [free_port() for _ in range(2)]
        self.metrics_ports = [free_port() for _ in range(2)]
        tokenizer_port = free_port()
        self.gateways: dict[str, str] = {}
        try:
            for i, (port, cores) in enumerate(zip(self.engines, core_sets(2), strict=True)):
                env = {}
                if cores:
                    env["VLLM_CPU_OMP_THREADS_BIND"] = cores
                engine_args = ["--model_dir", folder, "--model_name", MODEL_NAME]
                engine_args += ["--host", "127.0.0.1", "--max_model_len", str(context)]
                engine_args += ["--metrics_port", str(self.metrics_ports[i])]
                engine_args += ["--disable_log_requests", "--dtype", "float32"]
                engine_args += ["--kv-cache-memory-bytes", str(kv_bytes)]
                engine_args += ["--enable-prefix-caching"]
                if args.block_size:
                    engine_args += ["--block-size", str(args.block_size)]
                self.services.append(
                    start_service(
                        "services.engine_vllm",
                        engine_args,
                        name=f"engine_vllm-{i}",
                        port=port,
                        env=env,
                        ready="none",
                        log_dir=log_dir,
                    )
                )
            lists = {p: self._model_list(log_dir, p, folder, tokenizer_port) for p in POLICIES}
            self.services.append(
                start_service(
                    "services.tokenizer",
                    ["--model_list", str(lists["prefix"]), "--host", "127.0.0.1"],
                    name="tokenizer",
                    port=tokenizer_port,
                    ready="none",
                    log_dir=log_dir,
                )
            )
            for service in self.services:
                wait_ready(service, "grpc", timeout=900)
            for policy, model_list in lists.items():
                gateway = start_service(
                    "services.gateway",
                    ["--model_list", str(model_list), "--host", "127.0.0.1", *args.gateway_args],
                    name=f"gateway-{policy}",
                    ready="http",
                    ready_timeout=120,
                    log_dir=log_dir,
                )
                self.services.append(gateway)
                self.gateways[policy] = gateway.url
        except BaseException:
            self.stop()
            raise

    def _model_list(self, log_dir: Path, policy: str, folder: str, tokenizer_port: int) -> Path:
        entry = {
            "name": MODEL_NAME,
            "source": folder,
            "task": "text_generation",
            "backend": "vllm",
            "routing": policy,
            "endpoints": {
                "tokenizer": [f"127.0.0.1:{tokenizer_port}"],
                "vllm": [f"127.0.0.1:{port}" for port in self.engines],
            },
        }
        path = log_dir / f"mesh-{policy}.yaml"
        path.write_text(yaml.safe_dump({"models": [entry]}))
        return path

    def engine_cache(self) -> tuple[float, float]:
        """Prefix-cache (hits, queries) in tokens, summed over both engines."""
        hits = queries = 0.0
        for port in self.metrics_ports:
            for sample, value in scrape(f"http://127.0.0.1:{port}/metrics").items():
                name = sample.split("{")[0]
                if name in ("vllm:prefix_cache_hits_total", "vllm:prefix_cache_hits"):
                    hits += value
                elif name in ("vllm:prefix_cache_queries_total", "vllm:prefix_cache_queries"):
                    queries += value
        return hits, queries

    def routing(self, policy: str) -> tuple[dict[str, float], dict[str, float]]:
        """The gateway's picks so far: per replica address, per reason."""
        per_replica: dict[str, float] = {}
        reasons: dict[str, float] = {}
        for sample, value in scrape(f"{self.gateways[policy]}/metrics").items():
            if not sample.startswith("hfmesh_gateway_routing_decisions_total{"):
                continue
            labels = dict(
                part.split("=", 1) for part in sample[sample.index("{") + 1 : -1].split(",")
            )
            address, reason = labels["address"].strip('"'), labels["reason"].strip('"')
            per_replica[address] = per_replica.get(address, 0.0) + value
            reasons[reason] = reasons.get(reason, 0.0) + value
        return per_replica, reasons

    def stop(self) -> None:
        for service in self.services:
            service.stop()


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


async def run_phase(
    mesh: Mesh, phase: Phase, prompts: list[list[int]], args: argparse.Namespace
) -> None:
    url = f"{mesh.gateways[phase.policy]}/openai/v1/completions"
    limits = httpx.Limits(max_connections=phase.concurrency * 2)
    async with httpx.AsyncClient(timeout=900, limits=limits) as client:
        gate = asyncio.Semaphore(phase.concurrency)

        async def guarded(prompt: list[int]) -> RequestStats:
            async with gate:
                return await one_request(client, url, MODEL_NAME, prompt, args.output_len)  # type: ignore[arg-type]

        start = time.perf_counter()
        phase.requests = list(await asyncio.gather(*(guarded(p) for p in prompts)))
        phase.wall = time.perf_counter() - start


def workload(
    rng: random.Random, vocab: int, args: argparse.Namespace
) -> tuple[list[list[int]], list[list[int]]]:
    """A phase's prompts: the warm-up (`--warm-per-group` per group, in random order), then
    the measured ones."""

    def ids(count: int) -> list[int]:
        return [rng.randrange(100, vocab - 100) for _ in range(count)]

    groups = [ids(args.prefix_tokens) for _ in range(args.groups)]
    warm = [g + ids(args.question_tokens) for g in groups for _ in range(args.warm_per_group)]
    rng.shuffle(warm)
    measured = [rng.choice(groups) + ids(args.question_tokens) for _ in range(args.requests)]
    return warm, measured


def measure(mesh: Mesh, phase: Phase, prompts: list[list[int]], args: argparse.Namespace) -> None:
    hits, queries = mesh.engine_cache()
    per_replica, reasons = mesh.routing(phase.policy)
    asyncio.run(run_phase(mesh, phase, prompts, args))
    hits_after, queries_after = mesh.engine_cache()
    per_after, reasons_after = mesh.routing(phase.policy)
    phase.cache_hits, phase.cache_queries = hits_after - hits, queries_after - queries
    phase.per_replica = _delta(per_after, per_replica)
    phase.reasons = _delta(reasons_after, reasons)


def report(phases: list[Phase], mesh: Mesh, args: argparse.Namespace) -> str:
    rows = [
        f"\n{args.model}: 2 vLLM replicas, KV cache {mesh.kv_tokens} tokens each "
        f"({args.kv_fraction:g} of {args.groups} groups x {args.prefix_tokens} prefix tokens), "
        f"{args.requests} requests per phase after {args.warm_per_group} per group to warm, "
        f"{args.question_tokens}-token questions, "
        f"{args.output_len} output tokens",
        f"  {'policy':<13}{'conc':>5}{'TTFT p50':>10}{'TTFT p90':>10}{'out tok/s':>11}"
        f"{'cache hit':>10}{'top replica':>12}   gateway picks",
    ]
    for phase in phases:
        picks = ", ".join(f"{k} {v:.0f}" for k, v in sorted(phase.reasons.items()) if v)
        rows.append(
            f"  {phase.policy:<13}{phase.concurrency:>5}{phase.ttft(0.5) * 1e3:>8.0f}ms"
            f"{phase.ttft(0.9) * 1e3:>8.0f}ms{phase.tokens_per_second:>11.1f}"
            f"{phase.hit_rate:>10.1%}{phase.top_share:>12.1%}   {picks}"
        )
    rows.append("  prefix / least_loaded:")
    for concurrency in args.concurrency:
        base, ours = (
            next(p for p in phases if p.policy == policy and p.concurrency == concurrency)
            for policy in POLICIES
        )
        rows.append(
            f"    concurrency {concurrency}: TTFT p50 x{ours.ttft(0.5) / base.ttft(0.5):.2f} "
            f"(goal <= 0.5), throughput x{ours.tokens_per_second / base.tokens_per_second:.2f} "
            f"(goal >= 1.3), top replica {ours.top_share:.0%} (goal <= 70%)"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    # SIGTERM unwinds like Ctrl-C, so that the services this bench started are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--groups", type=int, default=24)
    parser.add_argument("--prefix-tokens", type=int, default=1000)
    parser.add_argument("--question-tokens", type=int, default=16)
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--concurrency", default="4,8,16", help="rising, comma-separated")
    parser.add_argument("--requests", type=int, default=192, help="measured, per phase")
    parser.add_argument(
        "--warm-per-group",
        type=int,
        default=1,
        help="unmeasured requests per group before each phase (0: measure from a cold cache)",
    )
    parser.add_argument(
        "--kv-fraction",
        type=float,
        default=0.5,
        help="share of all groups' prefix tokens one replica's KV cache holds (plus room for "
        "the running requests)",
    )
    parser.add_argument(
        "--block-size",
        type=int,
        default=32,
        help="the engines' KV block size in tokens, a multiple of 32 (0: vLLM's own, 128 on "
        "CPU); a prompt's cache hit ends at its last full block",
    )
    parser.add_argument(
        "--gateway-args",
        default="--routing_token_unit 256",
        help="extra flags of both gateways ('' for none)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-dir", default=None, help="service logs (default: a temp folder)")
    args = parser.parse_args(argv)
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.gateway_args = shlex.split(args.gateway_args)
    args.max_concurrency = max(args.concurrency)
    # set, it would override each engine's --kv-cache-memory-bytes (whole GiB only)
    os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="hfmesh-bench-prefix-"))
    print(f"service logs: {log_dir}", flush=True)
    mesh = Mesh(args, log_dir)
    rng = random.Random(args.seed)
    phases: list[Phase] = []
    try:
        warm = Phase("least_loaded", 2)
        asyncio.run(run_phase(mesh, warm, [[rng.randrange(100, 1000)] * 32] * 4, args))
        for concurrency in args.concurrency:
            for policy in POLICIES:
                phase = Phase(policy, concurrency)
                warm, measured = workload(rng, mesh.vocab, args)
                if warm:
                    asyncio.run(run_phase(mesh, Phase(policy, concurrency), warm, args))
                measure(mesh, phase, measured, args)
                phases.append(phase)
                print(
                    f"{policy} at {concurrency}: {phase.tokens_per_second:.1f} tok/s, "
                    f"TTFT p50 {phase.ttft(0.5) * 1e3:.0f} ms, cache hit {phase.hit_rate:.1%}",
                    flush=True,
                )
        print(report(phases, mesh, args))
    finally:
        mesh.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
