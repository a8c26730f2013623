"""`python -m services.launcher`: the whole mesh as local processes, no Docker.

Plans the model list in a child process (`python -m services.launcher.plan`: it builds the
default models and fetches remote `source:`s (hf://, s3://, gs://, https://; the storage
initializer of `services.models.fetch`) if needed, with progress, and imports torch and vLLM to
do so; the launcher never does, and stays a light supervisor), then starts the control plane,
the tokenizer and the engines (one process per model, backend and replica, except that the HF
engine models of an engine group share one: by default all of them, `--engine_per_model` to
keep one each), then the gateway; shows each as it becomes ready and prints the URL to call.
Every service but the control plane gets its address in `HFMESH_CONTROL_PLANE` (the
`control_plane` setting), and an xDS bootstrap for `xds:///` clients is written into the log
folder. With `--tls_dir` every service, the control plane included, gets the folder's
certificate, key and CA as its `HFMESH_TLS_*` settings (mutual TLS on every gRPC port and
channel), and readiness is checked over TLS.

Then it supervises (`services.launcher.supervisor`): a service that dies is printed and
restarted with backoff on its port while the others keep serving. A service that fails before
the mesh is first up is a start-up error (which one, and its log tail). Ctrl-C or SIGTERM stops
everything: the services drain, the control plane last, and none is left behind.

`--add_replica MODEL` / `--remove_replica MODEL` ask the running launcher (found through its run
file, `services.launcher.runstate`) to start one more engine of a model under its supervision,
or to stop the one started last (`services.launcher.replicas`; docs/scale-out.md).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from prometheus_client import start_http_server

from services.common.logs import configure_logging
from services.common.model_list import MeshPlan, load_model_list
from services.control_plane.bootstrap import write_bootstrap
from services.launcher.autoscaler import Autoscaler, GatewayLoad
from services.launcher.plan import (
    ProcessSpec,
    control_plane_process,
    gateway_process,
    plan_processes,
    with_metrics_ports,
)
from services.launcher.processes import (
    ROOT,
    ServiceProcess,
    free_port,
    grpc_serving,
    is_ready,
    tls_from_dir,
)
from services.launcher.replicas import Replicas
from services.launcher.runstate import DEFAULT_RUN_FILE, CommandBox, RunState, RunStateError
from services.launcher.supervisor import Supervisor

logger = logging.getLogger("hfmesh.launcher")

DEFAULT_MODEL_LIST = ROOT / "deploy" / "models.yaml"
#: The environment variable of every service's `control_plane` setting.
CONTROL_PLANE_ENV = "HFMESH_CONTROL_PLANE"
CONTROL_PLANE = "control_plane"

EPILOG = """\
scale out a running mesh (docs/scale-out.md):
  python -m services.launcher --add_replica MODEL [--backend B]
      one more engine of MODEL, on a free port, supervised with the mesh; it registers with
      the control plane and the gateway sends it traffic without a restart
  python -m services.launcher --remove_replica MODEL [--backend B]
      stop the replica of MODEL started last (never its last one)
