"""HF engine throughput: dynamic/batched vs one request at a time, over real gRPC.

    python bench/engine_hf.py [--embed-requests 512] [--gen-requests 32] [--seq-gen-requests 8]

Starts real engine processes (one at a time, so they never compete for CPU) and
calls them with `tritonclient.grpc.aio`:
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


async def _drive(address: str, count: int, concurrency: int, make_call) -> tuple[float, float]:
    """Run `count` calls with at most `concurrency` in flight; (seconds, summed units)."""
    client = tgrpc.InferenceServerClient(address)
    await make_call(client, -1)  # warm-up
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


def bench_embeddings(requests: int, concurrency: int) -> list[Row]:
    async def call(client, i: int) -> float:
        text = SENTENCES[i % len(SENTENCES)] + f" ({i})"
        result = await client.infer("minilm", [_bytes("input-0", [text])])
        assert result.as_numpy("output-0").shape == (1, 384)
        return 1.0

    rows = []
    for mode, flags in (("dynamic batching (32)", ["--max_batch_size", "32", "--max_batch_wait_ms", "5"]),
                        ("one at a time", ["--max_batch_size", "1"])):
        service = _engine("all-minilm-l6-v2", "minilm", flags)
        try:
            seconds, units = asyncio.run(_drive(service.address, requests, concurrency, call))
        finally:
            service.stop()
        rows.append(Row("embeddings MiniLM", mode, requests, concurrency, seconds, units, "req/s"))
    return rows


def bench_generation(batched_requests: int, sequential_requests: int, concurrency: int, new_tokens: int) -> list[Row]:
    sampling = json.dumps({"max_tokens": new_tokens, "temperature": 0, "ignore_eos": True})

    async def call(client, i: int) -> float:
        prompt = f"<|im_start|>user\nWrite a short story about {TOPICS[i % len(TOPICS)]}.<|im_end|>\n<|im_start|>assistant\n"
        result = await client.infer("smollm2", [_bytes("text_input", [prompt]), _bytes("sampling_parameters", [sampling])])
        return float(result.as_numpy("num_output_tokens")[0])

    rows = []
    for mode, count, flags in (("batched decoding", batched_requests, ["--max_concurrent_sequences", "32"]),
                               ("one at a time", sequential_requests, ["--max_concurrent_sequences", "1"])):
        service = _engine("smollm2-135m-instruct", "smollm2", flags)
        try:
            seconds, units = asyncio.run(_drive(service.address, count, concurrency, call))
        finally:
            service.stop()
        rows.append(Row(f"generation SmolLM2 {new_tokens} tok", mode, count, concurrency, seconds, units, "tok/s"))
    return rows


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
    parser.add_argument("--embed-requests", type=int, default=512)
    parser.add_argument("--embed-concurrency", type=int, default=32)
    parser.add_argument("--gen-requests", type=int, default=32)
    parser.add_argument("--seq-gen-requests", type=int, default=8)
    parser.add_argument("--gen-concurrency", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    rows = bench_embeddings(args.embed_requests, args.embed_concurrency)
    rows += bench_generation(args.gen_requests, args.seq_gen_requests, args.gen_concurrency, args.new_tokens)
    print(f"\nHF engine bench on {os.cpu_count()} CPU cores (fp32, gRPC via tritonclient.grpc.aio)\n")
    print_table(rows)


if __name__ == "__main__":
    main()
