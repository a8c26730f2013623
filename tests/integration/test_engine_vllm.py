"""The vLLM engine as a real process on tiny-llama (float32, vllm-cpu), called as a Triton
vLLM-backend user would.

One engine for the module: LoRA enabled, serving the base model and the
tiny-llama-lora adapter. Clients are `tritonclient.grpc` (streamed
`text_input` + `sampling_parameters` JSON), our `input_ids` extension, and the
repository API for adapters. Greedy float32 token ids are compared with
transformers `generate` in this process. The last test kills vLLM's engine core
and checks that the service stops serving and exits non-zero.
"""

from __future__ import annotations

import json
import queue
import time

import grpc
import psutil
import pytest
import tritonclient.grpc as tgrpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from services.launcher.processes import free_port, grpc_serving, start_service
from tests.helpers.metrics import scrape, total, wait_until
from tests.helpers.triton import llm_inputs

pytest.importorskip("vllm")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

BASE, ADAPTER = "tiny", "tiny-lora"
PROMPTS = ["The quick brown fox", "Once upon a time there was", "hello world, this is"]
ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}


@pytest.fixture(scope="module")
def engine(model_path):
    metrics_port = free_port()
    args = [
        "--model_dir",
        model_path("tiny-llama"),
        "--model_name",
        BASE,
        "--host",
        "127.0.0.1",
        "--metrics_port",
        str(metrics_port),
        "--max_model_len",
        "512",
        "--lora-modules",
        f"{ADAPTER}={model_path('tiny-llama-lora')}",
        "--max-lora-rank",
        "8",
    ]
    service = start_service(
        "services.engine_vllm", args, name="engine_vllm", env=ENV, ready_timeout=300
    )
    service.extra_ports["metrics"] = metrics_port
    yield service
    service.stop()


@pytest.fixture(scope="module")
def client(engine):
    with tgrpc.InferenceServerClient(engine.address) as c:
        yield c


@pytest.fixture(scope="module")
def hf(model_path):
    import torch
    import transformers

    path = model_path("tiny-llama")
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, transformers.AutoTokenizer.from_pretrained(path)


def stream_requests(
    client, requests: list[tuple[str, list]], timeout: float = 60.0
) -> dict[str, list]:
    """Send several requests on one stream; results (or the error) per request id, in arrival
    order."""
    replies: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: replies.put((result, error)))
    got: dict[str, list] = {rid: [] for rid, _ in requests}
    done: set[str] = set()
    try:
        for rid, inputs in requests:
            client.async_stream_infer(rid.partition("/")[0], inputs, request_id=rid)
        deadline = time.monotonic() + timeout
        while len(done) < len(requests):
            result, error = replies.get(timeout=max(0.1, deadline - time.monotonic()))
            if error is not None:
                rid = next(
                    r for r in got if r not in done
                )  # stream errors carry no id: the oldest open one
                got[rid].append(error)
                done.add(rid)
                continue
            rid = result.get_response().id
            got[rid].append(result)
            reason = result.as_numpy("finish_reason")
            if reason is not None and reason[0]:
                done.add(rid)
    finally:
        client.stop_stream()
    return got


def metrics(engine) -> dict[str, float]:
    return scrape(f"http://127.0.0.1:{engine.extra_ports['metrics']}/metrics")


def metric(engine, name: str) -> float:
    return total(metrics(engine), name)


# -- metadata ----------------------------------------------------------------


def test_base_and_adapter_are_served_models(client):
    index = {m.name: m.state for m in client.get_model_repository_index().models}
    assert index == {BASE: "READY", ADAPTER: "READY"}
    assert client.is_model_ready(BASE) and client.is_model_ready(ADAPTER)
    meta = client.get_model_metadata(BASE)
    assert meta.platform == "vllm"
    assert {"text_input", "input_ids", "sampling_parameters", "stream"} <= {
        t.name for t in meta.inputs
    }
    assert {"text_output", "output_ids", "finish_reason"} <= {t.name for t in meta.outputs}


# -- Triton vLLM-backend generation ------------------------------------------


def test_streamed_text_input_gives_deltas_that_add_up_to_the_unary_answer(client):
    params = {"max_tokens": 12, "temperature": 0, "ignore_eos": True}
    inputs = llm_inputs(
        PROMPTS[0], params, stream=True, exclude_input_in_output=True, return_finish_reason=True
    )
    [(rid, results)] = stream_requests(client, [(f"{BASE}/s1", inputs)]).items()
    assert all(not isinstance(r, Exception) for r in results)
    assert len(results) == 12  # one response per token
    text = "".join(r.as_numpy("text_output")[0].decode() for r in results)
    ids = [int(t) for r in results for t in r.as_numpy("output_ids")]
    last = results[-1]
    assert last.as_numpy("finish_reason")[0] == b"length"
    assert int(last.as_numpy("num_output_tokens")[0]) == 12
    whole = client.infer(BASE, llm_inputs(PROMPTS[0], params, exclude_input_in_output=True))
    assert whole.as_numpy("text_output")[0].decode() == text
    assert whole.as_numpy("output_ids").tolist() == ids


