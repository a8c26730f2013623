"""The tokenizer service's work, free of protobuf: chat templates, tokenization,
encoder pre/post-processing and detokenization for one served model.

`TokenizerModel` is synchronous (tokenizers are CPU work); `TokenizerCore` owns
the models and runs every call on a thread pool so the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from services.common.encoder_tensors import ResultOptions, pick_output, task_result
from services.common.engine import Task
from services.common.errors import InvalidArgument, NotFound
from services.common.tokenizer_tensors import Rendered, RenderRequest
from services.tokenizer.tools import plain_roles, template_takes_tools

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class ModelOptions:
    """Per-model options, with KServe's HF runtime flag meanings."""

    task: Task
    max_model_len: int | None = None
    lower_case: bool | None = None  # False: --disable_lower_case
    add_special_tokens: bool = True  # False: --disable_special_tokens
    return_token_type_ids: bool | None = None
    tensor_input_names: tuple[str, ...] = ()
    return_probabilities: bool = False
    return_raw_logits: bool = False


def _check_messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise InvalidArgument("'messages' must be a non-empty JSON list of chat messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidArgument(f"message {index} must be an object with a string 'role'")
    return messages


class TokenizerModel:
    """One served model's tokenizer and task."""

    def __init__(
        self,
        name: str,
        tokenizer: Any,
        options: ModelOptions,
        *,
        config_max_len: int | None = None,
        labels: Mapping[int, str] | None = None,
    ):
        """`labels`: the config's `id2label` (class index → name)."""
        self.name = name
        self.tokenizer = tokenizer
        self.options = options
        self.labels = dict(labels or {})
        limit = (
            options.max_model_len or config_max_len or getattr(tokenizer, "model_max_length", None)
        )
        # Tokenizers without a limit report a huge sentinel (int(1e30)).
        self.max_model_len: int | None = limit if limit and limit < 10**9 else None

    # -- generation: chat templates and prompts ------------------------------

    def render(self, request: RenderRequest) -> Rendered:
        if (request.messages is None) == (request.text_input is None):
            raise InvalidArgument("render needs exactly one of 'messages' or 'text_input'")
        if request.text_input is not None:
            if not request.text_input:
                raise InvalidArgument("the prompt is empty")
            special = True if request.add_special_tokens is None else request.add_special_tokens
            ids = self.tokenizer(request.text_input, add_special_tokens=special)["input_ids"]
            prompt = request.text_input
            return Rendered(prompt=prompt, input_ids=list(ids), max_model_len=self.max_model_len)
        prompt = self.apply_chat_template(request)
        special = False if request.add_special_tokens is None else request.add_special_tokens
        ids = self.tokenizer(prompt, add_special_tokens=special)["input_ids"]
        if not ids:
            raise InvalidArgument("the rendered prompt is empty")
        return Rendered(prompt=prompt, input_ids=list(ids), max_model_len=self.max_model_len)

    def apply_chat_template(self, request: RenderRequest) -> str:
        messages = _check_messages(request.messages)
        continue_final = bool(request.continue_final_message)
        generation_prompt = request.add_generation_prompt
        if generation_prompt is None:
            generation_prompt = not continue_final
        if generation_prompt and continue_final:
            raise InvalidArgument(
                "'add_generation_prompt' and 'continue_final_message' cannot both be true"
            )
        if continue_final and messages[-1].get("role") != "assistant":
            raise InvalidArgument(
                "'continue_final_message' needs the last message to be from the assistant"
            )
        template = request.chat_template or None
        if template is None and not getattr(self.tokenizer, "chat_template", None):
            raise InvalidArgument(
                f"model '{self.name}' has no chat template; pass 'chat_template' or use completions"
            )
        tools = request.tools
        source = template or self.tokenizer.chat_template
        if isinstance(source, str) and not template_takes_tools(source):
            messages, tools = plain_roles(messages, tools, request.tool_parser), None
        try:
            return self.tokenizer.apply_chat_template(
                messages,
                tools=tools,
                documents=request.documents,
                chat_template=template,
                add_generation_prompt=generation_prompt,
                continue_final_message=continue_final,
                tokenize=False,
                **(request.chat_template_kwargs or {}),
            )
        except InvalidArgument:
            raise
        except (
            Exception
        ) as error:  # jinja errors, raise_exception() in templates, bad message shapes
            raise InvalidArgument(
                f"cannot render the chat template: {type(error).__name__}: {error}"
            ) from None

    # -- encoder tasks -------------------------------------------------------

    def preprocess(self, texts: list[str], pairs: list[str] | None = None) -> dict[str, np.ndarray]:
        """KServe's tokenizer call: pad to the longest, truncate at `max_model_len`."""
        if not texts:
            raise InvalidArgument("no text to tokenize")
        if pairs is not None and len(pairs) != len(texts):
            raise InvalidArgument(f"'text_pair' has {len(pairs)} items for {len(texts)} texts")
        options = self.options
        encoded = self.tokenizer(
            texts,
            pairs,
            max_length=self.max_model_len,
            add_special_tokens=options.add_special_tokens,
            return_token_type_ids=options.return_token_type_ids,
            padding=True,
            truncation=True,
            return_tensors="np",
        )
        return {name: np.asarray(value, dtype=np.int64) for name, value in encoded.items()}

    def postprocess(
        self,
        outputs: dict[str, np.ndarray],
        inputs: dict[str, np.ndarray],
        parameters: Mapping[str, object] | None = None,
    ) -> np.ndarray:
        """Raw predictor outputs + the preprocess tensors → the task's `output-0`; request
        `parameters` may override `return_probabilities` / `return_raw_logits`."""
        options = ResultOptions(self.options.return_probabilities, self.options.return_raw_logits)
        return task_result(
            self.options.task,
            outputs,
            inputs.get("input_ids"),
            inputs.get("attention_mask"),
            tokenizer=self.tokenizer,
            options=options.overridden(parameters or {}),
        )

    def class_names(self, outputs: dict[str, np.ndarray]) -> list[str]:
        """Each row's highest-scoring class by name (sequence classification), `LABEL_i` when
        the config names none, as transformers does."""
        if self.options.task is not Task.SEQUENCE_CLASSIFICATION:
            raise InvalidArgument(
                f"model '{self.name}' is {self.options.task.value}; class names are for "
                "sequence_classification"
            )
        _, logits = pick_output(self.options.task, outputs)
        scores = np.asarray(logits)
        rows = scores.reshape(scores.shape[0], -1).argmax(axis=-1)
        return [self.labels.get(int(i), f"LABEL_{int(i)}") for i in rows]

    # -- detokenization ------------------------------------------------------

    def detokenize(self, ids: np.ndarray, *, skip_special_tokens: bool = True) -> list[str]:
        """Rows of ids → text; negative ids (padding) are dropped."""
        rows = ids.reshape(1, -1) if ids.ndim == 1 else ids.reshape(ids.shape[0], -1)
        self._check_ids(rows)
        return [
            self.tokenizer.decode(
                [int(t) for t in row if t >= 0], skip_special_tokens=skip_special_tokens
            )
            for row in rows
        ]

    def token_strings(self, ids: np.ndarray) -> list[str]:
        """Each id decoded on its own (the `token` field of OpenAI logprobs)."""
        flat = [int(t) for t in ids.ravel()]
        self._check_ids(np.asarray(flat))
        return [self.tokenizer.decode([t], skip_special_tokens=False) for t in flat]

    def vocabulary_strings(self, ids: np.ndarray) -> list[str]:
        """Each id's string in the vocabulary (`Ġthe`, `<|im_start|>`), as vLLM's
        `return_token_strs` gives them."""
        flat = [int(t) for t in ids.ravel()]
        if flat and min(flat) < 0:
            raise InvalidArgument(f"token id {min(flat)} is negative")
        self._check_ids(np.asarray(flat))
        return [str(t) for t in self.tokenizer.convert_ids_to_tokens(flat)]

    def _check_ids(self, ids: np.ndarray) -> None:
        size = len(self.tokenizer)
        if ids.size and int(ids.max()) >= size:
            raise InvalidArgument(
                f"token id {int(ids.max())} is outside the vocabulary (size {size})"
            )


class TokenizerCore:
    """The served models, with every tokenizer call on a thread pool."""

    def __init__(self, models: list[TokenizerModel], *, workers: int = 4) -> None:
        self.models = {model.name: model for model in models}
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tokenizer")

    def model(self, name: str) -> TokenizerModel:
        try:
            return self.models[name]
        except KeyError:
            known = ", ".join(sorted(self.models)) or "none"
            raise NotFound(f"unknown model '{name}' (this tokenizer serves: {known})") from None

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