`replicas: N` in the model list starts N engines of a model from the beginning.
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m services.launcher",
        description="Start the hfmesh mesh (control plane, tokenizer, engines, gateway) as "
        "local supervised processes, or scale a running one.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model_list",
        default=str(DEFAULT_MODEL_LIST),
        help="model list to plan and serve (YAML; default: deploy/models.yaml)",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address the gateway and control plane bind"
    )
    parser.add_argument("--port", type=int, default=8080, help="gateway HTTP port (8080)")
    parser.add_argument(
        "--base_port",
        type=int,
        default=50051,
        help="first gRPC port; services take consecutive ports (50051)",
    )
    parser.add_argument(
        "--control_plane_port", type=int, default=18000, help="control plane gRPC port (18000)"
    )
    parser.add_argument(
        "--models", default="", help="comma-separated subset of model names to serve"
    )
    parser.add_argument("--no_vllm", action="store_true", help="serve every model on the HF engine")
    parser.add_argument(
        "--engine_per_model",
        action="store_true",
        help="one HF engine process per model (default: the HF engine models without an "
        "engine_group of their own share one process, the group 'shared'; "
        "docs/engine-groups.md)",
    )
    parser.add_argument("--log_dir", default="", help="service logs (default: a new temp folder)")
    parser.add_argument(
        "--ready_timeout",
        type=float,
        default=900.0,
        help="seconds to wait for every service, or for an added replica (900)",
    )
    parser.add_argument(
        "--metrics_port",
        type=int,
        default=0,
        help="port of the launcher's own /metrics: the autoscaler's replicas, load and "
        "decisions per model (0: off)",
    )
    parser.add_argument(
        "--metrics_base_port",
        type=int,
        default=0,
        help="first port of the services' Prometheus /metrics: control plane, tokenizer and "
        "engines take consecutive ports (0, the default: free ports; printed when up; added "
        "replicas take free ones; the gateway serves /metrics on its own port)",
    )
    parser.add_argument(
        "--tls_dir",
        default="",
        help="mutual TLS on every gRPC port and channel of the mesh, with DIR/mesh.pem, "
        "DIR/mesh-key.pem and DIR/ca.pem (scripts/make_dev_certs.sh DIR makes them; "
        "docs/tls.md); default: plain gRPC",
    )
    parser.add_argument(
        "--run_file",
        default=str(DEFAULT_RUN_FILE),
        help="where the running launcher says how to reach it (default: %(default)s)",
    )
    scale = parser.add_mutually_exclusive_group()
    scale.add_argument(
        "--add_replica", metavar="MODEL", help="add an engine of MODEL to the running mesh"
    )
    scale.add_argument(
        "--remove_replica",
        metavar="MODEL",
        help="stop the engine of MODEL started last in the running mesh",
    )
    parser.add_argument(
        "--backend",
        choices=("vllm", "huggingface"),
        help="with --add_replica/--remove_replica: the engine (default: the model's planned one)",
    )
    return parser.parse_args(argv)


def _wait_all(processes: list[tuple[ProcessSpec, ServiceProcess]], timeout: float) -> None:
    pending = {spec.name: (spec, proc) for spec, proc in processes}
    start = time.monotonic()
    last_note = start
    while pending:
        for name, (spec, proc) in list(pending.items()):
            if not proc.alive():
                raise RuntimeError(
                    f"{name} exited with {proc.process.returncode}; log: {proc.log_path}\n"
                    f"{proc.log()[-3000:]}"
                )
            if is_ready(proc, spec.ready):
                print(
                    f"  ready  {name:<40} {proc.address}  ({time.monotonic() - start:.0f}s)",
                    flush=True,
                )
                del pending[name]
        if pending and time.monotonic() - last_note > 15:
            print(
                f"  ... loading: {', '.join(sorted(pending))} ({time.monotonic() - start:.0f}s)",
                flush=True,
            )
            last_note = time.monotonic()
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"not ready after {timeout:.0f}s: {', '.join(sorted(pending))}")
        time.sleep(0.5)


def _start(supervisor: Supervisor, specs: list[ProcessSpec], timeout: float) -> None:
    """Start `specs` under supervision and wait until all serve; a death is a start-up error."""
    _wait_all([(spec, supervisor.add(spec)) for spec in specs], timeout)


def _plan(args: argparse.Namespace, mesh_file: Path) -> MeshPlan | None:
    """Plan in a child process (torch, vLLM) and read back the planned list (neither)."""
    command = [
        sys.executable,
        "-m",
        "services.launcher.plan",
        "--model_list",
        args.model_list,
        "--out",
        str(mesh_file),
        "--host",
        args.host,
        "--base_port",
        str(args.base_port),
        "--models",
        args.models,
    ]
    if args.no_vllm:
        command.append("--no_vllm")
    if args.engine_per_model:
        command.append("--engine_per_model")
    code = subprocess.call(command, cwd=ROOT)
    if code != 0:
        print(f"hfmesh: planning {args.model_list} failed (exit {code})", file=sys.stderr)
        return None
    return load_model_list(mesh_file)


