"""TLS and mutual TLS on a gRPC port (`services.common.tls` in `GrpcServiceRunner`): who gets in,
and certificate files replaced under a running server."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path

import pytest

from services.common.server import GrpcServiceRunner
from services.common.settings import parse_settings
from services.common.tls import TlsConfig
from services.control_plane.settings import ControlPlaneSettings
from services.gateway.settings import GatewaySettings
from services.launcher.processes import tls_env, tls_from_dir
from services.tokenizer.settings import TokenizerSettings
from tests.helpers.tls import health_answer, make_certs, strangers


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, TlsConfig]:
    """Two independent development sets (two CAs)."""
    base = tmp_path_factory.mktemp("certs")
    return {name: make_certs(base / name) for name in ("mesh", "other")}


async def _serving(tls: TlsConfig | None) -> tuple[GrpcServiceRunner, str]:
    runner = GrpcServiceRunner(host="127.0.0.1", port=0, tls=tls)
    port = await runner.start()
    await runner.set_serving(True)
    return runner, f"127.0.0.1:{port}"


async def _answer(address: str, tls: TlsConfig | None) -> str:
    return await asyncio.to_thread(health_answer, address, tls)


async def test_mutual_tls_lets_in_only_mesh_members(certs):
    mesh, other = certs["mesh"], certs["other"]
    runner, address = await _serving(mesh)
    try:
        assert await _answer(address, mesh) == "SERVING"
        for who, client in strangers(mesh, other).items():
            assert await _answer(address, client) == "UNAVAILABLE", who
        # a client that does not trust the server's CA does not talk to it either
        assert await _answer(address, other) == "UNAVAILABLE"
    finally:
        await runner.server.stop(0)


async def test_tls_without_a_ca_needs_no_client_certificate(certs):
    mesh = certs["mesh"]
    runner, address = await _serving(TlsConfig(mesh.cert, mesh.key))
    try:
        assert await _answer(address, TlsConfig(ca=mesh.ca)) == "SERVING"
        assert await _answer(address, None) == "UNAVAILABLE"  # plain text is not TLS
    finally:
        await runner.server.stop(0)


async def test_plain_default_is_unchanged(certs):
    runner, address = await _serving(None)
    try:
        assert runner.certificates is None
        assert await _answer(address, None) == "SERVING"
        assert await _answer(address, certs["mesh"]) == "UNAVAILABLE"
    finally:
        await runner.server.stop(0)


def _install(source: TlsConfig, folder: Path) -> TlsConfig:
    """Copy a set into `folder` under fixed names (replacing each file whole)."""
    folder.mkdir(exist_ok=True)
    paths = {}
    for name, path in (
        ("mesh.pem", source.cert),
        ("mesh-key.pem", source.key),
        ("ca.pem", source.ca),
    ):
        assert path is not None
        partial = folder / f".{name}.new"
        shutil.copyfile(path, partial)
        partial.replace(folder / name)
        paths[name] = str(folder / name)
    return TlsConfig(paths["mesh.pem"], paths["mesh-key.pem"], paths["ca.pem"])


async def test_replaced_certificates_are_used_without_a_restart(certs, tmp_path):
    mesh, other = certs["mesh"], certs["other"]
    served = _install(mesh, tmp_path / "served")
    runner, address = await _serving(served)
    try:
        assert await _answer(address, mesh) == "SERVING"
        assert await _answer(address, other) == "UNAVAILABLE"
        _install(other, tmp_path / "served")  # a new CA, certificate and key in place
        assert await _answer(address, other) == "SERVING"
        assert await _answer(address, mesh) == "UNAVAILABLE"
        assert runner.certificates is not None and runner.certificates.loads == 2
    finally:
        await runner.server.stop(0)


async def test_a_broken_replacement_keeps_the_last_good_certificate(certs, tmp_path):
    mesh, other = certs["mesh"], certs["other"]
    served = _install(mesh, tmp_path / "served")
    runner, address = await _serving(served)
    try:
        assert served.key is not None and other.key is not None
        shutil.copyfile(other.key, served.key)  # a key that does not match the certificate
        assert await _answer(address, mesh) == "SERVING"
        assert runner.certificates is not None and runner.certificates.loads == 1
    finally:
        await runner.server.stop(0)


def _parse(model, argv, env=None):
    return parse_settings(model, argv, prog="test", description="test", env=env or {})[0]


def test_settings_from_flags_and_environment(certs):
    mesh = certs["mesh"]
    flags = ["--tls_cert", mesh.cert, "--tls_key", mesh.key, "--tls_ca", mesh.ca]
    from_flags = _parse(ControlPlaneSettings, flags)
    env = {"HFMESH_TLS_CERT": mesh.cert, "HFMESH_TLS_KEY": mesh.key, "HFMESH_TLS_CA": mesh.ca}
    from_env = _parse(TokenizerSettings, [], env)
    assert from_flags.tls == from_env.tls == mesh
    assert _parse(TokenizerSettings, []).tls is None  # plain by default
    # the gateway only calls gRPC: trusting a CA without a certificate of its own is TLS
    assert _parse(GatewaySettings, ["--tls_ca", str(mesh.ca)]).tls == TlsConfig(ca=mesh.ca)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tls_cert", "{cert}"], "--tls_cert and --tls_key go together"),
        (["--tls_ca", "{ca}"], "--tls_ca on a gRPC server needs --tls_cert"),
        (["--tls_cert", "/nonexistent.pem", "--tls_key", "{key}"], "/nonexistent.pem: no such"),
    ],
)
def test_bad_settings_are_refused_naming_the_flag(certs, capsys, argv, message):
    mesh = certs["mesh"]
    argv = [a.format(cert=mesh.cert, key=mesh.key, ca=mesh.ca) for a in argv]
    with pytest.raises(SystemExit):
        _parse(TokenizerSettings, argv)
    assert message in capsys.readouterr().err


def test_every_tls_flag_has_a_help_line(capsys):
    with pytest.raises(SystemExit):
        _parse(ControlPlaneSettings, ["--help"])
    out = capsys.readouterr().out
    for flag in ("--tls_cert", "--tls_key", "--tls_ca", "--tls_server_name"):
        assert flag in out
    assert "REQUIRES client certificates" in " ".join(out.split())


async def _probe(port: int, env: dict[str, str]) -> int:
    probe = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.common.healthcheck",
        "grpc",
        str(port),
        "--timeout",
        "5",
        env={**os.environ, **env},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await asyncio.wait_for(probe.wait(), 60)


async def test_the_probe_reads_the_services_tls_variables(certs):
    mesh = certs["mesh"]
    runner, _ = await _serving(mesh)
    try:
        assert runner.bound_port is not None
        assert await _probe(runner.bound_port, tls_env(mesh)) == 0
        assert await _probe(runner.bound_port, {}) == 1  # a plain probe is refused
    finally:
        await runner.server.stop(0)


def test_a_tls_folder_without_its_files_is_refused_saying_how_to_make_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="make_dev_certs.sh"):
        tls_from_dir(tmp_path)
