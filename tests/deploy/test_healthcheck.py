"""`python -m services.common.healthcheck`, the probe every image and compose service runs."""

from __future__ import annotations

import asyncio
import http.server
import subprocess
import sys
import threading

from services.common import healthcheck
from services.common.server import GrpcServiceRunner
from services.launcher.processes import free_port


async def test_grpc_probe_follows_health():
    runner = GrpcServiceRunner(host="127.0.0.1", port=0)
    address = f"127.0.0.1:{await runner.start()}"
    try:
        # the probe blocks: run it off the loop that serves
        assert not await asyncio.to_thread(healthcheck.grpc_serving, address, 2.0)
        await runner.set_serving(True)
        assert await asyncio.to_thread(healthcheck.grpc_serving, address, 2.0)
    finally:
        await runner.server.stop(0)


def test_exit_status_when_nothing_listens():
    port = str(free_port())
    for kind in ("grpc", "http"):
        result = subprocess.run(
            [sys.executable, "-m", "services.common.healthcheck", kind, port, "--timeout", "1"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 1
        assert "not ready" in result.stderr


def test_http_probe():
    class Ready(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the stdlib's name)
            self.send_response(200 if self.path == "/v2/health/ready" else 503)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ready)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        assert healthcheck.http_ok(url + "/v2/health/ready", 2.0)
        assert not healthcheck.http_ok(url + "/v2/health/live", 2.0)
    finally:
        server.shutdown()
