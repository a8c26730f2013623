"""The gateway's own cost per encoder request: CPU ms, req/s and latency per route, on engines
that answer at once.

    python bench/gateway_encoders.py [--compare /path/to/other/checkout] [--concurrency 1,32]
                                     [--duration 3] [--rounds 2] [--tasks embeddings,rerank]

One process serves a fake HF engine (`tests.fakes.FakeEngine`: text in, task results out with
no model, 384-dim embeddings) and the real tokenizer service, for the five encoder models of
`bench/mesh_tasks.py`; a gateway (this checkout's) routes to them, so the gateway is what the
numbers measure. Closed-loop clients post each task's request (`/openai/v1/embeddings`,
`/openai/v1/rerank`, KServe V1 `:predict`). With `--compare ROOT` a second gateway runs from
another checkout (e.g. `git worktree add /tmp/base <commit>`) on the same engines and the two
alternate in every round, so load from elsewhere on the machine hits both alike. The CPU
column (the gateway process's user + system time per request) is the steady one on a shared
machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import aiohttp  # noqa: E402
import numpy as np  # noqa: E402

from bench.mesh_tasks import TASKS, Measure, TaskSpec, cpu_seconds, run_target  # noqa: E402
from services.common.engine import Task  # noqa: E402
from services.launcher.processes import ServiceProcess, free_port, wait_ready  # noqa: E402
from services.models.cache import ensure_model  # noqa: E402

EMBEDDING_SIZE = 384


def serve_fake(engine_port: int, tokenizer_port: int) -> None:
    """The fake engine and the tokenizer service, until killed (run as a child process)."""
    from services.common.oip_servicer import InferenceServicer
    from services.common.pb import inference_pb2_grpc as pb_grpc
    from services.common.server import GrpcServiceRunner
    from services.tokenizer.core import ModelOptions, TokenizerCore, TokenizerModel
    from services.tokenizer.loader import load_tokenizer
    from services.tokenizer.servicer import TokenizerServicer
    from tests.fakes import FakeEngine, ready

    class Engine(FakeEngine):
        async def encode(self, request):
            result = await super().encode(request)
            self.encodes.clear()  # keeps nothing: the bench sends many
            return result

        def _raw_outputs(self, name, tensors):
            if name != TASKS["embeddings"].model:
                return super()._raw_outputs(name, tensors)
            ids = tensors["input_ids"].astype(np.float32)[..., None]
            hidden = np.sin(ids * (np.arange(EMBEDDING_SIZE, dtype=np.float32) + 1) / 50.0)
            return {"last_hidden_state": hidden}

    async def main() -> None:
        models = [
            TokenizerModel(
                spec.model,
                load_tokenizer(ensure_model(spec.folder)),
                ModelOptions(task=Task(spec.task)),
            )
            for spec in TASKS.values()
        ]
        engine = Engine(
            [ready(m.name, m.options.task) for m in models], text_models={m.name: m for m in models}
        )
        tokenizer = TokenizerServicer()
        tokenizer.attach(TokenizerCore(models, workers=1))
        for port, servicer in (
            (engine_port, InferenceServicer(engine, server_name="fake-engine")),
            (tokenizer_port, tokenizer),
        ):
            runner = GrpcServiceRunner(host="127.0.0.1", port=port, grace_seconds=0.5)
            runner.add(
                lambda server, s=servicer: pb_grpc.add_GRPCInferenceServiceServicer_to_server(
                    s, server
                )
            )
            await runner.start()
            await runner.set_serving(True)
        await asyncio.Event().wait()

    asyncio.run(main())


def model_list(engine_port: int, tokenizer_port: int) -> str:
    lines = ["models:"]
    for spec in TASKS.values():
        lines += [
            f"- name: {spec.model}",
            f"  source: {ensure_model(spec.folder)}",
            f"  task: {spec.task}",
            "  backend: huggingface",
            "  replicas: 1",
            "  endpoints:",
            f"    tokenizer: ['127.0.0.1:{tokenizer_port}']",
            f"    huggingface: ['127.0.0.1:{engine_port}']",
        ]
    return "\n".join(lines) + "\n"


def start_gateway(root: Path, mesh_file: Path, name: str, log_dir: Path) -> ServiceProcess:
    port = free_port()
    command = [sys.executable, "-m", "services.gateway", "--model_list", str(mesh_file)]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    log = log_dir / f"{name}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, cwd=root, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    gateway = ServiceProcess(name, command, port, process, log)
    wait_ready(gateway, "http", 120)
    return gateway


async def drive(session: aiohttp.ClientSession, spec: TaskSpec, concurrency: int, seconds: float):
    """`spec`'s requests through one gateway (mesh_tasks' `mesh` target)."""
    return await run_target("mesh", spec, concurrency, seconds, {"sessions": {"mesh": session}})


async def bench(args, gateways: dict[str, ServiceProcess], specs: list[TaskSpec]) -> None:
    sessions = {
        name: aiohttp.ClientSession(g.url, connector=aiohttp.TCPConnector(limit=0))
        for name, g in gateways.items()
    }
    print(
        f"{'task':<24} {'conc':>4} {'gateway':<10} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'gateway CPU ms/req':>19} {'load':>5}"
    )
    try:
        for spec in specs:
            for concurrency in args.concurrency:
                measures = {name: Measure() for name in gateways}
                for name in gateways:  # warm-up: not counted
                    await drive(sessions[name], spec, concurrency, 1.0)
                for round_ in range(args.rounds):
                    order = list(gateways) if round_ % 2 == 0 else list(reversed(gateways))
                    for name in order:
                        pid = gateways[name].process.pid
                        before = cpu_seconds(pid)
                        seconds, latencies = await drive(
                            sessions[name], spec, concurrency, args.duration
                        )
                        m = measures[name]
                        m.seconds += seconds
                        m.requests += len(latencies)
                        m.latencies += latencies
                        m.cpu["gateway"] = m.cpu.get("gateway", 0.0) + cpu_seconds(pid) - before
                for name, m in measures.items():
                    cpu = m.cpu["gateway"] * 1000 / max(m.requests, 1)
                    print(
                        f"{spec.key:<24} {concurrency:>4} {name:<10} {m.rate():>8.1f} "
                        f"{m.p(50):>8.2f} {m.p(99):>8.2f} {cpu:>19.3f} {os.getloadavg()[0]:>5.1f}",
                        flush=True,
                    )
    finally:
        for session in sessions.values():
            await session.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", type=Path, help="another checkout whose gateway runs beside")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"from {', '.join(TASKS)}")
    parser.add_argument(
        "--concurrency", type=lambda t: [int(x) for x in t.split(",")], default=[1, 32]
    )
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per gateway per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--serve-fake", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_fake:
        serve_fake(*args.serve_fake)
        return
    specs = [TASKS[key] for key in args.tasks.split(",")]
    folder = Path(tempfile.mkdtemp(prefix="hfmesh-gateway-encoders-"))
    engine_port, tokenizer_port = free_port(), free_port()
    fake = ServiceProcess(
        "fake-engine",
        [],
        engine_port,
        subprocess.Popen(
            [sys.executable, __file__, "--serve-fake", str(engine_port), str(tokenizer_port)],
            cwd=ROOT,
            stdout=open(folder / "fake-engine.log", "wb"),  # noqa: SIM115 - the child keeps it
            stderr=subprocess.STDOUT,
            start_new_session=True,
        ),
        folder / "fake-engine.log",
    )
    gateways: dict[str, ServiceProcess] = {}
    try:
        wait_ready(fake, "grpc", 120)
        mesh_file = folder / "mesh.yaml"
        mesh_file.write_text(model_list(engine_port, tokenizer_port))
        gateways["this"] = start_gateway(ROOT, mesh_file, "this", folder)
        if args.compare is not None:
            gateways["compare"] = start_gateway(args.compare, mesh_file, "compare", folder)
        asyncio.run(bench(args, gateways, specs))
    finally:
        for gateway in gateways.values():
            gateway.stop()
        fake.stop()


if __name__ == "__main__":
    main()
