import json

import pytest

from services.common.architecture import infer_task, read_architecture, task_from_architecture
from services.common.engine import Task
from services.common.errors import InvalidArgument


@pytest.mark.parametrize(
    "architecture, task",
    [
        ("LlamaForCausalLM", Task.TEXT_GENERATION),
        ("T5ForConditionalGeneration", Task.TEXT2TEXT_GENERATION),
        ("BertForMaskedLM", Task.FILL_MASK),
        ("BertForTokenClassification", Task.TOKEN_CLASSIFICATION),
        ("BertForSequenceClassification", Task.SEQUENCE_CLASSIFICATION),
        ("BertModel", Task.TEXT_EMBEDDING),
    ],
)
def test_task_from_architecture(architecture, task):
    assert task_from_architecture(architecture) is task
    assert infer_task([architecture]) is task


def test_unknown_architecture_needs_task():
    with pytest.raises(InvalidArgument, match="pass --task"):
        task_from_architecture("Whatever")
    with pytest.raises(InvalidArgument, match="pass --task"):
        infer_task(["WhisperEncoderThing"])
    with pytest.raises(InvalidArgument, match="names no architecture; pass --task"):
        infer_task(None)


def test_infer_task_reads_a_folder_unless_told(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"architectures": ["BertForSequenceClassification"]})
    )
    assert read_architecture(tmp_path) == "BertForSequenceClassification"
    assert infer_task(str(tmp_path)) is Task.SEQUENCE_CLASSIFICATION
    assert infer_task(tmp_path / "missing", Task.RERANK) is Task.RERANK
    with pytest.raises(InvalidArgument, match="cannot read"):
        infer_task(tmp_path / "missing")
