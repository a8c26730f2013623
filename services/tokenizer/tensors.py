"""What the tokenizer service's models look like to ModelMetadata and the repository.

The request and answer tensors themselves are the shared contract in
`services.common.tokenizer_tensors` (and `encoder_tensors` for the texts).
"""

from __future__ import annotations

from services.common.encoder_tensors import RESULT_OUTPUT, TEXT_INPUT, TOKEN_INPUTS
from services.common.engine import ModelInfo, ModelState, Task, TensorSpec
from services.common.tokenizer_tensors import (
    DETOKENIZE,
    POSTPROCESS,
    PREPROCESS,
    RENDER,
    operation_model,
)
from services.tokenizer.core import TokenizerModel


def model_infos(model: TokenizerModel, *, with_predictor: bool) -> list[ModelInfo]:
    """The OIP models one served model exposes, for metadata and the repository index."""
    ready, name, task = ModelState.READY, model.name, model.options.task
    ids = TensorSpec("input_ids", "INT64", (-1,))
    matrix = [TensorSpec(n, "INT64", (-1, -1)) for n in TOKEN_INPUTS]
    text = TensorSpec("text", "BYTES", (-1,))
    result = TensorSpec(RESULT_OUTPUT, "BYTES" if task is Task.FILL_MASK else "FP32", (-1,))
    platform = "hfmesh_tokenizer"
    infos = [
        ModelInfo(
            operation_model(name, PREPROCESS),
            task,
            ready,
            platform=platform,
            inputs=[text, TensorSpec("text_pair", "BYTES", (-1,))],
            outputs=matrix,
        ),
        ModelInfo(
            operation_model(name, POSTPROCESS),
            task,
            ready,
            platform=platform,
            inputs=[TensorSpec("logits", "FP32", (-1, -1, -1)), *matrix],
            outputs=[result],
        ),
        ModelInfo(
            operation_model(name, DETOKENIZE),
            task,
            ready,
            platform=platform,
            inputs=[ids],
            outputs=[
                TensorSpec("text_output", "BYTES", (-1,)),
                TensorSpec("tokens", "BYTES", (-1,)),
            ],
        ),
        ModelInfo(
            operation_model(name, RENDER),
            task,
            ready,
            platform=platform,
            max_model_len=model.max_model_len,
            inputs=[
                TensorSpec("messages", "BYTES", (1,)),
                TensorSpec("text_input", "BYTES", (1,)),
                TensorSpec("tools", "BYTES", (1,)),
                TensorSpec("documents", "BYTES", (1,)),
                TensorSpec("chat_template", "BYTES", (1,)),
                TensorSpec("add_generation_prompt", "BOOL", (1,)),
                TensorSpec("continue_final_message", "BOOL", (1,)),
            ],
            outputs=[ids, TensorSpec("prompt", "BYTES", (1,))],
        ),
    ]
    if with_predictor and not task.is_generative:
        infos.append(
            ModelInfo(
                name,
                task,
                ready,
                platform="hfmesh_transformer",
                max_model_len=model.max_model_len,
                inputs=[TensorSpec(TEXT_INPUT, "BYTES", (-1,))],
                outputs=[TensorSpec(RESULT_OUTPUT, "BYTES", (-1,))],
            )
        )
    return infos
