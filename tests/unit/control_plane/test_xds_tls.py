"""A plain grpcio client dials `xds:///<service>` through a control plane behind mutual TLS: the
bootstrap the control plane writes names grpc's `tls` channel credentials (CA, certificate and
key files), and the client's own TLS credentials secure its calls to the endpoints."""

from __future__ import annotations

import json

import pytest

from services.common.tls import CertificateFiles, TlsConfig, aio_channel
from services.control_plane.bootstrap import write_bootstrap
from tests.helpers.tls import make_certs
from tests.unit.control_plane.helpers import WHO, Backend, mesh_file


@pytest.fixture(scope="module")
def mesh_tls(tmp_path_factory) -> TlsConfig:
    return make_certs(tmp_path_factory.mktemp("certs"))


class TlsBackend(Backend):
    def __init__(self, name: str, tls: TlsConfig) -> None:
        super().__init__(name)
        self.tls = tls

    async def start(self) -> TlsBackend:
        credentials = CertificateFiles(self.tls).credentials()
        self.port = self.server.add_secure_port("127.0.0.1:0", credentials)
        await self.server.start()
        await self.set_serving(True)
        return self


async def test_xds_client_through_a_tls_control_plane(
    tmp_path, control_plane, mesh_tls, monkeypatch
):
    backend = await TlsBackend("one", mesh_tls).start()
    try:
        plane = await control_plane(
            model_list=mesh_file(tmp_path, {"m": [backend.address]}),
            tls_cert=mesh_tls.cert,
            tls_key=mesh_tls.key,
            tls_ca=mesh_tls.ca,
        )
        address = f"127.0.0.1:{plane.runner.bound_port}"
        path = write_bootstrap(tmp_path / "bootstrap.json", address, "tls-node", tls=mesh_tls)
        creds = json.loads(path.read_text())["xds_servers"][0]["channel_creds"]
        assert [c["type"] for c in creds] == ["tls"]
        monkeypatch.setenv("GRPC_XDS_BOOTSTRAP", str(path))
        # the endpoint's certificate names 127.0.0.1, not the service "m" the client dials
        client = TlsConfig(mesh_tls.cert, mesh_tls.key, mesh_tls.ca, server_name="localhost")
        async with aio_channel("xds:///m", client) as channel:
            assert (await channel.unary_unary(WHO)(b"", timeout=10)).decode() == "one"
    finally:
        await backend.server.stop(None)
