"""The client CPU of one loopback unary `ModelInfer`: `grpc.aio` against the synchronous stub.

    python bench/grpc_unary.py [--calls 4000] [--concurrency 1,32] [--rounds 2]

Starts a server in a child process that answers `ModelInfer` at once (an empty response), then,
in this process's asyncio loop, sends `--calls` calls per row two ways, alternating in each
round: `grpc.aio` (what the gateway uses) and the synchronous channel's `.future()` with its
completion handed to the loop (`call_soon_threadsafe`). Prints the client CPU per call
(process time, all threads) and calls/s. docs/performance.md quotes it: the gateway's
remaining cost per encoder request is mostly this call.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc  # noqa: E402

from services.common.codec import InferRequest, Tensor, as_bytes_array  # noqa: E402
from services.common.converters import infer_request_to_pb  # noqa: E402
from services.common.pb import inference_pb2 as pb  # noqa: E402
from services.common.pb import inference_pb2_grpc as pb_grpc  # noqa: E402
from services.launcher.processes import free_port  # noqa: E402

METADATA = (("x-request-id", "bench"),)


class Answering(pb_grpc.GRPCInferenceServiceServicer):
    async def ModelInfer(self, request, context):  # noqa: N802 - the gRPC method's name
        return pb.ModelInferResponse(model_name=request.model_name, id=request.id)


async def serve(port: int) -> None:
    server = grpc.aio.server()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(Answering(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def request() -> pb.ModelInferRequest:
    """One sentence as BYTES, encoded as the gateway encodes an encoder's text."""
    text = Tensor("text", "BYTES", as_bytes_array(["The quick brown fox jumps over the lazy dog."]))
    return infer_request_to_pb(InferRequest("bench", [text], id="1"), raw=True)


def aio_caller(target: str) -> tuple[Callable[[], Awaitable[object]], Callable[[], Awaitable]]:
    channel = grpc.aio.insecure_channel(target)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    message = request()
    return lambda: stub.ModelInfer(message, timeout=10, metadata=METADATA), channel.close


def sync_caller(target: str) -> tuple[Callable[[], Awaitable[object]], Callable[[], Awaitable]]:
    channel = grpc.insecure_channel(target)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    message = request()

    def call() -> asyncio.Future:
        loop = asyncio.get_running_loop()
        result: asyncio.Future = loop.create_future()
        pending = stub.ModelInfer.future(message, timeout=10, metadata=METADATA)

        def settle(done: grpc.Future) -> None:
            if result.done():
                return
            error = done.exception()
            if error is None:
                result.set_result(done.result())
            else:
                result.set_exception(error)

        pending.add_done_callback(lambda done: loop.call_soon_threadsafe(settle, done))
        return result

    async def close() -> None:
        channel.close()

    return call, close


async def measure(make: Callable, target: str, calls: int, concurrency: int) -> tuple[float, float]:
    """(client CPU µs per call, calls/s)."""
    call, close = make(target)
    try:

        async def worker(count: int) -> None:
            for _ in range(count):
                await call()

        await worker(50)  # connect and warm up
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker(calls // concurrency) for _ in range(concurrency)))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        done = calls // concurrency * concurrency
        return cpu / done * 1e6, done / wall
    finally:
        await close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=4000, help="per row and round")
    parser.add_argument("--concurrency", default="1,32", help="comma-separated")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve))
        return 0
    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
    target = f"127.0.0.1:{port}"
    try:
        with grpc.insecure_channel(target) as probe:
            try:
                grpc.channel_ready_future(probe).result(timeout=30)
            except grpc.FutureTimeoutError:
                raise SystemExit("the answering server did not start") from None
        print(f"{'client':<14}{'conc':>5}{'round':>6}{'CPU us/call':>13}{'calls/s':>10}")
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            for round_ in range(1, args.rounds + 1):
                for name, make in (("grpc.aio", aio_caller), ("sync .future", sync_caller)):
                    cpu, rate = asyncio.run(measure(make, target, args.calls, concurrency))
                    print(f"{name:<14}{concurrency:>5}{round_:>6}{cpu:>13.0f}{rate:>10.0f}")
    finally:
        server.kill()
        server.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