def test_unary_answer_includes_the_prompt_unless_excluded(client):
    params = {"max_tokens": 5, "temperature": 0}
    with_prompt = (
        client.infer(BASE, llm_inputs(PROMPTS[1], params)).as_numpy("text_output")[0].decode()
    )
    without = client.infer(BASE, llm_inputs(PROMPTS[1], params, exclude_input_in_output=True))
    without = without.as_numpy("text_output")[0].decode()
    assert with_prompt == PROMPTS[1] + without


def test_concurrent_streams_are_batched_and_each_is_complete(client):
    params = {"max_tokens": 20, "temperature": 0, "ignore_eos": True}
    requests = [
        (f"{BASE}/c{i}", llm_inputs(p, params, stream=True)) for i, p in enumerate(PROMPTS * 2)
    ]
    got = stream_requests(client, requests)
    for rid, results in got.items():
        assert sum(len(r.as_numpy("output_ids")) for r in results) == 20, rid
    # Same prompt, same greedy answer, whatever it was batched with.
    first = [int(t) for r in got[f"{BASE}/c0"] for t in r.as_numpy("output_ids")]
    again = [int(t) for r in got[f"{BASE}/c3"] for t in r.as_numpy("output_ids")]
    assert first == again


def test_greedy_float32_matches_transformers_token_for_token(client, hf):
    import torch

    model, tokenizer = hf
    for prompt in PROMPTS:
        ids = tokenizer(prompt)["input_ids"]
        with torch.inference_mode():
            expected = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)[
                0, len(ids) :
            ].tolist()
        reply = client.infer(BASE, llm_inputs(ids, {"max_tokens": 24, "temperature": 0}))
        assert reply.as_numpy("output_ids").tolist() == expected, prompt
        assert int(reply.as_numpy("num_input_tokens")[0]) == len(ids)


