"""`python -m services.launcher`: the whole mesh as local processes, no Docker.

Builds the default models if needed (with progress), plans one tokenizer, one
engine process per model and backend, and the gateway; starts them, shows each
as it becomes ready, prints the URL to call, and stops everything on Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from services.common.logs import configure_logging
from services.launcher.plan import ProcessSpec, gateway_process, plan_model_list, plan_processes
from services.launcher.processes import ROOT, ServiceProcess, is_ready, start_service

logger = logging.getLogger("hfmesh.launcher")

DEFAULT_MODEL_LIST = ROOT / "deploy" / "models.yaml"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m services.launcher",
        description="Start the hfmesh mesh (tokenizer, engines, gateway) as local processes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--model_list", default=str(DEFAULT_MODEL_LIST), help="model list to plan and serve (YAML)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address every service binds")
    parser.add_argument("--port", type=int, default=8080, help="gateway HTTP port")
    parser.add_argument(
        "--base_port",
        type=int,
        default=50051,
        help="first gRPC port; services take consecutive ports",
    )
    parser.add_argument(
        "--models", default="", help="comma-separated subset of model names to serve"
    )
    parser.add_argument("--no_vllm", action="store_true", help="serve every model on the HF engine")
    parser.add_argument("--log_dir", default="", help="service logs (default: a new temp folder)")
    parser.add_argument(
        "--ready_timeout", type=float, default=900.0, help="seconds to wait for every service"
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
                    f"{name} exited with {proc.process.returncode}; log: "
                    f"{proc.log_path}\n{proc.log()[-3000:]}"
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging("INFO", "launcher")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="hfmesh-logs-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"hfmesh: model list {args.model_list}; logs in {log_dir}", flush=True)
    print("==> models (built once per machine)", flush=True)
    plan = plan_model_list(args.model_list, vllm_available=False if args.no_vllm else None)
    if args.models:
        wanted = {m.strip() for m in args.models.split(",") if m.strip()}
        plan.models = [m for m in plan.models if m.name in wanted]
    for entry in plan.models:
        print(
            f"  {entry.name:<28} {entry.task.value:<24} backend={'+'.join(entry.backends)}",
            flush=True,
        )
    mesh_file = log_dir / "mesh.yaml"
    specs = plan_processes(plan, host=args.host, base_port=args.base_port, mesh_file=str(mesh_file))
    mesh_file.write_text(plan.to_yaml())
    gateway = gateway_process(str(mesh_file), host=args.host, port=args.port)
    started: list[tuple[ProcessSpec, ServiceProcess]] = []
    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        print(f"==> starting {len(specs)} services (model loads take a while on CPU)", flush=True)
        for spec in specs:
            proc = start_service(
                spec.module,
                spec.args,
                name=spec.name,
                port=spec.port,
                ready="none",
                log_dir=log_dir,
            )
            started.append((spec, proc))
        _wait_all(started, args.ready_timeout)
        proc = start_service(
            gateway.module,
            gateway.args,
            name="gateway",
            port=gateway.port,
            ready="none",
            log_dir=log_dir,
        )
        started.append((gateway, proc))
        _wait_all([(gateway, proc)], 120)
        _print_banner(args, plan)
        while all(p.alive() for _, p in started):
            time.sleep(1)
        dead = [s.name for s, p in started if not p.alive()]
        print(f"hfmesh: {', '.join(dead)} exited; see {log_dir}. Stopping.", flush=True)
        return 1
    except KeyboardInterrupt:
        print("\nhfmesh: stopping ...", flush=True)
        return 0
    except (RuntimeError, TimeoutError) as error:
        print(f"hfmesh: {error}", file=sys.stderr, flush=True)
        return 1
    finally:
        for _, proc in reversed(started):
            proc.kill(signal.SIGTERM)
        for _, proc in reversed(started):
            proc.stop(grace=15)
        print("hfmesh: stopped", flush=True)


def _print_banner(args: argparse.Namespace, plan) -> None:
    url = f"http://{args.host}:{args.port}"
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
    print("  Ctrl-C stops everything.\n", flush=True)


if __name__ == "__main__":
    sys.exit(main())