def _dial_host(host: str) -> str:
    return "127.0.0.1" if host in ("", "0.0.0.0", "::", "[::]") else host


def serve(args: argparse.Namespace) -> int:
    configure_logging("INFO", "launcher")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="hfmesh-logs-")).resolve()
    log_dir.mkdir(parents=True, exist_ok=True)
    run_file = Path(args.run_file).expanduser()
    supervisor = Supervisor(log_dir=log_dir)
    state: RunState | None = None

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        tls = tls_from_dir(args.tls_dir) if args.tls_dir else None  # before the long planning
        print(f"hfmesh: model list {args.model_list}; logs in {log_dir}", flush=True)
        print("==> models (built or fetched once per machine)", flush=True)
        mesh_file = log_dir / "mesh.yaml"
        plan = _plan(args, mesh_file)
        if plan is None:
            return 1
        for entry in plan.models:
            count = f" replicas={entry.replicas}" if entry.replicas > 1 else ""
            group = f" engine_group={entry.engine_group}" if entry.engine_group else ""
            print(
                f"  {entry.name:<28} {entry.task.value:<24} "
                f"backend={'+'.join(entry.backends)}{count}{group}",
                flush=True,
            )
        # The same host and base port as the planning child: the ports it wrote.
        specs = plan_processes(
            plan, host=args.host, base_port=args.base_port, mesh_file=str(mesh_file)
        )
        control = control_plane_process(
            str(mesh_file), host=args.host, port=args.control_plane_port
        )
        control_address = f"{_dial_host(args.host)}:{control.port}"
        bootstrap = write_bootstrap(
            log_dir / "xds-bootstrap.json", control_address, "hfmesh", tls=tls
        )
        env = {CONTROL_PLANE_ENV: control_address}
        gateway = gateway_process(str(mesh_file), host=args.host, port=args.port)
        for spec in [*specs, gateway]:
            spec.env = env
        for spec in [control, *specs, gateway]:
            spec.tls = tls
        metrics = with_metrics_ports([control, *specs], args.metrics_base_port, free_port)
        replicas = Replicas(plan, supervisor, env, planned=specs, tls=tls)
        commands = CommandBox(log_dir / "commands")
        commands.folder.mkdir(exist_ok=True)

        print(f"==> control plane {control_address}", flush=True)
        _start(supervisor, [control], 120)
        print(f"==> starting {len(specs)} services (model loads take a while on CPU)", flush=True)
        _start(supervisor, specs, args.ready_timeout)
        _start(supervisor, [gateway], 120)
        _warn_if_taken(run_file)
        gateway_url = f"http://{_dial_host(args.host)}:{args.port}"
        # Models with a `scaling` block follow the load the gateway sees (KubeAI's knobs).
        autoscaler = Autoscaler(plan.models, GatewayLoad(f"{gateway_url}/metrics"), replicas.scale)
        if args.metrics_port:
            start_http_server(args.metrics_port, addr=args.host, registry=autoscaler.registry)
        state = RunState(
            pid=os.getpid(),
            control_plane=control_address,
            model_list=str(mesh_file),
            log_dir=str(log_dir),
            bootstrap=str(bootstrap),
            commands=str(commands.folder),
            gateway=gateway_url,
            tls_dir=str(Path(args.tls_dir).resolve()) if tls else None,
        )
        state.write(run_file)
        _print_banner(args, plan, control_address, bootstrap, metrics)
        while True:
            supervisor.poll()
            commands.serve(replicas.handle)
            autoscaler.tick()
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nhfmesh: stopping ...", flush=True)
        return 0
    except (RuntimeError, TimeoutError, FileNotFoundError) as error:
        print(f"hfmesh: {error}", file=sys.stderr, flush=True)
        return 1
    finally:
        # A second Ctrl-C must not cut the drain short and leave processes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if state is not None:
            state.remove(run_file)
        supervisor.stop_all(last=[CONTROL_PLANE])
        print("hfmesh: stopped", flush=True)


def _warn_if_taken(run_file: Path) -> None:
    try:
        other = RunState.read(run_file)
    except RunStateError:
        return
    print(
        f"hfmesh: the launcher with pid {other.pid} also runs; --add_replica with {run_file} "
        "now reaches this one (give each launcher its own --run_file)",
        flush=True,
    )


def _print_banner(
    args: argparse.Namespace,
    plan: MeshPlan,
    control_address: str,
    bootstrap: Path,
    metrics: dict[str, int],
) -> None:
    url = f"http://{_dial_host(args.host)}:{args.port}"
    chat = next((m.name for m in plan.models if m.task.value == "text_generation"), None)
    print(f"\nhfmesh is up: {url}", flush=True)
    print(f"  OpenAI API: {url}/openai/v1   KServe V1: {url}/v1/models   V2: {url}/v2", flush=True)
    if chat:
        print(
            f"  try: curl {url}/openai/v1/chat/completions -H 'Content-Type: application/json' "
            f'-d \'{{"model": "{chat}", "messages": [{{"role": "user", "content": '
            f'"What is the capital of France?"}}], "max_tokens": 20, "temperature": 0}}\'',
            flush=True,
        )
    print(f"  control plane (xDS): {control_address}   bootstrap: {bootstrap}", flush=True)
    if args.tls_dir:
        print(
            f"  gRPC ports speak mutual TLS: clients present a certificate of {args.tls_dir}/"
            "ca.pem's CA (docs/tls.md)",
            flush=True,
        )
    host = _dial_host(args.host)
    ports = "  ".join(f"{name} {host}:{port}" for name, port in metrics.items())
    print(f"  metrics: gateway {url}/metrics  {ports}", flush=True)
    print(
        f"  gRPC clients: GRPC_XDS_BOOTSTRAP={bootstrap} python your_client.py  "
        "# then dial xds:///<model>",
        flush=True,
    )
    first = plan.models[0].name if plan.models else "MODEL"
    print(f"  add a replica: python -m services.launcher --add_replica {first}", flush=True)
    print("  Ctrl-C stops everything.\n", flush=True)


def scale(args: argparse.Namespace) -> int:
    """`--add_replica` / `--remove_replica`: ask the running launcher, wait for the outcome."""
    action = "add_replica" if args.add_replica else "remove_replica"
    model = args.add_replica or args.remove_replica
    try:
        state = RunState.read(Path(args.run_file).expanduser())
        answer = CommandBox(state.commands).send(
            {"action": action, "model": model, "backend": args.backend}
        )
    except RunStateError as error:
        print(f"hfmesh: {error}", file=sys.stderr)
        return 1
    if not answer.get("ok"):
        print(f"hfmesh: {answer.get('message')}", file=sys.stderr)
        return 1
    if action == "remove_replica":
        print(f"hfmesh: {answer['name']} stopped", flush=True)
        return 0
    address = f"127.0.0.1:{answer['port']}"
    print(
        f"hfmesh: started {answer['name']} (pid {answer['pid']}, {address}); log: {answer['log']}",
        flush=True,
    )
    deadline = time.monotonic() + args.ready_timeout
    tls = tls_from_dir(state.tls_dir) if state.tls_dir else None
    while not grpc_serving(address, tls=tls):
        if time.monotonic() > deadline:
            print(
                f"hfmesh: {answer['name']} not serving after {args.ready_timeout:.0f}s "
                f"(it stays supervised); log: {answer['log']}",
                file=sys.stderr,
            )
            return 1
        time.sleep(0.5)
    print(
        f"hfmesh: {answer['name']} is serving; it registers with the control plane at "
        f"{state.control_plane}",
        flush=True,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.add_replica or args.remove_replica:
        return scale(args)
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
