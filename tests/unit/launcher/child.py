"""A stand-in service for the supervisor tests (starts in milliseconds).

`python -m tests.unit.launcher.child --port N [--exit_after S] [--code C] [--ignore_term]
[--spawn]` listens on N, prints `pid P` (and `worker W` for the worker it spawns into its
process group with --spawn, which ignores SIGTERM like a slow-draining worker), then exits with
C after S seconds or runs until signalled.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--exit_after", type=float, default=None)
parser.add_argument("--code", type=int, default=0)
parser.add_argument("--ignore_term", action="store_true")
parser.add_argument("--spawn", action="store_true")
args = parser.parse_args()

if args.ignore_term:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", args.port))
listener.listen()
print(f"pid {os.getpid()}", flush=True)
if args.spawn:
    ignore_term = "signal.signal(signal.SIGTERM, signal.SIG_IGN)"
    worker = subprocess.Popen(
        [sys.executable, "-c", f"import signal, time; {ignore_term}; time.sleep(600)"]
    )
    print(f"worker {worker.pid}", flush=True)
if args.exit_after is not None:
    time.sleep(args.exit_after)
    sys.exit(args.code)
while True:
    time.sleep(3600)
