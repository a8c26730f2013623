"""Footprint: resident memory of the whole local mesh, per process, after a soak.

    python bench/footprint.py [--soak 60] [--concurrency 4]
        # `make run`'s mesh (deploy/models.yaml, `python -m services.launcher`), started here
    python bench/footprint.py --compare [--before_root DIR] [--before_args "..."]
        # two meshes one after the other, same soak: "before" then "after" (the default)
    python bench/footprint.py --attach PID --gateway http://127.0.0.1:8080
        # a mesh already running: PID is its launcher's

Each mesh is started as `make run` starts it (`python -m services.launcher`, on free ports,
its own run file and log folder), from this checkout or, for the "before" side of
`--compare`, from `--before_root` (a checkout of an older commit, e.g. made with
`git worktree add /tmp/before d45f1fe`) with `--before_args` added to its command line
(default `--engine_per_model`: one HF engine process per model, as before engine groups).

Once every service is up, each model is asked one fixed question through the gateway (chat
for text generation, KServe V1 `:predict` for every other task); the answers are printed, and
with `--compare` both meshes' answers must be identical. Then `--soak` seconds of the same
requests, `--concurrency` clients cycling over every model, so that caches and batches reach
their working size. Then the launcher's process tree is read with psutil: RSS per process (what
`ps` shows; pages shared between processes, such as a model file two engines map, count in each)
and PSS (those shared pages split between their processes: the tree's PSS adds up to the memory
it really holds), and the totals.

Exits non-zero when a mesh fails to start, a request fails, or `--compare`'s answers differ.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx  # noqa: E402
import psutil  # noqa: E402
import yaml  # noqa: E402

from tests.helpers.mesh import free_port_run  # noqa: E402

MIB = 1024 * 1024
SOAK_TOLERANCE = 1e-4
CHAT_PROMPT = "What is the capital of France?"
#: One fixed V1 instance per encoder task (KServe V1 `:predict`).
INSTANCES = {
    "text_embedding": ["A man is eating food."],
    "fill_mask": ["The capital of France is [MASK]."],
    "token_classification": ["Paris is in France."],
    "sequence_classification": ["What a lovely day."],
    "rerank": [["capital of France", "Paris"], ["capital of France", "a potato"]],
    "text2text_generation": ["translate English to German: hello"],
}


@dataclass
class Config:
    name: str
    root: Path
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Mesh:
    launcher: psutil.Process
    gateway: str
    models: dict[str, str]  # name → task
    process: subprocess.Popen | None = None


@dataclass
class Row:
    label: str
    pid: int
    rss: float
    pss: float


# -- starting and stopping a mesh -------------------------------------------------


def start_mesh(config: Config, folder: Path, timeout: float) -> Mesh:
    """`python -m services.launcher` from `config.root` on free ports; returns once it is up."""
    port, control = free_port_run(1), free_port_run(1)
    base = free_port_run(16)
    log_dir = folder / f"logs-{config.name}"
    command = [
        sys.executable,
        "-m",
        "services.launcher",
        "--port",
        str(port),
        "--base_port",
        str(base),
        "--control_plane_port",
        str(control),
        "--log_dir",
        str(log_dir),
        "--run_file",
        str(folder / f"run-{config.name}.json"),
        *config.args,
    ]
    print(f"[{config.name}] {shlex.join(command[1:])}  (in {config.root})", flush=True)
    process = subprocess.Popen(
        command,
        cwd=config.root,
        env={**os.environ, **config.env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    up = threading.Event()
    tail: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            tail.append(line)
            del tail[:-40]
            if line.startswith("hfmesh is up"):
                up.set()

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not up.wait(1.0):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_mesh(process)
            raise RuntimeError(f"[{config.name}] the mesh did not come up:\n{''.join(tail)}")
    planned = yaml.safe_load((log_dir / "mesh.yaml").read_text())
    models = {entry["name"]: entry["task"] for entry in planned["models"]}
    return Mesh(psutil.Process(process.pid), f"http://127.0.0.1:{port}", models, process)


def stop_mesh(process: subprocess.Popen) -> None:
    """SIGTERM the launcher (it drains and stops every service), SIGKILL what is left."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(120)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def attached_mesh(pid: int, gateway: str) -> Mesh:
    listed = httpx.get(f"{gateway}/openai/v1/models", timeout=30).json()["data"]
    return Mesh(psutil.Process(pid), gateway, {m["id"]: m["task"] for m in listed})


# -- requests ---------------------------------------------------------------------


def request_for(model: str, task: str) -> tuple[str, dict]:
    if task == "text_generation":
        messages = [{"role": "user", "content": CHAT_PROMPT}]
        body = {"model": model, "messages": messages, "max_tokens": 20, "temperature": 0}
        return "/openai/v1/chat/completions", body
    return f"/v1/models/{model}:predict", {"instances": INSTANCES[task]}


def answer_of(task: str, reply: dict) -> str:
    """The part of a reply that must not change, as text."""
    if task == "text_generation":
        return str(reply["choices"][0]["message"]["content"])
    return json.dumps(reply["predictions"])


def close(first: str, second: str) -> bool:
    """Equal, or the same numbers to within SOAK_TOLERANCE."""
    if first == second:
        return True
    try:
        a, b = json.loads(first), json.loads(second)
    except ValueError:
        return False
    return _close(a, b)


def _close(a: object, b: object) -> bool:
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= SOAK_TOLERANCE
    return a == b


async def ask(client: httpx.AsyncClient, model: str, task: str) -> str:
    path, body = request_for(model, task)
    reply = await client.post(path, json=body)
    if reply.status_code != 200:
        raise RuntimeError(f"{model}: HTTP {reply.status_code}: {reply.text[:300]}")
    return answer_of(task, reply.json())