def test_n_seed_logprobs_and_stop(client):
    params = {
        "max_tokens": 6,
        "temperature": 1.0,
        "seed": 7,
        "n": 2,
        "logprobs": 2,
        "ignore_eos": True,
    }
    first = client.infer(BASE, llm_inputs(PROMPTS[2], params))
    again = client.infer(BASE, llm_inputs(PROMPTS[2], params))
    assert first.as_numpy("output_ids").shape == (2, 6)
    assert first.as_numpy("output_ids").tolist() == again.as_numpy("output_ids").tolist()  # seeded

    reply = client.infer(
        BASE,
        llm_inputs(
            PROMPTS[2], {"max_tokens": 4, "temperature": 0, "logprobs": 3}, return_logprobs=True
        ),
    )
    entries = json.loads(reply.as_numpy("logprobs")[0])
    assert [e["token_id"] for e in entries] == reply.as_numpy("output_ids").tolist()
    for entry in entries:
        assert len(entry["top_logprobs"]) == 3
        assert entry["logprob"] == pytest.approx(
            max(entry["top_logprobs"].values())
        )  # greedy: the top token

    greedy = client.infer(
        BASE,
        llm_inputs(
            PROMPTS[0],
            {"max_tokens": 16, "temperature": 0, "ignore_eos": True},
            exclude_input_in_output=True,
        ),
    )
    greedy = greedy.as_numpy("text_output")[0].decode()
    stop = greedy[len(greedy) // 2 :][:3]
    stopped = client.infer(
        BASE,
        llm_inputs(
            PROMPTS[0],
            {"max_tokens": 16, "temperature": 0, "stop": [stop]},
            exclude_input_in_output=True,
            return_finish_reason=True,
        ),
    )
    text = stopped.as_numpy("text_output")[0].decode()
    assert stop not in text and greedy.startswith(text)
    assert stopped.as_numpy("finish_reason")[0] == b"stop"


def test_structured_outputs_reach_vllm(client):
    choice = client.infer(
        BASE,
        llm_inputs(
            PROMPTS[0],
            {"max_tokens": 8, "temperature": 0, "structured_outputs": {"choice": ["yes", "no"]}},
            exclude_input_in_output=True,
        ),
    )
    assert choice.as_numpy("text_output")[0].decode() in ("yes", "no")
    digits = client.infer(
        BASE,
        llm_inputs(
            PROMPTS[0],
            {"max_tokens": 8, "temperature": 0, "guided_regex": "[0-9]{3}"},
            exclude_input_in_output=True,
        ),
    )
    text = digits.as_numpy("text_output")[0].decode()
    assert len(text) == 3 and text.isdigit()


@pytest.mark.parametrize(
    "params, named",
    [
        ({"temperature": -1}, "temperature"),
        ({"top_k": -5}, "top_k"),
        ({"max_tokens": 4, "logit_bias": {"99999": 5}}, "logit_bias"),
        ({"max_tokens": 4, "frobnicate": 1}, "frobnicate"),
        ({"max_tokens": 4, "n": "two"}, "'n'"),
        ({"max_tokens": 600}, "context length of 512"),
        ({"max_tokens": 4, "structured_outputs": {"json": "{not json"}}, "JSON"),
        ({"max_tokens": 4, "guided_regex": "(["}, "regex"),
    ],
)
def test_invalid_parameters_are_invalid_argument_and_the_engine_keeps_serving(
    client, params, named
):
    with pytest.raises(InferenceServerException) as raised:
        client.infer(BASE, llm_inputs(PROMPTS[0], params))
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert named in raised.value.message()
    streamed = stream_requests(
        client, [(f"{BASE}/bad", llm_inputs(PROMPTS[0], params, stream=True))]
    )
    [error] = streamed[f"{BASE}/bad"]
    assert named in str(error)
    ok = client.infer(BASE, llm_inputs(PROMPTS[0], {"max_tokens": 2}))
    assert len(ok.as_numpy("output_ids")) == 2


def test_out_of_vocabulary_input_ids_are_rejected(client):
    with pytest.raises(InferenceServerException) as raised:
        client.infer(BASE, llm_inputs([1, 5, 999_999], {"max_tokens": 2}))
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "vocabulary" in raised.value.message()


# -- LoRA --------------------------------------------------------------------


def _greedy_ids(client, model: str, prompt: str) -> list[int]:
    reply = client.infer(
        model, llm_inputs(prompt, {"max_tokens": 12, "temperature": 0, "ignore_eos": True})
    )
    return reply.as_numpy("output_ids").tolist()


def test_adapter_under_its_own_name_changes_greedy_output(client):
    for prompt in PROMPTS:
        assert _greedy_ids(client, ADAPTER, prompt) != _greedy_ids(client, BASE, prompt)


def _load(engine, name: str, path: str) -> None:
    with grpc.insecure_channel(engine.address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        parameters = {"lora_path": service_pb2.ModelRepositoryParameter(string_param=path)}
        stub.RepositoryModelLoad(
            service_pb2.RepositoryModelLoadRequest(model_name=name, parameters=parameters),
            timeout=60,
        )


def test_repository_load_and_unload_of_an_adapter_at_run_time(engine, client, model_path, tmp_path):
    _load(engine, "runtime-lora", model_path("tiny-llama-lora"))
    assert client.is_model_ready("runtime-lora")
    assert _greedy_ids(client, "runtime-lora", PROMPTS[0]) == _greedy_ids(
        client, ADAPTER, PROMPTS[0]
    )
    client.unload_model("runtime-lora")
    assert "runtime-lora" not in {m.name for m in client.get_model_repository_index().models}
    with pytest.raises(InferenceServerException) as raised:
        _greedy_ids(client, "runtime-lora", PROMPTS[0])
    assert raised.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(grpc.RpcError) as bad:
        _load(engine, "broken", str(tmp_path))
    assert (
        bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        and "adapter_config.json" in bad.value.details()
    )
    with pytest.raises(InferenceServerException) as base:
        client.unload_model(BASE)
    assert base.value.status() == "StatusCode.INVALID_ARGUMENT"


# -- cancellation, metrics, engine death --------------------------------------


def test_cancelled_stream_aborts_generation_in_the_engine(engine, client):
    # Enough work (32 x 500 tokens) that running it to the end takes seconds even on the tiny model.
    count, length = 32, 500
    before = metric(engine, "vllm:generation_tokens_total")
    replies: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: replies.put((result, error)))
    for i in range(count):
        client.async_stream_infer(
            BASE,
            llm_inputs("hi", {"max_tokens": length, "ignore_eos": True}, stream=True),
            request_id=f"long{i}",
        )
    result, error = replies.get(timeout=60)
    assert error is None
    client.stop_stream(cancel_requests=True)
    wait_until(lambda: metric(engine, "vllm:num_requests_running") == 0, 60, interval=0.2)
    assert metric(engine, "vllm:num_requests_running") == 0
    generated = metric(engine, "vllm:generation_tokens_total") - before
    assert generated < count * length / 2, generated  # stopped early, not run to the end


def test_metrics_export_vllm_series(engine):
    names = " ".join(metrics(engine))
    for series in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:time_to_first_token_seconds",
        "vllm:inter_token_latency_seconds",
    ):
        assert series in names, series
    assert metric(engine, "vllm:time_to_first_token_seconds_count") > 0


def test_engine_core_death_stops_serving_and_exits_non_zero(engine):
    """Last in the module: it kills the engine."""
    children = psutil.Process(engine.process.pid).children(recursive=True)
    cores = [p for p in children if "EngineCore" in " ".join(p.cmdline())]
    assert cores, "no vLLM engine core process found"
    for core in cores:
        core.kill()
    exited = wait_until(lambda: not engine.alive(), 60, interval=0.2)
    assert exited, "the service kept running without its engine"
    assert engine.process.returncode == 1
    assert not grpc_serving(engine.address)
