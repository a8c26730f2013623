"""Encoder tasks on a transformers model: requests → one padded forward pass → results.

Two input styles (DESIGN.md §3). Text in: the tokenizer runs here and the result
is the task's answer (`output-0`, see `services.common.task_results`). Tensors in:
`input_ids` / `attention_mask` / `token_type_ids` [N, L] → raw FP32 tensors as a
Triton-hosted model answers (`logits`; `last_hidden_state` + `embeddings` for
embedding models; `logits` + `scores` for rerankers).

Every request is first turned into token arrays of its own length; a batch pads
them (right side, mask 0) into one forward pass and slices each request's rows
and length back out, so a result never depends on what it was batched with.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.common import task_results
from services.common.encoder_tensors import (
    RESULT_OUTPUT,
    TOKEN_COUNT_OUTPUT,
    TOKEN_INPUTS,
    ResultOptions,
    task_result,
    token_counts_wanted,
)
from services.common.engine import EncodeRequest, EncodeResult, Task
from services.common.errors import HfmeshError, InternalError, InvalidArgument
from services.engine_hf.loading import LoadedModel, ModelLoadError
from services.engine_hf.packing import pack, packing_supported, unpack

logger = logging.getLogger(__name__)


@dataclass
class EncodeJob:
    request: EncodeRequest
    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray | None
    text_style: bool

    @property
    def rows(self) -> int:
        return int(self.input_ids.shape[0])


def request_rows(request: EncodeRequest) -> int:
    if request.tensors is not None and "input_ids" in request.tensors:
        return int(np.shape(request.tensors["input_ids"])[0])
    return len(request.texts or request.pairs or ())


class EncoderRunner:
    def __init__(
        self,
        loaded: LoadedModel,
        *,
        add_special_tokens: bool = True,
        tensor_inputs: tuple[str, ...] | None = None,
        return_probabilities: bool = False,
        return_raw_logits: bool = False,
    ) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.task = loaded.task
        self.add_special_tokens = add_special_tokens
        self.result_options = ResultOptions(return_probabilities, return_raw_logits)
        accepted = set(inspect.signature(self.model.forward).parameters)
        self.takes_token_types = "token_type_ids" in accepted
        self.tensor_inputs = tuple(n for n in (tensor_inputs or TOKEN_INPUTS) if n in accepted)
        self.vocab_size = int(self.model.get_input_embeddings().num_embeddings)
        self.type_vocab_size = int(getattr(self.model.config, "type_vocab_size", 0) or 0)
        if self.task is Task.FILL_MASK and self.tokenizer.mask_token_id is None:
            raise ModelLoadError("fill_mask needs a tokenizer with a mask token")
        # Text-in embeddings pool over real tokens only, so their batches can skip padding.
        self.packing = self.task is Task.TEXT_EMBEDDING and packing_supported(
            self.model, self.tokenizer, loaded.device
        )
        logger.info("sequence packing for text embeddings: %s", "on" if self.packing else "off")

    # -- preparation (per request) -------------------------------------------

    def prepare(self, request: EncodeRequest) -> EncodeJob:
        if request.tensors is not None:
            return self._from_tensors(request)
        if self.task is Task.RERANK:
            if not request.pairs:
                raise InvalidArgument("rerank takes query/document pairs")
            queries, documents = zip(*request.pairs, strict=True)
            encoded = self._tokenize(list(queries), list(documents))
        else:
            if request.pairs:
                raise InvalidArgument(f"query/document pairs are for rerank, not {self.task.value}")
            if not request.texts:
                raise InvalidArgument("no input text")
            encoded = self._tokenize(list(request.texts))
        types = encoded.get("token_type_ids") if self.takes_token_types else None
        return EncodeJob(
            request, encoded["input_ids"], encoded["attention_mask"], types, text_style=True
        )

    def _tokenize(self, first: list[str], second: list[str] | None = None) -> dict[str, np.ndarray]:
        encoded = self.tokenizer(
            first,
            second,
            padding=True,
            truncation=True,
            max_length=self.loaded.max_model_len,
            add_special_tokens=self.add_special_tokens,
            return_tensors="np",
        )
        if encoded["input_ids"].shape[1] == 0:
            raise InvalidArgument("the input tokenizes to nothing")
        return {k: np.asarray(v, dtype=np.int64) for k, v in encoded.items()}

    def _from_tensors(self, request: EncodeRequest) -> EncodeJob:
        tensors = request.tensors or {}
        for name in tensors:
            if name not in self.tensor_inputs:
                raise InvalidArgument(
                    f"unknown input '{name}' for model '{request.model}' (it takes "
                    f"{', '.join(self.tensor_inputs)})"
                )
        if "input_ids" not in tensors:
            raise InvalidArgument("tensor 'input_ids' is required")
        ids = np.asarray(tensors["input_ids"], dtype=np.int64)
        if ids.ndim != 2 or ids.shape[0] == 0 or ids.shape[1] == 0:
            raise InvalidArgument(
                f"tensor 'input_ids': expected a non-empty [N, L], got {list(ids.shape)}"
            )
        if ids.shape[1] > self.loaded.max_model_len:
            raise InvalidArgument(
                f"tensor 'input_ids': length {ids.shape[1]} exceeds the model's limit "
                f"{self.loaded.max_model_len}"
            )
        self._check_range("input_ids", ids, self.vocab_size)
        mask = np.asarray(tensors.get("attention_mask", np.ones_like(ids)), dtype=np.int64)
        self._check_range("attention_mask", mask, 2)
        types = tensors.get("token_type_ids")
        if types is not None:
            types = np.asarray(types, dtype=np.int64)
            self._check_range("token_type_ids", types, max(self.type_vocab_size, 1))
        for name, array in (("attention_mask", mask), ("token_type_ids", types)):
            if array is not None and array.shape != ids.shape:
                raise InvalidArgument(
                    f"tensor '{name}': shape {list(array.shape)} differs from input_ids "
                    f"{list(ids.shape)}"
                )
        return EncodeJob(request, ids, mask, types, text_style=False)

    @staticmethod
    def _check_range(name: str, array: np.ndarray, upper: int) -> None:
        if array.size and (array.min() < 0 or array.max() >= upper):
            raise InvalidArgument(f"tensor '{name}': values must be in [0, {upper - 1}]")

    # -- one batch -----------------------------------------------------------

    def run_batch(self, requests: list[EncodeRequest]) -> list[EncodeResult | HfmeshError]:
        """Prepare, run one forward for every valid request, post-process. Per-request errors."""
        results: dict[int, EncodeResult | HfmeshError] = {}
        jobs: list[tuple[int, EncodeJob]] = []
        for index, request in enumerate(requests):
            try:
                jobs.append((index, self.prepare(request)))
            except HfmeshError as error:
                results[index] = error
        if jobs:
            outputs: list[np.ndarray | HfmeshError]
            try:
                outputs = list(self.forward([job for _, job in jobs]))
            except Exception:  # noqa: BLE001 - a failed forward fails its batch, not the engine
                logger.exception("encoder forward pass failed")
                outputs = [InternalError()] * len(jobs)
            for (index, job), output in zip(jobs, outputs, strict=True):
                if isinstance(output, HfmeshError):
                    results[index] = output
                    continue
                try:
                    results[index] = self.finish(job, output)
                except HfmeshError as error:
                    results[index] = error
        return [results[index] for index in range(len(requests))]

    def forward(self, jobs: list[EncodeJob]) -> list[np.ndarray]:
        """One padded forward pass; each job gets its own rows, cut to its own length."""
        import torch

        if self.packing and all(job.text_style for job in jobs):
            return self._forward_packed(jobs)
        width = max(job.input_ids.shape[1] for job in jobs)
        pad = self.tokenizer.pad_token_id or 0
        ids = np.concatenate([_pad(job.input_ids, width, pad) for job in jobs])
        mask = np.concatenate([_pad(job.attention_mask, width, 0) for job in jobs])
        inputs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
        if self.takes_token_types and any(job.token_type_ids is not None for job in jobs):
            inputs["token_type_ids"] = np.concatenate(
                [
                    _pad(
                        job.token_type_ids
                        if job.token_type_ids is not None
                        else np.zeros_like(job.input_ids),
                        width,
                        0,
                    )
                    for job in jobs
                ]
            )
        device = self.loaded.device
        with torch.inference_mode():
            out = self.model(**{k: torch.from_numpy(v).to(device) for k, v in inputs.items()})
        main = out.last_hidden_state if self.task is Task.TEXT_EMBEDDING else out.logits
        array = main.float().cpu().numpy()
        pieces, start = [], 0
        for job in jobs:
            rows = array[start : start + job.rows]
            pieces.append(rows[:, : job.input_ids.shape[1]] if rows.ndim == 3 else rows)
            start += job.rows
        return pieces

    def _forward_packed(self, jobs: list[EncodeJob]) -> list[np.ndarray]:
        """Text embeddings without padding (see `packing`); same shapes as `forward` returns."""
        import torch

        sequences, types = [], []
        for job in jobs:
            for row in range(job.rows):
                real = job.attention_mask[row] == 1
                sequences.append(job.input_ids[row][real])
                types.append(
                    job.token_type_ids[row][real] if job.token_type_ids is not None else None
                )
        known = [t for t in types if t is not None]
        with_types = self.takes_token_types and len(known) == len(types)
        inputs, places = pack(sequences, known if with_types else None, self.loaded.device)
        with torch.inference_mode():
            hidden = self.model(**inputs).last_hidden_state.float().cpu().numpy()
        pieces, start = [], 0
        for job in jobs:
            pieces.append(unpack(hidden, places[start : start + job.rows], job.input_ids.shape[1]))
            start += job.rows
        return pieces

    def finish(self, job: EncodeJob, output: np.ndarray) -> EncodeResult:
        if not job.text_style:
            return EncodeResult(self._raw_outputs(job, output))
        name = "last_hidden_state" if self.task is Task.TEXT_EMBEDDING else "logits"
        result = task_result(
            self.task,
            {name: output},
            job.input_ids,
            job.attention_mask,
            tokenizer=self.tokenizer,
            options=self.result_options.overridden(job.request.options),
        )
        outputs = {RESULT_OUTPUT: result}
        if token_counts_wanted(job.request.options):
            outputs[TOKEN_COUNT_OUTPUT] = job.attention_mask.sum(axis=1, dtype=np.int64)
        return EncodeResult(outputs)

    def _raw_outputs(self, job: EncodeJob, output: np.ndarray) -> dict[str, np.ndarray]:
        output = np.ascontiguousarray(output, dtype=np.float32)
        if self.task is Task.TEXT_EMBEDDING:
            return {
                "last_hidden_state": output,
                "embeddings": task_results.text_embedding(output, job.attention_mask),
            }
        if self.task is Task.RERANK:
            return {"logits": output, "scores": task_results.rerank_scores(output)}
        return {"logits": output}


def _pad(array: np.ndarray, width: int, value: int) -> np.ndarray:
    if array.shape[1] == width:
        return array
    return np.pad(array, ((0, 0), (0, width - array.shape[1])), constant_values=value)
