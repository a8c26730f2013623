"""A mesh whose model list names remote sources, started by the launcher as a user starts it:
a tiny Llama in `s3://` (a real S3-protocol server on loopback, moto) and a tiny sentiment
model as a `.tar.gz` over `http://` (a local file server). The launcher fetches both (with
progress) before starting their services, and they answer real clients (the `openai` SDK, V1
REST). Started again with the store unreachable, it fetches nothing and serves the same."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from services.launcher.processes import free_port
from tests.helpers.launcher import LauncherRun, launched
from tests.helpers.mesh import free_port_run
from tests.helpers.stores import http_server, s3_server

pytestmark = pytest.mark.slow  # a multi-process mesh, twice

CHAT, SENTIMENT = "tiny-chat", "tiny-sentiment"


class Launcher(LauncherRun):
    def __init__(self, tmp: Path, model_list: Path) -> None:
        tmp.mkdir()
        self.port = free_port()
        args = ["--model_list", str(model_list), "--no_vllm", "--port", str(self.port)]
        args += ["--base_port", str(free_port_run(3)), "--control_plane_port", str(free_port())]
        super().__init__(tmp, [*args, "--log_dir", str(tmp / "logs"), "--ready_timeout", "240"])


def _answers(port: int) -> None:
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/openai/v1", api_key="unused")
    completion = client.completions.create(model=CHAT, prompt="Hello", max_tokens=4, temperature=0)
    assert completion.choices[0].finish_reason in ("length", "stop")
    assert completion.usage is not None and completion.usage.completion_tokens >= 1
    reply = httpx.post(
        f"http://127.0.0.1:{port}/v1/models/{SENTIMENT}:predict",
        json={"instances": ["a good film", "a bad film"]},
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    assert len(reply.json()["predictions"]) == 2


def test_a_mesh_serves_models_from_s3_and_an_https_archive(model_path, tmp_path, monkeypatch):
    chat, sentiment = Path(model_path("tiny-llama")), Path(model_path("tiny-bert-sentiment"))
    served = tmp_path / "served"
    served.mkdir()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(sentiment, arcname="sentiment", filter=lambda m: None if "/." in m.name else m)
    (served / "sentiment.tar.gz").write_bytes(buffer.getvalue())
    monkeypatch.setenv("HFMESH_CACHE_DIR", str(tmp_path / "cache"))
    with s3_server() as s3, http_server(served) as base:
        s3.client().create_bucket(Bucket="models")
        s3.upload_folder("models", "chat/tiny-llama", chat)
        for key, value in s3.env().items():
            monkeypatch.setenv(key, value)
        model_list = tmp_path / "models.yaml"
        models = [
            {"name": CHAT, "source": "s3://models/chat/tiny-llama", "backend": "huggingface"},
            {"name": SENTIMENT, "source": f"{base}/sentiment.tar.gz"},
        ]
        model_list.write_text(yaml.safe_dump({"models": models}))

        first = Launcher(tmp_path / "first", model_list)
        with launched(first, timeout=300):
            _answers(first.port)
        text = first.text()
        assert "s3://models/chat/tiny-llama: fetching into" in text
        assert f"{base}/sentiment.tar.gz: fetching into" in text
        fetched = sorted(p.name for p in (tmp_path / "cache" / "sources").iterdir())
        assert [name.split("--")[0] for name in fetched if not name.startswith(".")] == [
            "https",
            "s3",
        ]

    # Both stores gone: a second start fetches nothing and serves the same models.
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")
    second = Launcher(tmp_path / "second", model_list)
    with launched(second, timeout=300):
        _answers(second.port)
    text = second.text()
    assert "fetching into" not in text
    assert text.count("(fetched before)") == 2, text[-3000:]


@pytest.mark.vllm
def test_a_lora_adapter_from_an_https_archive_is_served_by_vllm(model_path, tmp_path, monkeypatch):
    """A model in `s3://` with an adapter as a `.tar.gz` over `http://`: planning fetches both,
    the vLLM engine starts with the adapter, and the adapter answers under its own name."""
    pytest.importorskip("vllm")
    import tritonclient.grpc as tgrpc

    from services.launcher.plan import plan_models, plan_processes
    from services.launcher.processes import start_service
    from tests.helpers.triton import llm_inputs

    served = tmp_path / "served"
    served.mkdir()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(Path(model_path("tiny-llama-lora")), arcname="lora")
    (served / "lora.tar.gz").write_bytes(buffer.getvalue())
    monkeypatch.setenv("HFMESH_CACHE_DIR", str(tmp_path / "cache"))
    with s3_server() as s3, http_server(served) as base:
        s3.client().create_bucket(Bucket="models")
        s3.upload_folder("models", "tiny-llama", Path(model_path("tiny-llama")))
        for key, value in s3.env().items():
            monkeypatch.setenv(key, value)
        raw = {
            "name": "tiny",
            "source": "s3://models/tiny-llama",
            "backend": "vllm",
            "max_model_len": 512,
            "engine_args": ["--max-lora-rank", "8"],
            "adapters": [{"name": "tiny-lora", "source": f"{base}/lora.tar.gz"}],
        }
        plan = plan_models([raw])
    engine = next(
        spec
        for spec in plan_processes(plan, host="127.0.0.1", base_port=free_port(), mesh_file="-")
        if spec.backend == "vllm"
    )
    assert any(arg.startswith("tiny-lora=") for arg in engine.args)
    service = start_service(
        engine.module,
        [*engine.args, "--host", "127.0.0.1"],
        name="engine_vllm",
        env={"VLLM_CPU_KVCACHE_SPACE": "1"},
        ready_timeout=300,
    )
    try:
        with tgrpc.InferenceServerClient(service.address) as client:
            greedy = {"max_tokens": 12, "temperature": 0, "ignore_eos": True}
            ids = {
                name: client.infer(name, llm_inputs("Hello there", greedy))
                .as_numpy("output_ids")
                .tolist()
                for name in ("tiny", "tiny-lora")
            }
    finally:
        service.stop()
    assert ids["tiny"] != ids["tiny-lora"]
