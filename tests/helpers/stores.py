"""Real servers on loopback for model-source tests: an S3-protocol server (`moto` in server
mode, its own process, with signature checking on), a plain HTTP file server, and a TCP proxy
that cuts connections after a number of bytes (a dropped download, for resume tests)."""

from __future__ import annotations

import functools
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from services.launcher.processes import free_port


@dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str

    def client(self, secret_key: str | None = None):  # boto3's client type is dynamic
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            region_name="us-east-1",
        )

    def env(self, endpoint: str | None = None) -> dict[str, str]:
        """What a fetcher (or a launcher) is given: credentials and the endpoint, as AWS's."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL_S3": endpoint or self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def upload_folder(self, bucket: str, prefix: str, folder: Path) -> None:
        client = self.client()
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                key = f"{prefix}/{path.relative_to(folder)}" if prefix else str(path.name)
                client.upload_file(str(path), bucket, key)


@contextmanager
def s3_server() -> Iterator[S3Server]:
    """moto's server with authentication enforced: three free actions create a user, its key
    and an allow-all S3 policy; every later request must be signed with that key."""
    import boto3

    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"}
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{endpoint}/moto-api/", timeout=2)
                break
            except httpx.HTTPError:
                assert process.poll() is None, "moto server exited"
                assert time.monotonic() < deadline, "moto server did not start"
                time.sleep(0.1)
        iam = boto3.client(
            "iam",
            endpoint_url=endpoint,
            aws_access_key_id="bootstrap",
            aws_secret_access_key="bootstrap",
            region_name="us-east-1",
        )
        iam.create_user(UserName="hfmesh")
        key = iam.create_access_key(UserName="hfmesh")["AccessKey"]
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*"}]}
        policy["Statement"][0]["Resource"] = "*"
        iam.put_user_policy(UserName="hfmesh", PolicyName="s3", PolicyDocument=json.dumps(policy))
        yield S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        process.terminate()
        process.wait(10)


class CuttingProxy:
    """Forwards loopback TCP to `upstream`; the first `cuts` connections that carry more than
    `limit` bytes back are closed after `limit` bytes, as a dropped download would be."""

    def __init__(self, upstream: tuple[str, int], limit: int, cuts: int) -> None:
        self.upstream, self.limit, self.cuts_left = upstream, limit, cuts
        self.cut = 0
        self.requests: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        server = socket.create_connection(self.upstream)

        def upstream_to_client() -> None:
            sent, cutting = 0, False
            try:
                while data := server.recv(65536):
                    if not cutting and sent + len(data) > self.limit:
                        with self.lock:
                            if self.cuts_left > 0:
                                self.cuts_left -= 1
                                self.cut += 1
                                cutting = True
                    if cutting:
                        client.sendall(data[: max(self.limit - sent, 0)])
                        break
                    client.sendall(data)
                    sent += len(data)
            except OSError:
                pass
            for sock in (client, server):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

        threading.Thread(target=upstream_to_client, daemon=True).start()
        try:
            while data := client.recv(65536):
                with self.lock:
                    self.requests.append(data)
                server.sendall(data)
        except OSError:
            pass

    def ranged_gets(self) -> list[bytes]:
        with self.lock:
            return [r.split(b"\r\n\r\n")[0] for r in self.requests if b"\r\nrange:" in r.lower()]

    def close(self) -> None:
        self.listener.close()


@contextmanager
def http_server(folder: Path) -> Iterator[str]:
    """A plain HTTP file server over `folder` on loopback; yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass
