"""Encoder tasks through the whole mesh vs the engine alone vs the model's own forward pass.

    python bench/mesh_tasks.py [--duration 3] [--rounds 2] [--tasks embeddings,rerank]
                               [--concurrency 1,8,32] [--batch-inputs 32]

Starts the mesh the launcher plans (one HF engine per model, the tokenizer service, the
gateway) as real processes, on the tiny encoder models and all-MiniLM-L6-v2, and drives each
task with closed-loop clients (each sends its next request when the last one returns) three
ways, alternating in every round so that load from elsewhere on the machine hits all alike:
- mesh: HTTP to the gateway (`/openai/v1/embeddings`, `/openai/v1/rerank`, KServe V1
  `:predict` for fill-mask and classification), its default `--encoder_route auto` (text
  straight to the HF engine);
- split: the same through a second gateway on the same engines and tokenizer with
  `--encoder_route split` (tokenizer preprocess → engine tensors → tokenizer postprocess);
- engine: gRPC `ModelInfer` to the task's engine, text in (BYTES), result out, with
  requests serialised before the clock starts;
- forward: the model's forward pass in this process on pre-tokenised batches of the size
  the engine would see (concurrency × inputs per request): the limit of the machine.
Prints one table per task and concurrency: req/s, inputs/s, p50 and p99 latency, the ratio
to the engine called directly, and the CPU each process used per request (ms) — gateway
(the one measured), tokenizer, engine, this client. The
`embeddings x32` row sends 32 sentences per request. Reference measured on this 2-core
machine: KServe's HF server 69 / 71 / 67 req/s at c=1 / 8 / 32 (it batches nothing).

`--peer infinity` adds a target to the embeddings rows: Infinity (`bench/infinity_peer.py`,
installed into a venv of its own on first use) serving the same model folder, sent the same
request bodies on its OpenAI-compatible `/embeddings`; its one process's CPU is shown under
"engine", and its row ends with the mesh's req/s over its own.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import aiohttp  # noqa: E402
import grpc  # noqa: E402
import numpy as np  # noqa: E402
from tritonclient.grpc import service_pb2  # noqa: E402

from bench import infinity_peer  # noqa: E402
from bench.engine_hf import SENTENCES  # noqa: E402
from bench.profiling import Profile  # noqa: E402
from services.launcher.processes import free_port, start_service  # noqa: E402
from services.models.cache import ensure_model  # noqa: E402
from tests.helpers.mesh import model_entry, running_mesh  # noqa: E402

INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
DOCUMENTS = [
    "Paris is the capital of France.",
    "The Eiffel Tower stands in Paris.",
    "Bananas are rich in potassium.",
    "France borders Spain and Italy.",
]
QUERY = "What is the capital of France?"


@dataclass(frozen=True)
class TaskSpec:
    """One bench task: its mesh model, folder, task and inputs per request."""

    key: str
    model: str
    folder: str
    task: str
    inputs: int = 1  # rows per request (rerank: documents; x32: sentences)

    def text(self, i: int) -> str:
        sentence = SENTENCES[i % len(SENTENCES)]
        if self.task == "fill_mask":
            words = sentence.split()
            words[len(words) // 2] = "[MASK]"
            return " ".join(words)
        return sentence

    def texts(self, i: int) -> list[str]:
        return [self.text(i * self.inputs + k) for k in range(self.inputs)]

    # -- the mesh: HTTP ----------------------------------------------------

    def http(self, i: int) -> tuple[str, dict[str, Any]]:
        if self.task == "text_embedding":
            return "/openai/v1/embeddings", {"model": self.model, "input": self.texts(i)}
        if self.task == "rerank":
            return "/openai/v1/rerank", {
                "model": self.model,
                "query": QUERY,
                "documents": DOCUMENTS[: self.inputs],
            }
        return f"/v1/models/{self.model}:predict", {"instances": self.texts(i)}

    # -- the engine: gRPC, text in -----------------------------------------

    def grpc(self, i: int) -> bytes:
        request = service_pb2.ModelInferRequest(model_name=self.model)
        if self.task == "rerank":
            inputs = {"query": [QUERY], "documents": DOCUMENTS[: self.inputs]}
        else:
            inputs = {"input-0": self.texts(i)}
        for name, values in inputs.items():
            request.inputs.add(name=name, datatype="BYTES", shape=[len(values)])
            request.raw_input_contents.append(
                b"".join(len(v.encode()).to_bytes(4, "little") + v.encode() for v in values)
            )
        return request.SerializeToString()


TASKS = {
    "embeddings": TaskSpec("embeddings", "embed", "all-minilm-l6-v2", "text_embedding"),
    "fill-mask": TaskSpec("fill-mask", "fill", "tiny-bert-fill-mask", "fill_mask"),
    "token-classification": TaskSpec(
        "token-classification", "ner", "tiny-bert-ner", "token_classification"
    ),
    "sequence-classification": TaskSpec(
        "sequence-classification", "sentiment", "tiny-bert-sentiment", "sequence_classification"
    ),
    "rerank": TaskSpec("rerank", "rerank", "tiny-bert-reranker", "rerank", inputs=4),
}


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a process (this one when `pid` is None)."""
    if pid is None:
        times = os.times()
        return times.user + times.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Measure:
    """One target's totals over its rounds."""

    seconds: float = 0.0
    requests: int = 0
    latencies: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)

    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else float("nan")

    def p(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1000 if self.latencies else float("nan")


async def closed_loop(
    call: Callable[[int], Awaitable[None]], concurrency: int, duration: float
) -> tuple[float, list[float]]:
    """`concurrency` clients, each sending its next request when the last returns."""
    latencies: list[float] = []
    stop = time.perf_counter() + duration

    async def client(k: int) -> None:
        i = k
        while time.perf_counter() < stop:
            started = time.perf_counter()
            await call(i)
            latencies.append(time.perf_counter() - started)
            i += concurrency

    started = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(concurrency)))
    return time.perf_counter() - started, latencies


