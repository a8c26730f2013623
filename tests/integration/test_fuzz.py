"""Hostile input against real processes, bounded: the gateway's OpenAPI fuzzed with
schemathesis (no answer >= 500, none outside the documented statuses and schemas), and
structured protobuf fuzz of an engine's `ModelInfer` / `ModelStreamInfer` (only OK,
INVALID_ARGUMENT, NOT_FOUND or RESOURCE_EXHAUSTED; the engine still healthy after).

Examples are derandomized and bounded (`FUZZ_EXAMPLES` per operation), so a run takes
minutes and the same cases run every time.
"""

from __future__ import annotations

import json

import grpc
import pytest
import schemathesis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from services.common.codec import DATATYPES
from services.common.pb import inference_pb2 as pb
from services.common.pb import inference_pb2_grpc as pb_grpc
from tests.helpers.mesh import model_entry, running_mesh

pytestmark = pytest.mark.slow  # a multi-process mesh

ENGINES = {
    "llm": ("tiny-llama", "text_generation"),
    "embed": ("all-minilm-l6-v2", "text_embedding"),
    "rerank": ("tiny-bert-reranker", "rerank"),
    "sentiment": ("tiny-bert-sentiment", "sequence_classification"),
}
FUZZ_EXAMPLES = 40
PROTO_EXAMPLES = 300
ALLOWED_CODES = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def bounded(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


@pytest.fixture(scope="module")
def mesh(model_path, tmp_path_factory):
    models = [
        model_entry(name, model_path(folder), task, max_model_len=128 if name == "llm" else None)
        for name, (folder, task) in ENGINES.items()
    ]
    with running_mesh(models, tmp_path_factory.mktemp("mesh")) as started:
        yield started


def _steer(case, model: str, max_tokens: int) -> None:
    """Point a generated body at a served model half the time (else every case is a 404),
    and keep generations short so the run stays bounded."""
    body = case.body
    if isinstance(body, dict):
        if "model" in body:
            body["model"] = model
        for key in ("max_tokens", "max_completion_tokens"):
            if isinstance(body.get(key), int) and body[key] > max_tokens:
                body[key] = max_tokens
        if isinstance(body.get("n"), int) and body["n"] > 2:
            body["n"] = 2


def test_openapi_fuzz_answers_no_5xx_and_conforms(mesh):
    url = mesh["gateway"].url
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    problems: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert any("chat/completions" in op.path for op in operations)
    for operation in operations:

        @bounded(FUZZ_EXAMPLES)
        @given(
            case=operation.as_strategy(),
            model=st.sampled_from([*ENGINES, "no-such-model"]),
            max_tokens=st.integers(1, 8),
        )
        def run(case, model, max_tokens):
            _steer(case, model, max_tokens)
            response = case.call(base_url=url, timeout=120)
            if response.status_code >= 500:
                problems.append(
                    f"{case.method} {case.formatted_path} → {response.status_code}: "
                    f"{response.text[:200]} (body {json.dumps(case.body, default=str)[:300]})"
                )
                return
            try:
                case.validate_response(
                    response,
                    checks=[
                        status_code_conformance,
                        content_type_conformance,
                        response_schema_conformance,
                    ],
                )
            except (AssertionError, BaseExceptionGroup) as error:  # schemathesis' failures
                problems.append(f"{case.method} {case.formatted_path}: {str(error)[:400]}")

        run()
    assert not problems, "\n".join(problems[:20])


# -- protobuf fuzz of an engine ------------------------------------------------

NAMES = ["input_ids", "text_input", "input-0", "attention_mask", "sampling_parameters", "stream"]


def _parameters():
    value = st.one_of(
        st.builds(lambda v: pb.InferParameter(bool_param=v), st.booleans()),
        st.builds(lambda v: pb.InferParameter(int64_param=v), st.integers(-(2**63), 2**63 - 1)),
        st.builds(lambda v: pb.InferParameter(string_param=v), st.text(max_size=40)),
        st.builds(lambda v: pb.InferParameter(double_param=v), st.floats()),
        st.builds(lambda v: pb.InferParameter(uint64_param=v), st.integers(0, 2**64 - 1)),
    )
    keys = st.sampled_from(
        ["stream", "coalesce_deltas", "return_probabilities", "binary_data", "priority"]
    ) | st.text(max_size=12)
    return st.dictionaries(keys, value, max_size=3)


def _contents():
    return st.builds(
        lambda kind, ints, floats, blobs, bools: pb.InferTensorContents(
            **{
                "int64_contents": {"int64_contents": ints},
                "int_contents": {"int_contents": [max(-(2**31), min(2**31 - 1, i)) for i in ints]},
                "fp32_contents": {"fp32_contents": floats},
                "bytes_contents": {"bytes_contents": blobs},
                "bool_contents": {"bool_contents": bools},
                "none": {},
            }[kind]
        ),
        st.sampled_from(
            ["int64_contents", "int_contents", "fp32_contents", "bytes_contents", "bool_contents"]
            + ["none"]
        ),
        st.lists(st.integers(-(2**63), 2**63 - 1), max_size=12),
        st.lists(st.floats(width=32), max_size=12),
        st.lists(
            st.binary(max_size=30)
            | st.sampled_from([b'{"max_tokens": 4}', b'{"n": 2, "max_tokens": 3}', b"hello"]),
            max_size=4,
        ),
        st.lists(st.booleans(), max_size=4),
    )


def _tensor():
    return st.builds(
        lambda name, datatype, shape, contents, parameters: pb.ModelInferRequest.InferInputTensor(
            name=name, datatype=datatype, shape=shape, contents=contents, parameters=parameters
        ),
        st.sampled_from(NAMES) | st.text(max_size=10),
        st.sampled_from(list(DATATYPES)) | st.text(max_size=6),
        st.lists(st.integers(-3, 12) | st.integers(-(2**63), 2**63 - 1), max_size=3),
        _contents(),
        _parameters(),
    )


def _infer_request():
    return st.builds(
        lambda model, request_id, inputs, raw, outputs, parameters: pb.ModelInferRequest(
            model_name=model,
            id=request_id,
            inputs=inputs,
            raw_input_contents=raw,
            outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name=o) for o in outputs],
            parameters=parameters,
        ),
        st.sampled_from([*ENGINES]) | st.text(max_size=10),
        st.text(max_size=20),
        st.lists(_tensor(), max_size=4),
        st.lists(st.binary(max_size=64), max_size=3),
        st.lists(st.sampled_from(["text_output", "output-0", "logits"]) | st.text(max_size=8)),
        _parameters(),
    )


