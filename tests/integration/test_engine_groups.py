"""An engine group as a real process: one HF engine serving a model of every task, planned as
the launcher plans it, beside one-model engines of the same models, called with
`tritonclient.grpc`.

The group's answers must equal the one-model engines' exactly, task by task, and Triton's
repository RPCs must list, unload (giving the memory back) and load its models while the
others keep serving.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import psutil
import pytest
from tritonclient.utils import InferenceServerException

from tests.helpers.mesh import model_entry, running_mesh
from tests.helpers.triton import bytes_input, clients, int_input, llm_inputs
from tests.integration.test_engine_hf import ENGINES

pytestmark = pytest.mark.slow

MODELS = ENGINES  # a model of every task: the one-model engines' test suite's
TEXTS = ["Paris is a [MASK] in France.", "Alice met Bob in [MASK] on Tuesday."]
SOLO = "-solo"


@pytest.fixture(scope="module")
def mesh(model_path, tmp_path_factory):
    grouped = [
        dataclasses.replace(model_entry(name, model_path(folder), task), engine_group="all")
        for name, (folder, task) in MODELS.items()
    ]
    solo = [
        model_entry(name + SOLO, model_path(folder), task)
        for name, (folder, task) in MODELS.items()
    ]
    with running_mesh(
        [*grouped, *solo], tmp_path_factory.mktemp("groups"), engines_only=True
    ) as mesh:
        yield mesh


@pytest.fixture(scope="module")
def client(mesh):
    group = mesh.engine("llm")
    assert all(mesh.engine(name) is group for name in MODELS)  # one process for all seven
    engines = {name + SOLO: mesh.engine(name + SOLO) for name in MODELS}
    with clients({"group": group, **engines}) as made:
        yield made


def _inputs(name: str) -> list:
    task = MODELS[name][1]
    if task in ("text_generation", "text2text_generation"):
        return llm_inputs(TEXTS[0], {"max_tokens": 10, "temperature": 0, "ignore_eos": True})
    if task == "rerank":
        return [bytes_input("query", ["where is paris"]), bytes_input("documents", TEXTS)]
    return [bytes_input("input-0", TEXTS)]


def _outputs(reply) -> dict[str, np.ndarray]:
    names = [output["name"] for output in reply.get_response(as_json=True)["outputs"]]
    return {name: reply.as_numpy(name) for name in names}


def _answer(client, name: str, model: str | None = None) -> dict[str, np.ndarray]:
    return _outputs(client.infer(model or name, _inputs(name)))


@pytest.mark.parametrize("name", list(MODELS))
def test_the_group_answers_as_one_model_engines_do(client, name):
    grouped = _answer(client["group"], name)
    alone = _answer(client[name + SOLO], name, name + SOLO)
    assert grouped.keys() == alone.keys()
    for output, array in alone.items():
        np.testing.assert_array_equal(grouped[output], array, err_msg=f"{name} {output}")


def test_token_tensors_too(client):
    ids = np.array([[2, 15, 27, 33, 3], [2, 41, 7, 3, 0]], dtype=np.int64)
    mask = (ids != 0).astype(np.int64)
    inputs = [int_input("input_ids", ids), int_input("attention_mask", mask)]
    grouped = _outputs(client["group"].infer("sentiment", inputs))
    alone = _outputs(client["sentiment" + SOLO].infer("sentiment" + SOLO, inputs))
    np.testing.assert_array_equal(grouped["logits"], alone["logits"])


def _index(client) -> dict[str, tuple[str, str]]:
    return {m.name: (m.state, m.reason) for m in client.get_model_repository_index().models}


def test_repository_index_unload_and_load(client, mesh):
    group = client["group"]
    assert _index(group) == {name: ("READY", "") for name in MODELS}
    before = _answer(group, "minilm")
    process = psutil.Process(mesh.engine("minilm").process.pid)
    loaded_rss = process.memory_info().rss
    group.unload_model("minilm")
    index = _index(group)
    assert index["minilm"] == ("UNAVAILABLE", "unloaded")
    assert all(state == ("READY", "") for name, state in index.items() if name != "minilm")
    assert not group.is_model_ready("minilm") and not group.is_server_ready()
    # all-MiniLM-L6-v2's 90 MB of weights leave the process
    assert loaded_rss - process.memory_info().rss > 40 * 2**20
    with pytest.raises(InferenceServerException) as unloaded:
        _answer(group, "minilm")
    assert unloaded.value.status() == "StatusCode.UNAVAILABLE"
    np.testing.assert_array_equal(
        _answer(group, "sentiment")["output-0"],
        _answer(client["sentiment" + SOLO], "sentiment", "sentiment" + SOLO)["output-0"],
    )
    group.load_model("minilm")
    assert group.is_model_ready("minilm") and group.is_server_ready()
    after = _answer(group, "minilm")
    np.testing.assert_array_equal(after["output-0"], before["output-0"])
    with pytest.raises(InferenceServerException) as unknown:
        group.load_model("not-here")
    assert unknown.value.status() == "StatusCode.NOT_FOUND"
    assert group.get_server_metadata().extensions[0] == "model_repository"
