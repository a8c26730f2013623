"""HF engine throughput: dynamic/batched vs one request at a time, over real gRPC.

    python bench/engine_hf.py [--rounds 2] [--embed-requests 256] [--gen-requests 16] [--seq-gen-requests 4]

Starts real engine processes (both modes of a comparison at once; rounds
alternate between them, so load from elsewhere on the machine hits both alike)
and calls them with `tritonclient.grpc.aio`:
- embeddings: all-MiniLM-L6-v2, concurrency 32, dynamic batching (max_batch_size 32)
  vs max_batch_size 1 (one request per forward pass, KServe's HF backend behaviour);
- generation: SmolLM2-135M-Instruct fp32, 64 new tokens (ignore_eos), concurrency 16,
  batched decoding vs max_concurrent_sequences 1 (one sequence at a time).
Prints one table; the speedup column is each batched row over its baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import tritonclient.grpc.aio as tgrpc  # noqa: E402

from services.common.models import ensure_model  # noqa: E402
from tests.procs import start_service  # noqa: E402

SENTENCES = [
    "A man is eating food.", "The stock market fell sharply today.", "Paris is the capital of France.",
    "A cat sleeps on the warm windowsill in the afternoon sun.", "How do I reset my password?",
    "The new library opened downtown with a large collection of science books.",
]
TOPICS = ["the sea", "a robot", "autumn", "a lighthouse", "coffee", "mountains", "a train", "the moon"]


@dataclass
class Row:
    workload: str
    mode: str
    requests: int
    concurrency: int
    seconds: float
    units: float
    unit: str

    @property
    def rate(self) -> float:
        return self.units / self.seconds


def _bytes(name: str, values: list[str]) -> tgrpc.InferInput:
    tensor = tgrpc.InferInput(name, [len(values)], "BYTES")
    tensor.set_data_from_numpy(np.array([v.encode() for v in values], dtype=object))
    return tensor


async def _drive(address: str, count: int, concurrency: int, make_call, warm: bool) -> tuple[float, float]:
    """Run `count` calls with at most `concurrency` in flight; (seconds, summed units)."""
    client = tgrpc.InferenceServerClient(address)
    if warm:
        await make_call(client, -1)
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> float:
        async with gate:
            return await make_call(client, i)

    start = time.perf_counter()
    units = await asyncio.gather(*(one(i) for i in range(count)))
    elapsed = time.perf_counter() - start
    await client.close()
    return elapsed, float(sum(units))


def _engine(model: str, name: str, extra: list[str]):
    args = ["--model_dir", str(ensure_model(model)), "--model_name", name, "--host", "127.0.0.1",
            "--disable_log_requests", *extra]
    return start_service("services.engine_hf", args, name=f"bench-{name}", ready_timeout=600)


def _compare(workload: str, unit: str, model: str, name: str, modes, concurrency: int, rounds: int, call) -> list[Row]:
    """Both engines up at once; rounds alternate between them so load from elsewhere hits both alike."""
    services = [_engine(model, name, flags) for _, _, flags in modes]
    totals = [[0.0, 0.0, 0] for _ in modes]
    try:
        for round_index in range(rounds):
            for (_, count, _), service, total in zip(modes, services, totals):
                seconds, units = asyncio.run(_drive(service.address, count, concurrency, call, warm=round_index == 0))
                total[0] += seconds
                total[1] += units
                total[2] += count
    finally:
        for service in services:
            service.stop()
    return [Row(workload, mode, total[2], concurrency, total[0], total[1], unit) for (mode, _, _), total in zip(modes, totals)]


def bench_embeddings(requests: int, concurrency: int, rounds: int) -> list[Row]:
    async def call(client, i: int) -> float:
        text = SENTENCES[i % len(SENTENCES)] + f" ({i})"
        result = await client.infer("minilm", [_bytes("input-0", [text])])
        assert result.as_numpy("output-0").shape == (1, 384)
        return 1.0

    modes = (("dynamic batching (32)", requests, ["--max_batch_size", "32"]),
             ("one at a time", requests, ["--max_batch_size", "1"]))
    return _compare("embeddings MiniLM", "req/s", "all-minilm-l6-v2", "minilm", modes, concurrency, rounds, call)


def bench_generation(batched: int, sequential: int, concurrency: int, new_tokens: int, rounds: int) -> list[Row]:
    sampling = json.dumps({"max_tokens": new_tokens, "temperature": 0, "ignore_eos": True})

    async def call(client, i: int) -> float:
        topic = TOPICS[i % len(TOPICS)]
        prompt = f"<|im_start|>user\nWrite a short story about {topic}.<|im_end|>\n<|im_start|>assistant\n"
        result = await client.infer("smollm2", [_bytes("text_input", [prompt]), _bytes("sampling_parameters", [sampling])])
        return float(result.as_numpy("num_output_tokens")[0])

    modes = (("batched decoding", batched, ["--max_concurrent_sequences", "32"]),
             ("one at a time", sequential, ["--max_concurrent_sequences", "1"]))
    workload = f"generation SmolLM2 {new_tokens} tok"
    return _compare(workload, "tok/s", "smollm2-135m-instruct", "smollm2", modes, concurrency, rounds, call)


def print_table(rows: list[Row]) -> None:
    header = f"{'workload':<26} {'mode':<22} {'requests':>8} {'conc':>5} {'seconds':>8} {'throughput':>14} {'speedup':>8}"
    print(header)
    print("-" * len(header))
    for i in range(0, len(rows), 2):
        batched, baseline = rows[i], rows[i + 1]
        for row in (batched, baseline):
            speedup = f"{row.rate / baseline.rate:.2f}x"
            print(f"{row.workload:<26} {row.mode:<22} {row.requests:>8} {row.concurrency:>5} "
                  f"{row.seconds:>8.2f} {row.rate:>10.1f} {row.unit:<3} {speedup:>8}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per comparison")
    parser.add_argument("--embed-requests", type=int, default=256, help="per mode and round")
    parser.add_argument("--embed-concurrency", type=int, default=32)
    parser.add_argument("--gen-requests", type=int, default=16, help="batched mode, per round")
    parser.add_argument("--seq-gen-requests", type=int, default=4, help="one-at-a-time mode, per round")
    parser.add_argument("--gen-concurrency", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--only", choices=("embeddings", "generation"), help="run one comparison")
    args = parser.parse_args()
    rows: list[Row] = []
    if args.only in (None, "embeddings"):
        rows += bench_embeddings(args.embed_requests, args.embed_concurrency, args.rounds)
    if args.only in (None, "generation"):
        rows += bench_generation(args.gen_requests, args.seq_gen_requests, args.gen_concurrency, args.new_tokens, args.rounds)
    print(f"\nHF engine bench on {os.cpu_count()} CPU cores (fp32, gRPC via tritonclient.grpc.aio, "
          f"{args.rounds} alternating rounds)\n")
    print_table(rows)


if __name__ == "__main__":
    main()