async def run_target(
    target: str,
    spec: TaskSpec,
    concurrency: int,
    duration: float,
    context: dict[str, Any],
) -> tuple[float, list[float]]:
    if target in ("mesh", "split", PEER):
        session: aiohttp.ClientSession = context["sessions"][target]
        bodies = [spec.http(i) for i in range(64)]
        if target == PEER:  # the same bodies on Infinity's route
            bodies = [("/embeddings", body) for _, body in bodies]

        async def call(i: int) -> None:
            path, body = bodies[i % len(bodies)]
            async with session.post(path, json=body) as reply:
                data = await reply.read()
                if reply.status != 200:
                    raise RuntimeError(f"{path} answered {reply.status}: {data[:300]!r}")

        return await closed_loop(call, concurrency, duration)
    if target == "engine":
        unary = context["channels"][spec.model].unary_unary(INFER_METHOD)
        requests = [spec.grpc(i) for i in range(64)]

        async def call(i: int) -> None:
            await unary(requests[i % len(requests)], timeout=120)

        return await closed_loop(call, concurrency, duration)
    forward = context["forwards"][spec.key]
    return await asyncio.to_thread(forward, concurrency * spec.inputs, duration)


def forward_limit(spec: TaskSpec):
    """A function (batch rows, duration) → (seconds, per-batch latencies) running the model's
    forward pass in this process on pre-tokenised, padded batches."""
    import torch
    import transformers

    folder = ensure_model(spec.folder)
    classes = {
        "text_embedding": transformers.AutoModel,
        "fill_mask": transformers.AutoModelForMaskedLM,
        "token_classification": transformers.AutoModelForTokenClassification,
        "sequence_classification": transformers.AutoModelForSequenceClassification,
        "rerank": transformers.AutoModelForSequenceClassification,
    }
    model = classes[spec.task].from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)

    def run(rows: int, duration: float) -> tuple[float, list[float]]:
        if spec.task == "rerank":
            inputs = tokenizer(
                [QUERY] * rows,
                [DOCUMENTS[i % len(DOCUMENTS)] for i in range(rows)],
                padding=True,
                return_tensors="pt",
            )
        else:
            inputs = tokenizer(
                [spec.text(i) for i in range(rows)], padding=True, return_tensors="pt"
            )
        latencies = []
        requests = max(1, rows // spec.inputs)
        stop = time.perf_counter() + duration
        started = time.perf_counter()
        with torch.inference_mode():
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                model(**inputs)
                # each request of the batch waited the whole batch
                latencies.extend([time.perf_counter() - t0] * requests)
        return time.perf_counter() - started, latencies

    return run


TARGETS = ("mesh", "split", "engine", "forward")
PROCESSES = ("gateway", "tokenizer", "engine", "client")
PEER = "infinity"


def peer_serves(spec: TaskSpec) -> bool:
    """Infinity is measured on the rows of the model it serves (embeddings, x32 too)."""
    return spec.folder == TASKS["embeddings"].folder


async def check_peer(session: aiohttp.ClientSession, mesh: aiohttp.ClientSession) -> float:
    """The cosine of Infinity's and the mesh's embedding of one sentence: both must serve the
    same model (≈ 1.0), or the comparison means nothing."""
    path, body = TASKS["embeddings"].http(0)
    vectors = []
    for client, route in ((session, "/embeddings"), (mesh, path)):
        async with client.post(route, json=body) as reply:
            data = await reply.json()
            if reply.status != 200:
                raise RuntimeError(f"{route} answered {reply.status}: {data}")
        vectors.append(np.asarray(data["data"][0]["embedding"], dtype=np.float64))
    a, b = vectors
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


async def bench(
    args, specs: list[TaskSpec], mesh, split, peer=None
) -> list[tuple[TaskSpec, int, dict]]:
    gateways = {"mesh": mesh["gateway"], "split": split}
    engines = {spec.model: mesh.engine(spec.model) for spec in specs}
    channels = {m: grpc.aio.insecure_channel(e.address) for m, e in engines.items()}
    forwards = {spec.key: forward_limit(spec) for spec in specs}
    timeout = aiohttp.ClientTimeout(total=300)
    results = []
    async with (
        aiohttp.ClientSession(
            mesh["gateway"].url, timeout=timeout, connector=aiohttp.TCPConnector(limit=0)
        ) as auto,
        aiohttp.ClientSession(
            split.url, timeout=timeout, connector=aiohttp.TCPConnector(limit=0)
        ) as split_session,
    ):
        sessions = {"mesh": auto, "split": split_session}
        if peer is not None:
            sessions[PEER] = aiohttp.ClientSession(
                peer.url, timeout=timeout, connector=aiohttp.TCPConnector(limit=0)
            )
            cosine = await check_peer(sessions[PEER], auto)
            print(f"Infinity vs mesh, one sentence: embedding cosine {cosine:.6f}\n")
        context = {"sessions": sessions, "channels": channels, "forwards": forwards}
        for spec in specs:
            engine_pid = engines[spec.model].process.pid
            levels = args.batch_concurrency if spec.key == "embeddings-x32" else args.concurrency
            targets = TARGETS + ((PEER,) if peer is not None and peer_serves(spec) else ())
            for concurrency in levels:
                measures = {target: Measure() for target in targets}
                for target in targets:  # warm-up: not counted
                    await run_target(target, spec, concurrency, min(1.0, args.duration), context)
                for _ in range(args.rounds):
                    for target in targets:
                        procs = {
                            "gateway": gateways.get(target, mesh["gateway"]).process.pid,
                            "tokenizer": mesh["tokenizer"].process.pid,
                            "engine": engine_pid,
                            "client": None,
                        }
                        if target == PEER:  # one process does it all
                            procs = {"engine": peer.process.pid, "client": None}
                        before = {name: cpu_seconds(pid) for name, pid in procs.items()}
                        seconds, latencies = await run_target(
                            target, spec, concurrency, args.duration, context
                        )
                        measure = measures[target]
                        measure.seconds += seconds
                        measure.requests += len(latencies)
                        measure.latencies += latencies
                        for name, pid in procs.items():
                            used = cpu_seconds(pid) - before[name]
                            measure.cpu[name] = measure.cpu.get(name, 0.0) + used
                results.append((spec, concurrency, measures))
                print_rows(spec, concurrency, measures, header=len(results) == 1)
        if peer is not None:
            await sessions[PEER].close()
    for channel in channels.values():
        await channel.close()
    return results


def print_rows(spec: TaskSpec, concurrency: int, measures: dict[str, Measure], header: bool):
    """CPU is per process and request, in ms: steadier than req/s on a machine others load
    too (it counts the work, not the waiting)."""
    if header:
        line = (
            f"{'task':<24} {'conc':>4} {'target':<8} {'req/s':>8} {'inputs/s':>9} "
            f"{'p50 ms':>8} {'p99 ms':>8} {'vs engine':>9}   CPU ms/req: "
            + " ".join(f"{name[:5]:>6}" for name in PROCESSES)
        )
        print(line)
        print("-" * len(line))
    engine_rate = measures["engine"].rate()
    name = spec.key + (f" x{spec.inputs}" if spec.inputs > 1 and spec.task != "rerank" else "")
    for target, m in measures.items():
        cpu = " ".join(
            f"{m.cpu[p] * 1000 / max(m.requests, 1):>6.2f}"
            if p in m.cpu and target != "forward"
            else f"{'':>6}"
            for p in PROCESSES
        )
        peer = f"   mesh/{PEER} {measures['mesh'].rate() / m.rate():.2f}x" if target == PEER else ""
        print(
            f"{name:<24} {concurrency:>4} {target:<8} {m.rate():>8.1f} "
            f"{m.rate() * spec.inputs:>9.1f} {m.p(50):>8.1f} {m.p(99):>8.1f} "
            f"{m.rate() / engine_rate:>8.2f}x   {'':>11} {cpu}{peer}",
            flush=True,
        )


def profile(args, spec: TaskSpec, mesh, folder: Path) -> None:
    """`py-spy record` on the gateway, the tokenizer and the engine while `spec` runs through
    the mesh at the first `--concurrency`; prints each process's heaviest functions."""
    pids = {
        "gateway": mesh["gateway"].process.pid,
        "tokenizer": mesh["tokenizer"].process.pid,
        "engine": mesh.engine(spec.model).process.pid,
    }
    concurrency = args.concurrency[0]
    asyncio.run(mesh_load(mesh, spec, concurrency, 1.0))  # warm-up
    recording = Profile(pids, args.profile, folder)
    rate = asyncio.run(mesh_load(mesh, spec, concurrency, args.profile))
    print(f"{spec.key} through the mesh at c={concurrency}: {rate:.1f} req/s while profiled")
    recording.report(args.profile_top)


async def mesh_load(mesh, spec: TaskSpec, concurrency: int, duration: float) -> float:
    async with aiohttp.ClientSession(mesh["gateway"].url) as session:
        context = {"sessions": {"mesh": session}}
        seconds, latencies = await run_target("mesh", spec, concurrency, duration, context)
    return len(latencies) / seconds


def levels(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per target per round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per row")
    parser.add_argument(
        "--tasks",
        default=",".join([*TASKS, "embeddings-x32"]),
        help=f"comma-separated, from {', '.join(TASKS)}, embeddings-x32",
    )
    parser.add_argument("--concurrency", type=levels, default=[1, 8, 32])
    parser.add_argument(
        "--batch-concurrency",
        type=levels,
        default=[1, 4],
        help="concurrency levels of the embeddings-x32 row",
    )
    parser.add_argument("--batch-inputs", type=int, default=32, help="sentences per x32 request")
    parser.add_argument(
        "--profile",
        type=float,
        default=0.0,
        help="instead of the table: py-spy every process for this many seconds while the first "
        "task runs through the mesh at the first --concurrency",
    )
    parser.add_argument("--profile-top", type=int, default=25, help="functions listed per process")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment of every mesh process and the peer (repeatable), e.g. "
        "OMP_WAIT_POLICY=PASSIVE",
    )
    parser.add_argument(
        "--peer",
        choices=[PEER],
        help="also serve all-MiniLM-L6-v2 with this server (installed into its own venv on "
        "first use) and measure it on the embeddings rows, alternating with the others",
    )
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so that the services this bench started are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    specs = []
    for key in args.tasks.split(","):
        if key == "embeddings-x32":
            base = TASKS["embeddings"]
            specs.append(TaskSpec(key, base.model, base.folder, base.task, args.batch_inputs))
        elif key in TASKS:
            specs.append(TASKS[key])
        else:
            parser.error(f"unknown task {key!r}")
    if args.peer and not any(peer_serves(spec) for spec in specs):
        parser.error("--peer infinity serves the embeddings model: add embeddings to --tasks")
    entries = {}
    for spec in specs:
        entries[spec.model] = model_entry(spec.model, str(ensure_model(spec.folder)), spec.task)
    print(
        f"encoder tasks on {os.cpu_count()} CPU cores, {args.rounds} rounds x {args.duration:g} s "
        "per target, targets alternating (mesh / engine / forward)\n"
    )
    peer_cli = infinity_peer.ensure_installed() if args.peer else None
    folder = Path(tempfile.mkdtemp(prefix="hfmesh-bench-"))
    env = dict(item.split("=", 1) for item in args.env)
    with running_mesh(list(entries.values()), folder, env=env or None) as m:
        if args.profile:
            profile(args, specs[0], m, folder)
            return
        gateway = m.specs["gateway"]
        split = start_service(
            gateway.module,
            [*gateway.args, "--encoder_route", "split"],
            name="gateway-split",
            port=free_port(),
            ready="http",
            env=env or None,
            log_dir=folder,
        )
        peer = None
        try:
            if peer_cli is not None:
                model = ensure_model(TASKS["embeddings"].folder)
                peer = infinity_peer.start_infinity(peer_cli, model, folder, env or None)
            asyncio.run(bench(args, specs, m, split, peer))
        finally:
            if peer is not None:
                peer.stop()
            split.stop()
    print(
        "\nreq/s of the mesh over the engine called directly is the split's cost; forward is "
        "the model alone at batch = concurrency x inputs. Reference (KServe HF server, this "
        "machine, one sentence per request): 69 / 71 / 67 req/s at c=1 / 8 / 32."
    )


if __name__ == "__main__":
    main()
