"""Metrics after a mixed run through a real mesh (gateway, tokenizer, HF engines as processes):
successes, 400s, 404s and client disconnects on every route family; every outcome invariant
holds, the GenAI histograms are filled, and the engines' running/waiting gauges return to 0."""

from __future__ import annotations

import httpx
import pytest

from services.gateway.metrics import OUTCOMES
from tests.helpers.mesh import model_entry, running_mesh
from tests.helpers.metrics import scrape, total, value, wait_until

pytestmark = pytest.mark.slow  # a multi-process mesh

CHAT = "/openai/v1/chat/completions"


@pytest.fixture(scope="module")
def mesh(model_path, tmp_path_factory):
    models = [
        model_entry("llm", model_path("tiny-llama"), "text_generation", max_model_len=256),
        model_entry("embed", model_path("all-minilm-l6-v2"), "text_embedding"),
    ]
    folder = tmp_path_factory.mktemp("mesh")
    with running_mesh(models, folder, metrics=["llm", "embed", "tokenizer"]) as started:
        yield started


def _chat(**extra) -> dict:
    return {"model": "llm", "messages": [{"role": "user", "content": "Hello"}], **extra}


def _hang_up(client: httpx.Client, url: str, body: dict) -> None:
    """Start a streamed answer, read its first event, and go away."""
    with client.stream("POST", url, json=body) as reply:
        assert reply.status_code == 200
        next(reply.iter_lines())


def _v2(texts: list[str]) -> dict:
    return {
        "inputs": [{"name": "input-0", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]
    }


def test_outcomes_add_up_and_engines_drain(mesh):
    expected = {  # family → outcome → count
        "openai": {"success": 3, "client_error": 3, "cancelled": 1},
        "v2": {"success": 1, "client_error": 2},
        "v1": {"success": 1, "client_error": 2},
        "other": {"client_error": 1},
    }
    with httpx.Client(base_url=mesh["gateway"].url, timeout=120) as client:
        assert client.post(CHAT, json=_chat(max_tokens=4)).status_code == 200
        streamed = client.post(CHAT, json=_chat(max_tokens=4, stream=True))
        assert streamed.status_code == 200 and "[DONE]" in streamed.text
        embedded = client.post("/openai/v1/embeddings", json={"model": "embed", "input": "hi"})
        assert embedded.status_code == 200
        assert client.post(CHAT, json=_chat(max_tokens=9999)).status_code == 400
        assert client.post(CHAT, json={**_chat(), "model": "nope"}).status_code == 404
        assert client.post(CHAT, json={"messages": "not a list"}).status_code == 400
        _hang_up(client, CHAT, _chat(max_tokens=200, min_tokens=200, stream=True))

        assert client.post("/v2/models/embed/infer", json=_v2(["hi"])).status_code == 200
        assert client.post("/v2/models/nope/infer", json=_v2(["hi"])).status_code == 404
        assert client.post("/v2/models/embed/infer", json={"inputs": 3}).status_code == 400
        assert (
            client.post("/v1/models/embed:predict", json={"instances": ["hi"]}).status_code == 200
        )
        assert client.post("/v1/models/nope:predict", json={"instances": ["hi"]}).status_code == 404
        assert client.post("/v1/models/embed:predict", json={"instances": 3}).status_code == 400
        assert client.get("/no/such/route").status_code == 404

    url = f"{mesh['gateway'].url}/metrics"
    # the scrape itself is in flight
    assert wait_until(lambda: total(scrape(url), "hfmesh_gateway_requests_in_flight") <= 1, 60)
    samples = scrape(url)
    for family, outcomes in expected.items():
        received = value(samples, "hfmesh_gateway_received_total", family=family)
        counted = {
            o: value(samples, "hfmesh_gateway_outcomes_total", family=family, outcome=o)
            for o in OUTCOMES
        }
        assert received == sum(counted.values()), (family, received, counted)
        assert counted == {o: outcomes.get(o, 0) for o in OUTCOMES}, family

    chat = {"gen_ai_operation_name": "chat", "gen_ai_request_model": "llm"}
    duration = "gen_ai_server_request_duration_seconds_count"
    assert value(samples, duration, **chat, error_type="") == 2
    assert value(samples, duration, **chat, error_type="400") == 1
    assert value(samples, duration, **chat, error_type="cancelled") == 1
    assert value(samples, "gen_ai_server_time_to_first_token_seconds_count", **chat) == 2
    assert value(samples, "gen_ai_server_time_per_output_token_seconds_count", **chat) >= 1
    usage = "gen_ai_client_token_usage_bucket"
    assert value(samples, usage, **chat, gen_ai_token_type="output", le="1.0") == 0
    assert value(samples, usage, **chat, gen_ai_token_type="output", le="4.0") == 2
    embeddings = {"gen_ai_operation_name": "embeddings", "gen_ai_request_model": "embed"}
    assert (
        value(samples, "gen_ai_client_token_usage_count", **embeddings, gen_ai_token_type="input")
        == 1
    )
    assert value(samples, "hfmesh_gateway_model_requests", model="llm", state="running") == 0

    tokenizer = scrape(f"http://127.0.0.1:{mesh['tokenizer'].extra_ports['metrics']}/metrics")
    requests = "hfmesh_tokenizer_requests_total"
    # two answered, one hung up, one rejected for its length after rendering
    assert value(tokenizer, requests, operation="render", code="OK") == 4
    latency = "hfmesh_tokenizer_request_duration_seconds_count"
    assert value(tokenizer, latency, operation="render") == 4
    # the three encoder requests' text went straight to the HF engine (--encoder_route auto)
    assert value(tokenizer, requests, operation="preprocess", code="OK") == 0
    assert value(tokenizer, latency, operation="postprocess") == 0

    for model in ("llm", "embed"):
        engine = mesh.engine(model)
        engine_url = f"http://127.0.0.1:{engine.extra_ports['metrics']}/metrics"

        def drained(url: str = engine_url) -> bool:
            now = scrape(url)
            return (
                total(now, "vllm:num_requests_running") == 0
                and total(now, "vllm:num_requests_waiting") == 0
            )

        assert wait_until(drained, 60), scrape(engine_url)
    llm = scrape(f"http://127.0.0.1:{mesh.engine('llm').extra_ports['metrics']}/metrics")
    assert total(llm, "vllm:kv_cache_usage_perc") == 0
    assert total(llm, "vllm:e2e_request_latency_seconds_count") == 2  # the finished ones
    assert total(llm, "vllm:inter_token_latency_seconds_count") >= 3
    assert total(llm, "vllm:generation_tokens_total") >= 8