async def answers_and_soak(mesh: Mesh, seconds: float, concurrency: int) -> dict[str, str]:
    """Each model's answer, asked one at a time, then the soak. A soak request may share a
    batch with others, whose padding moves floats in their last bits (on one-model engines as
    on groups): its answer must match to within SOAK_TOLERANCE."""
    async with httpx.AsyncClient(base_url=mesh.gateway, timeout=300) as client:
        answers = {m: await ask(client, m, t) for m, t in sorted(mesh.models.items())}
        stop = time.monotonic() + seconds
        counts = [0] * concurrency

        async def cycle(index: int) -> None:
            order = sorted(mesh.models.items())
            while time.monotonic() < stop:
                model, task = order[(index + counts[index]) % len(order)]
                answer = await ask(client, model, task)
                if not close(answer, answers[model]):
                    raise RuntimeError(
                        f"{model}: the answer changed during the soak: {answer[:200]} vs "
                        f"{answers[model][:200]}"
                    )
                counts[index] += 1

        if seconds > 0:
            await asyncio.gather(*(cycle(i) for i in range(concurrency)))
            print(f"soak: {sum(counts)} requests in {seconds:.0f} s over every model", flush=True)
    return answers


# -- memory -----------------------------------------------------------------------


def label(process: psutil.Process) -> str:
    try:
        command = process.cmdline()
    except psutil.Error:
        return "?"
    if command and command[0].startswith("VLLM::"):
        return command[0]
    if "-m" in command:
        module = command[command.index("-m") + 1].removeprefix("services.")
        for flag in ("--model_name", "--models"):
            if flag in command:
                return f"{module} {command[command.index(flag) + 1]}"
        return module
    joined = " ".join(command)
    return (
        "multiprocessing " + joined.split("import ")[-1][:30]
        if "multiprocessing" in joined
        else joined[:50]
    )


def memory_rows(root: psutil.Process) -> list[Row]:
    rows = []
    for process in [root, *root.children(recursive=True)]:
        try:
            info = process.memory_full_info()
        except psutil.Error:
            continue
        rows.append(Row(label(process), process.pid, info.rss / MIB, info.pss / MIB))
    return sorted(rows, key=lambda row: -row.rss)


def print_table(name: str, rows: list[Row]) -> None:
    print(f"\n[{name}] resident memory of the launcher's process tree")
    print(f"{'process':<58}{'pid':>8}{'RSS MiB':>10}{'PSS MiB':>10}")
    for row in rows:
        print(f"{row.label[:57]:<58}{row.pid:>8}{row.rss:>10.0f}{row.pss:>10.0f}")
    rss, pss = sum(r.rss for r in rows), sum(r.pss for r in rows)
    print(f"{'total (' + str(len(rows)) + ' processes)':<66}{rss:>10.0f}{pss:>10.0f}")


# -- main -------------------------------------------------------------------------


def measure(config: Config, args: argparse.Namespace, folder: Path) -> tuple[list[Row], dict]:
    mesh = start_mesh(config, folder, args.ready_timeout)
    try:
        answers = asyncio.run(answers_and_soak(mesh, args.soak, args.concurrency))
        for model, answer in answers.items():
            print(f"  {model:<26} {answer[:150]}", flush=True)
        return memory_rows(mesh.launcher), answers
    finally:
        assert mesh.process is not None
        stop_mesh(mesh.process)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--soak", type=float, default=60.0, help="seconds of requests (0: none)")
    parser.add_argument("--concurrency", type=int, default=4, help="soak clients")
    parser.add_argument("--args", default="", help="extra launcher flags of the mesh measured")
    parser.add_argument("--compare", action="store_true", help="measure before, then after")
    parser.add_argument("--before_root", default=str(ROOT), help="checkout the before mesh runs")
    parser.add_argument(
        "--before_args", default="--engine_per_model", help="launcher flags of the before mesh"
    )
    parser.add_argument("--attach", type=int, help="the launcher pid of a running mesh")
    parser.add_argument("--gateway", default="http://127.0.0.1:8080", help="with --attach")
    parser.add_argument("--ready_timeout", type=float, default=1800.0)
    args = parser.parse_args()
    if args.attach:
        mesh = attached_mesh(args.attach, args.gateway)
        answers = asyncio.run(answers_and_soak(mesh, args.soak, args.concurrency))
        for model, answer in answers.items():
            print(f"  {model:<26} {answer[:150]}")
        print_table("running mesh", memory_rows(mesh.launcher))
        return 0
    after = Config("after", ROOT, shlex.split(args.args))
    configs = [after]
    if args.compare:
        before = Config("before", Path(args.before_root).resolve(), shlex.split(args.before_args))
        configs = [before, after]
    results = {}
    with tempfile.TemporaryDirectory(prefix="hfmesh-footprint-") as folder:
        for config in configs:
            results[config.name] = measure(config, args, Path(folder))
    for name, (rows, _) in results.items():
        print_table(name, rows)
    if not args.compare:
        return 0
    (rows_b, answers_b), (rows_a, answers_a) = results["before"], results["after"]
    print(f"\n{'':<10}{'processes':>10}{'RSS MiB':>10}{'PSS MiB':>10}")
    for name, rows in (("before", rows_b), ("after", rows_a)):
        rss, pss = sum(r.rss for r in rows), sum(r.pss for r in rows)
        print(f"{name:<10}{len(rows):>10}{rss:>10.0f}{pss:>10.0f}")
    same = answers_b == answers_a
    print(f"answers identical: {'yes' if same else 'NO'}")
    for model in sorted(set(answers_b) | set(answers_a)):
        if answers_b.get(model) != answers_a.get(model):
            print(f"  {model}: before {answers_b.get(model)!r} / after {answers_a.get(model)!r}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
