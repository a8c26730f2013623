"""Engine CPU per request with tracing off, on but not sampled, and on with every span exported.

    python bench/engine_tracing.py [--requests 150] [--rounds 3]

Starts three identical tiny-llama meshes (`bench/gateway.py`'s `start_stack`): one without an
OTLP endpoint, one with an endpoint and `OTEL_TRACES_SAMPLER=always_off` (interceptors and
propagation installed, nothing recorded), one with `always_on` exporting to an OTLP/gRPC receiver
in this process. Sends the same streamed generations (16 tokens) straight to each engine over
gRPC, one at a time, rounds alternating, and prints the engine process's CPU seconds per request
— the cost tracing adds where it matters most, on the engine's core.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc  # noqa: E402
from gateway import Result, cpu_seconds, direct_one, render_all, start_stack  # noqa: E402

from services.common.pb import inference_pb2_grpc as pb_grpc  # noqa: E402
from services.models.cache import ensure_model  # noqa: E402
from tests.helpers.otlp import OtlpReceiver  # noqa: E402


async def measure(stacks, requests: int, rounds: int) -> dict[str, float]:
    channels = [grpc.aio.insecure_channel(s.engine_address) for s in stacks]
    stubs = [pb_grpc.GRPCInferenceServiceStub(c) for c in channels]
    tokenizer = grpc.aio.insecure_channel(stacks[0].tokenizer_address)
    prompts = await render_all(tokenizer, 8)
    cpu = {s.label: 0.0 for s in stacks}
    for round_ in range(rounds + 1):  # round 0 warms up
        for stack, stub in zip(stacks, stubs, strict=True):
            pid = stack.services[0].process.pid
            before = cpu_seconds(pid)
            result = Result(stack.label)
            for i in range(requests if round_ else 8):
                await direct_one(stub, prompts[i % len(prompts)], 16, result)
            if round_:
                cpu[stack.label] += cpu_seconds(pid) - before
    for channel in [*channels, tokenizer]:
        await channel.close()
    return {label: seconds / (requests * rounds) for label, seconds in cpu.items()}


def main() -> None:
    # SIGTERM unwinds like Ctrl-C, so that the services this bench started are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=50, help="requests per round and mesh")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    args = parser.parse_args()
    folder = str(ensure_model("tiny-llama"))
    with OtlpReceiver() as receiver:
        endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint}
        configs = [
            ("tracing off (no endpoint)", {}),
            ("tracing on, not sampled", {**endpoint, "OTEL_TRACES_SAMPLER": "always_off"}),
            ("tracing on, every span exported", {**endpoint, "OTEL_TRACES_SAMPLER": "always_on"}),
        ]
        stacks = []
        try:
            for label, env in configs:
                stacks.append(start_stack(label, folder, ["--num_threads", "1"], env))
            per_request = asyncio.run(measure(stacks, args.requests, args.rounds))
        finally:
            for stack in stacks:
                stack.stop()
    print(
        f"\ntiny-llama, 16 new tokens, {args.rounds}×{args.requests} requests per mesh, direct gRPC"
    )
    print(f"{'engine':36} {'CPU ms / request':>17}")
    for label, seconds in per_request.items():
        print(f"{label:36} {seconds * 1000:17.2f}")


if __name__ == "__main__":
    main()