def test_protobuf_fuzz_of_an_engine_gets_only_client_errors(mesh):
    engines = {name: mesh.engine(name).address for name in ENGINES}
    seen: list[str] = []

    with (
        grpc.insecure_channel(engines["llm"]) as llm,
        grpc.insecure_channel(engines["embed"]) as embed,
    ):
        stubs = [pb_grpc.GRPCInferenceServiceStub(c) for c in (llm, embed)]

        @bounded(PROTO_EXAMPLES)
        @given(request=_infer_request(), which=st.integers(0, 1), streamed=st.booleans())
        def run(request, which, streamed):
            stub = stubs[which]
            try:
                if streamed:
                    for reply in stub.ModelStreamInfer(iter([request]), timeout=60):
                        if reply.error_message:
                            code = reply.infer_response.parameters.get("error_code")
                            name = code.string_param if code is not None else "UNKNOWN"
                            if name not in {c.name for c in ALLOWED_CODES}:
                                seen.append(f"stream {name}: {reply.error_message[:200]}")
                else:
                    stub.ModelInfer(request, timeout=60)
            except grpc.RpcError as error:
                if error.code() not in ALLOWED_CODES:
                    seen.append(f"{error.code().name}: {error.details()[:200]} ({request})"[:600])

        run()
        for channel, name in ((llm, "llm"), (embed, "embed")):
            status = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=10
            )
            assert status.status == health_pb2.HealthCheckResponse.SERVING, name
    assert not seen, "\n".join(seen[:20])
