"""HF engine throughput: dynamic/batched vs one request at a time, over real gRPC.

    python bench/engine_hf.py [--rounds 2] [--embed-requests 256] [--gen-requests 16]
                              [--seq-gen-requests 4]

Starts real engine processes (both modes of a comparison at once; rounds
alternate between them, so load from elsewhere on the machine hits both alike)
and calls them over gRPC (requests serialized with tritonclient's protobufs before
the clock starts, sent on a raw grpc.aio channel):
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
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import grpc  # noqa: E402
import numpy as np  # noqa: E402
from tritonclient.grpc import service_pb2  # noqa: E402

from services.launcher.processes import start_service  # noqa: E402
from services.models.cache import ensure_model  # noqa: E402

SENTENCES = [
    "A man is eating food.",
    "The stock market fell sharply today.",
    "Paris is the capital of France.",
    "A cat sleeps on the warm windowsill in the afternoon sun.",
    "How do I reset my password?",
    "The new library opened downtown with a large collection of science books.",
]
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


INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"


def infer_request(model: str, inputs: dict[str, list[str]]) -> bytes:
    """A serialized ModelInferRequest with BYTES inputs (built before the clock starts)."""
    request = service_pb2.ModelInferRequest(model_name=model)
    for name, values in inputs.items():
        request.inputs.add(name=name, datatype="BYTES", shape=[len(values)])
        request.raw_input_contents.append(
            b"".join(len(v.encode()).to_bytes(4, "little") + v.encode() for v in values)
        )
    return request.SerializeToString()


def output(response: service_pb2.ModelInferResponse, name: str, dtype: str) -> np.ndarray:
    for index, tensor in enumerate(response.outputs):
        if tensor.name == name:
            return np.frombuffer(response.raw_output_contents[index], dtype=dtype).reshape(
                list(tensor.shape)
            )
    raise KeyError(name)


async def _drive(
    address: str, requests: list[bytes], concurrency: int, check, warm: bool
) -> tuple[float, float]:
    """Send pre-built requests with at most `concurrency` in flight.

    Returns (seconds, summed units from `check`).

    The client is deliberately thin (raw grpc.aio, no per-call tensor building): on a small
    machine it shares the CPU with the engine, and a heavy client would hide the engine's speed.
    """
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(INFER_METHOD)
        if warm:
            check(service_pb2.ModelInferResponse.FromString(await call(requests[0], timeout=600)))
        gate = asyncio.Semaphore(concurrency)

        async def one(request: bytes) -> bytes:
            async with gate:
                return await call(request, timeout=600)

        start = time.perf_counter()
        replies = await asyncio.gather(*(one(r) for r in requests))
        elapsed = time.perf_counter() - start
    units = sum(check(service_pb2.ModelInferResponse.FromString(reply)) for reply in replies)
    return elapsed, float(units)


def _engine(model: str, name: str, extra: list[str]):
    args = [
        "--model_dir",
        str(ensure_model(model)),
        "--model_name",
        name,
        "--host",
        "127.0.0.1",
        "--disable_log_requests",
        *extra,
    ]
    return start_service("services.engine_hf", args, name=f"bench-{name}", ready_timeout=600)


def _compare(
    workload: str,
    unit: str,
    model: str,
    name: str,
    modes,
    concurrency: int,
    rounds: int,
    make_request,
    check,
) -> list[Row]:
    """Both engines up at once; rounds alternate between them so load from elsewhere hits both
    alike."""
    services = [_engine(model, name, flags) for _, _, flags in modes]
    totals = [[0.0, 0.0, 0] for _ in modes]
    try:
        for round_index in range(rounds):
            for (_, count, _), service, total in zip(modes, services, totals, strict=True):
                requests = [make_request(i) for i in range(count)]
                seconds, units = asyncio.run(
                    _drive(service.address, requests, concurrency, check, warm=round_index == 0)
                )
                total[0] += seconds
                total[1] += units
                total[2] += count
    finally:
        for service in services:
            service.stop()
    return [
        Row(workload, mode, total[2], concurrency, total[0], total[1], unit)
        for (mode, _, _), total in zip(modes, totals, strict=True)
    ]


def bench_embeddings(requests: int, concurrency: int, rounds: int) -> list[Row]:
    def make_request(i: int) -> bytes:
        return infer_request("minilm", {"input-0": [SENTENCES[i % len(SENTENCES)] + f" ({i})"]})

    def check(response) -> float:
        assert output(response, "output-0", "<f4").shape == (1, 384)
        return 1.0

    modes = (
        ("dynamic batching (32)", requests, ["--max_batch_size", "32"]),
        ("one at a time", requests, ["--max_batch_size", "1"]),
    )
    return _compare(
        "embeddings MiniLM",
        "req/s",
        "all-minilm-l6-v2",
        "minilm",
        modes,
        concurrency,
        rounds,
        make_request,
        check,
    )


def bench_generation(
    batched: int, sequential: int, concurrency: int, new_tokens: int, rounds: int
) -> list[Row]:
    sampling = json.dumps({"max_tokens": new_tokens, "temperature": 0, "ignore_eos": True})

    def make_request(i: int) -> bytes:
        topic = TOPICS[i % len(TOPICS)]
        prompt = (
            f"<|im_start|>user\nWrite a short story about {topic}.<|im_end|>\n"
            "<|im_start|>assistant\n"
        )
        return infer_request("smollm2", {"text_input": [prompt], "sampling_parameters": [sampling]})

    def check(response) -> float:
        return float(output(response, "num_output_tokens", "<i8")[0])

    modes = (
        ("batched decoding", batched, ["--max_concurrent_sequences", "32"]),
        ("one at a time", sequential, ["--max_concurrent_sequences", "1"]),
    )
    workload = f"generation SmolLM2 {new_tokens} tok"
    return _compare(
        workload,
        "tok/s",
        "smollm2-135m-instruct",
        "smollm2",
        modes,
        concurrency,
        rounds,
        make_request,
        check,
    )


def print_table(rows: list[Row]) -> None:
    header = (
        f"{'workload':<26} {'mode':<22} {'requests':>8} {'conc':>5} {'seconds':>8} "
        f"{'throughput':>14} {'speedup':>8}"
    )
    print(header)
    print("-" * len(header))
    for i in range(0, len(rows), 2):
        batched, baseline = rows[i], rows[i + 1]
        for row in (batched, baseline):
            speedup = f"{row.rate / baseline.rate:.2f}x"
            print(
                f"{row.workload:<26} {row.mode:<22} {row.requests:>8} {row.concurrency:>5} "
                f"{row.seconds:>8.2f} {row.rate:>10.1f} {row.unit:<3} {speedup:>8}"
            )


def main() -> None:
    # SIGTERM unwinds like Ctrl-C, so that the services this bench started are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per comparison")
    parser.add_argument("--embed-requests", type=int, default=256, help="per mode and round")
    parser.add_argument("--embed-concurrency", type=int, default=32)
    parser.add_argument("--gen-requests", type=int, default=16, help="batched mode, per round")
    parser.add_argument(
        "--seq-gen-requests", type=int, default=4, help="one-at-a-time mode, per round"
    )
    parser.add_argument("--gen-concurrency", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--only", choices=("embeddings", "generation"), help="run one comparison")
    args = parser.parse_args()
    rows: list[Row] = []
    if args.only in (None, "embeddings"):
        rows += bench_embeddings(args.embed_requests, args.embed_concurrency, args.rounds)
    if args.only in (None, "generation"):
        rows += bench_generation(
            args.gen_requests,
            args.seq_gen_requests,
            args.gen_concurrency,
            args.new_tokens,
            args.rounds,
        )
    print(
        f"\nHF engine bench on {os.cpu_count()} CPU cores (fp32, OIP v2 gRPC, "
        f"{args.rounds} alternating rounds)\n"
    )
    print_table(rows)


if __name__ == "__main__":
    main()
