"""Issue 17's TLS acceptance with real processes: `python -m services.launcher --tls_dir DIR`
(certificates from `scripts/make_dev_certs.sh DIR`) serving tiny-llama and all-MiniLM-L6-v2 on
HF engines, with its control plane. Every gRPC port of the mesh (control plane, tokenizer,
engines) refuses a plain client, a TLS client without a certificate and one whose certificate
another CA signed; the mesh itself works end to end over mutual TLS: the `openai` SDK against
the gateway (chat, streaming, embeddings), and `tritonclient.grpc` with the mesh's certificate
directly against an engine, as Triton users pass certificates; the control plane's health
checks and an EDS subscription over TLS keep every replica published. The vLLM engine's gRPC
front is checked on its own (marked `vllm`).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import openai
import pytest
import tritonclient.grpc as tgrpc
import yaml
from tritonclient.utils import InferenceServerException

from services.common.tls import TlsConfig
from services.gateway.discovery import Discovery, DiscoveryError
from services.launcher.processes import free_port, start_service
from tests.helpers.launcher import LauncherRun, launched
from tests.helpers.mesh import free_port_run
from tests.helpers.tls import health_answer, make_certs, strangers
from tests.helpers.triton import llm_inputs

pytestmark = pytest.mark.slow  # a launcher with five processes; a vLLM engine

CHAT, EMBED = "chat", "embed"


class TlsLauncher(LauncherRun):
    def __init__(self, tmp: Path, certs: Path) -> None:
        self.logs = tmp / "logs"
        self.port = free_port()
        self.control_plane_port = free_port()
        models = [
            {"name": CHAT, "model": "tiny-llama", "backend": "huggingface"},
            {"name": EMBED, "model": "all-minilm-l6-v2"},
        ]
        model_list = tmp / "list.yaml"
        model_list.write_text(yaml.safe_dump({"models": models}))
        args = ["--model_list", str(model_list), "--no_vllm", "--port", str(self.port)]
        args += ["--base_port", str(free_port_run(3))]
        args += ["--control_plane_port", str(self.control_plane_port)]
        args += ["--log_dir", str(self.logs), "--ready_timeout", "240", "--tls_dir", str(certs)]
        super().__init__(tmp, args)
        self.url = f"http://127.0.0.1:{self.port}"

    def grpc_ports(self) -> dict[str, str]:
        """Every gRPC address of the running mesh, by what listens there."""
        planned = yaml.safe_load((self.logs / "mesh.yaml").read_text())
        addresses = {"control plane": f"127.0.0.1:{self.control_plane_port}"}
        for entry in planned["models"]:
            for kind, listed in entry["endpoints"].items():
                for address in listed:
                    name = "tokenizer" if kind == "tokenizer" else f"{kind} {entry['name']}"
                    addresses[name] = address
        return addresses


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, TlsConfig]:
    base = tmp_path_factory.mktemp("certs")
    return {name: make_certs(base / name) for name in ("mesh", "other")}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory, certs):
    assert certs["mesh"].cert is not None
    folder = Path(certs["mesh"].cert).parent
    with launched(TlsLauncher(tmp_path_factory.mktemp("tls"), folder), timeout=360) as run:
        yield run


def test_every_grpc_port_refuses_clients_without_a_mesh_certificate(mesh, certs):
    ports = mesh.grpc_ports()
    assert {"control plane", "tokenizer", f"huggingface {CHAT}", f"huggingface {EMBED}"} <= set(
        ports
    )
    for name, address in ports.items():
        assert health_answer(address, certs["mesh"]) == "SERVING", name
        for who, client in strangers(certs["mesh"], certs["other"]).items():
            assert health_answer(address, client) == "UNAVAILABLE", f"{name} let in {who}"
    assert "gRPC ports speak mutual TLS" in mesh.text()


def test_openai_sdk_through_the_gateway(mesh):
    client = openai.OpenAI(base_url=f"{mesh.url}/openai/v1", api_key="unused", timeout=120)
    reply = client.chat.completions.create(
        model=CHAT,
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=8,
        temperature=0,
    )
    assert reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.completion_tokens > 0
    stream = client.completions.create(
        model=CHAT, prompt="The quick brown fox", max_tokens=8, temperature=0, stream=True
    )
    assert "".join(chunk.choices[0].text for chunk in stream if chunk.choices)
    vectors = client.embeddings.create(model=EMBED, input=["A man is eating food.", "Paris"])
    norms = [np.linalg.norm(item.embedding) for item in vectors.data]
    assert len(norms) == 2 and all(abs(n - 1) < 1e-3 for n in norms)


def _triton(address: str, tls: TlsConfig) -> tgrpc.InferenceServerClient:
    """A Triton user's client with certificates (file paths, as tritonclient takes them)."""
    return tgrpc.InferenceServerClient(
        address,
        ssl=True,
        root_certificates=tls.ca,
        private_key=tls.key,
        certificate_chain=tls.cert,
    )


def test_tritonclient_with_certificates_against_an_engine(mesh, certs):
    address = mesh.grpc_ports()[f"huggingface {CHAT}"]
    sampling = {"max_tokens": 6, "temperature": 0}
    with _triton(address, certs["mesh"]) as client:
        assert client.is_server_live() and client.is_model_ready(CHAT)
        result = client.infer(CHAT, llm_inputs("The quick brown fox", sampling))
        assert result.as_numpy("text_output")[0]
        assert client.get_model_metadata(CHAT, as_json=True)["name"] == CHAT
    stranger = TlsConfig(ca=certs["mesh"].ca)  # trusts the engine, shows no certificate
    with _triton(address, stranger) as client, pytest.raises(InferenceServerException):
        client.is_server_live(client_timeout=10)


async def test_control_plane_health_checks_and_discovery_speak_tls(mesh, certs):
    """The control plane's health checks of every replica pass over mutual TLS (a failing
    check withdraws an endpoint within `health_failures` seconds): watched for longer than
    that, through an EDS subscription over TLS as the gateway's."""
    ports = mesh.grpc_ports()
    control = ports.pop("control plane")
    services = [f"{m}.{kind}" for m in (CHAT, EMBED) for kind in ("tokenizer", "huggingface")]
    discovery = Discovery(control, services, node_id="tls-test", tls=certs["mesh"])
    await discovery.start(connect_timeout=30)
    try:
        deadline = time.monotonic() + 6.0  # twice the default withdrawal time
        while time.monotonic() < deadline:
            published = {e.address for eps in discovery.endpoints.values() for e in eps}
            assert published == set(ports.values())
            await asyncio.sleep(0.5)
    finally:
        await discovery.close()
    with pytest.raises(DiscoveryError):  # and without a certificate, nothing
        stranger = Discovery(control, services, tls=TlsConfig(ca=certs["mesh"].ca))
        await stranger.start(connect_timeout=3)


@pytest.mark.vllm
@pytest.mark.heavy
def test_vllm_engine_serves_mutual_tls(certs, model_path):
    """The vLLM engine's gRPC front behind mutual TLS: strangers refused, a Triton client with
    the mesh's certificate served."""
    args = ["--model_dir", model_path("tiny-llama"), "--model_name", CHAT, "--host", "127.0.0.1"]
    args += ["--max_model_len", "256"]
    engine = start_service(
        "services.engine_vllm",
        args,
        name="engine_vllm_tls",
        env={"VLLM_CPU_KVCACHE_SPACE": "1"},
        ready_timeout=300,
        tls=certs["mesh"],
    )
    try:
        for who, client in strangers(certs["mesh"], certs["other"]).items():
            assert health_answer(engine.address, client) == "UNAVAILABLE", who
        with _triton(engine.address, certs["mesh"]) as triton:
            sampling = {"max_tokens": 6, "temperature": 0}
            result = triton.infer(CHAT, llm_inputs("The quick brown fox", sampling))
            assert result.as_numpy("text_output")[0]
        assert "(mutual TLS)" in engine.log()
    finally:
        engine.stop()
