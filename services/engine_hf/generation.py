"""The generation scheduler: one worker thread decoding every active sequence together.

Between two decode steps the loop drops cancelled sequences (so an aborted
request leaves the batch within one step), admits waiting requests (prefilled
as a group and merged into the running batch), and then runs one forward pass
for all sequences. When idle, the first arrival waits `batch_wait_ms` for
company so concurrent requests start together. Sequences decoding under a LoRA
adapter form their own lane (one forward per lane and step).

Results travel to the asyncio side through each request's queue via
`call_soon_threadsafe`; the event loop never runs a forward pass.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from services.common.errors import HfmeshError, InternalError, Unavailable
from services.engine_hf import grammar, sampling
from services.engine_hf.decoding import CausalBatch, Seq2SeqBatch
from services.engine_hf.detok import TextTracker
from services.engine_hf.metrics import EngineMetrics
from services.engine_hf.sequence import ActiveRequest, Sequence

logger = logging.getLogger(__name__)

PREFILL_TOKEN_BUDGET = 16384


@dataclass
class Lane:
    batch: CausalBatch | Seq2SeqBatch | None = None
    rows: list[Sequence] = field(default_factory=list)


class GenerationScheduler:
    def __init__(
        self,
        *,
        model: Any,
        tokenizer: Any,
        seq2seq: bool,
        max_model_len: int,
        max_sequences: int,
        batch_wait_ms: float,
        metrics: EngineMetrics,
        adapter_scope: Callable[[str | None], AbstractContextManager] | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.seq2seq = seq2seq
        self.max_model_len = max_model_len
        self.max_sequences = max_sequences
        self.batch_wait = batch_wait_ms / 1000.0
        self.metrics = metrics
        self._adapter_scope = adapter_scope or (lambda name: nullcontext())
        config = model.generation_config
        eos = config.eos_token_id if config.eos_token_id is not None else tokenizer.eos_token_id
        self.eos_ids = frozenset(
            eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else []
        )
        self.pad_id = next(
            v
            for v in (config.pad_token_id, tokenizer.pad_token_id, *self.eos_ids, 0)
            if v is not None
        )
        start = config.decoder_start_token_id
        self.start_id = start if start is not None else self.pad_id
        self._cond = threading.Condition()
        self._pending: deque[ActiveRequest] = deque()
        self._aborts: set[str] = set()
        self._lanes: dict[str | None, Lane] = {}
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.steps = 0

    # -- asyncio side ----------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="hf-generation", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, active: ActiveRequest) -> None:
        with self._cond:
            if self._stopping:
                raise Unavailable("the engine is shutting down")
            generator = sampling.make_generator(active.request.sampling.seed)
            params = active.request.sampling
            for index in range(params.n):
                state = sampling.SamplingState(
                    params, generator, active.prompt_ids, eos_ids=self.eos_ids
                )
                if active.grammar is not None:
                    state.matcher = grammar.new_matcher(active.grammar)
                text = TextTracker(
                    self.tokenizer,
                    stop=params.stop,
                    skip_special_tokens=params.skip_special_tokens,
                    include_stop_str_in_output=params.include_stop_str_in_output,
                )
                active.sequences.append(Sequence(active, index, state, text))
            self._pending.append(active)
            self.metrics.waiting.set(len(self._pending))
            self._cond.notify_all()

    def abort(self, request_id: str) -> None:
        with self._cond:
            self._aborts.add(request_id)
            self._cond.notify_all()

    # -- worker thread ---------------------------------------------------------

    def _active_rows(self) -> int:
        return sum(len(lane.rows) for lane in self._lanes.values())

    def _run(self) -> None:
        with torch.inference_mode():
            try:
                while self._cycle():
                    pass
            except BaseException:  # noqa: BLE001 - the engine is dead; say so to everyone waiting
                logger.exception("generation loop died")
                raise
            finally:
                self._fail_all(Unavailable("the engine is shutting down"))

    def _cycle(self) -> bool:
        with self._cond:
            while not self._stopping and not self._pending and not self._active_rows():
                self._cond.wait()
            if self._stopping:
                return False
            if not self._active_rows() and self.batch_wait > 0:
                deadline = time.monotonic() + self.batch_wait
                while (
                    remaining := deadline - time.monotonic()
                ) > 0 and self._waiting_rows() < self.max_sequences:
                    self._cond.wait(remaining)
            aborts, self._aborts = self._aborts, set()
            self._drop_aborted_pending(aborts)
            admitted = self._take_admissible()
            self.metrics.waiting.set(len(self._pending))
        self._drop_aborted_rows(aborts)
        if admitted:
            self._admit(admitted)
        for adapter, lane in list(self._lanes.items()):
            if lane.rows:
                self._guarded(lane, adapter, functools.partial(self._decode, lane))
        self._lanes = {k: v for k, v in self._lanes.items() if v.rows}
        self.metrics.running.set(
            len({id(s.request) for lane in self._lanes.values() for s in lane.rows})
        )
        self.metrics.kv_cache_usage.set(self._active_rows() / self.max_sequences)
        return True

    def _waiting_rows(self) -> int:
        return sum(len(r.sequences) for r in self._pending)

    def _drop_aborted_pending(self, aborts: set[str]) -> None:
        for active in [r for r in self._pending if r.request_id in aborts]:
            self._pending.remove(active)
            self._finish_aborted(active)

    def _take_admissible(self) -> list[ActiveRequest]:
        room = self.max_sequences - self._active_rows()
        taken: list[ActiveRequest] = []
        while self._pending and len(self._pending[0].sequences) <= room:
            lane = self._lanes.get(self._pending[0].adapter)
            if (
                lane is not None
                and lane.rows
                and lane.batch is not None
                and not lane.batch.mergeable
            ):
                break  # this cache layout cannot take rows mid-flight: wait for the lane to drain
            active = self._pending.popleft()
            self.metrics.queue_time.observe(time.monotonic() - active.submitted)
            if active.trace is not None:
                active.trace.scheduled()
            room -= len(active.sequences)
            taken.append(active)
        return taken

    def _drop_aborted_rows(self, aborts: set[str]) -> None:
        for lane in self._lanes.values():
            if any(seq.request.request_id in aborts for seq in lane.rows):
                for seq in lane.rows:
                    if seq.request.request_id in aborts and not seq.request.aborted:
                        self._finish_aborted(seq.request)
                self._keep(lane, [s for s in lane.rows if not s.finished])

    def _finish_aborted(self, active: ActiveRequest) -> None:
        active.aborted = True
        for seq in active.sequences:
            if not seq.finished:
                seq.finished = True
                active.send(seq.delta([], "abort"))

    def _keep(self, lane: Lane, rows: list[Sequence]) -> None:
        if len(rows) == len(lane.rows):
            return
        if rows and lane.batch is not None:
            position = {id(seq): i for i, seq in enumerate(lane.rows)}
            lane.batch.select([position[id(seq)] for seq in rows])
        else:
            lane.batch = None
        lane.rows = rows

    def _guarded(self, lane: Lane, adapter: str | None, work: Callable[[], None]) -> None:
        """Run a forward for a lane; a failure fails that lane's requests, not the engine."""
        try:
            with self._adapter_scope(adapter):
                work()
        except Exception as error:  # noqa: BLE001
            logger.exception("decoding failed; failing %d sequences", len(lane.rows))
            failure = error if isinstance(error, HfmeshError) else InternalError()
            for active in {id(s.request): s.request for s in lane.rows}.values():
                for seq in active.sequences:
                    seq.finished = True
                active.send(failure)
            lane.rows, lane.batch = [], None

    def _admit(self, admitted: list[ActiveRequest]) -> None:
        by_adapter: dict[str | None, list[Sequence]] = {}
        for active in admitted:
            by_adapter.setdefault(active.adapter, []).extend(active.sequences)
        for adapter, rows in by_adapter.items():
            lane = self._lanes.setdefault(adapter, Lane())
            for group in _prefill_groups(rows):
                self._guarded(lane, adapter, functools.partial(self._prefill, lane, group))

    def _prefill(self, lane: Lane, group: list[Sequence]) -> None:
        prompts = [seq.request.prompt_ids for seq in group]
        batch: CausalBatch | Seq2SeqBatch
        if self.seq2seq:
            batch, logits = Seq2SeqBatch.prefill(self.model, prompts, self.pad_id, self.start_id)
        else:
            batch, logits = CausalBatch.prefill(self.model, prompts, self.pad_id)
        self.metrics.prompt_tokens.inc(sum(len(p) for p in prompts))
        self._advance(group, logits)
        kept = [i for i, seq in enumerate(group) if not seq.finished]
        if not kept:
            return
        if len(kept) < len(group):
            batch.select(kept)
        if lane.batch is None or not lane.rows:
            lane.batch, lane.rows = batch, [group[i] for i in kept]
        else:
            # A scheduler prefills one kind of batch (`seq2seq`): the two are alike.
            if isinstance(lane.batch, CausalBatch):
                assert isinstance(batch, CausalBatch)
                lane.batch.extend(batch)
            else:
                assert isinstance(batch, Seq2SeqBatch)
                lane.batch.extend(batch)
            lane.rows = lane.rows + [group[i] for i in kept]

    def _decode(self, lane: Lane) -> None:
        assert lane.batch is not None
        logits = lane.batch.decode([seq.last_token for seq in lane.rows])
        self.steps += 1
        self._advance(lane.rows, logits)
        self._keep(lane, [seq for seq in lane.rows if not seq.finished])

    def _advance(self, rows: list[Sequence], logits: torch.Tensor) -> None:
        choices = sampling.choose(logits, [seq.sampler for seq in rows])
        self.metrics.generation_tokens.inc(len(rows))
        now = time.monotonic()
        for seq, choice in zip(rows, choices, strict=True):
            active = seq.request
            if not active.first_token_seen:
                active.first_token_seen = True
                self.metrics.ttft.observe(now - active.submitted)
            elif seq.index == 0:
                self.metrics.inter_token.observe(now - active.last_token_at)
            active.last_token_at = now
            limit = None if self.seq2seq else self.max_model_len
            reason = seq.append(choice.token_id, eos_ids=self.eos_ids, context_limit=limit)
            logprobs = [choice.logprob] if choice.logprob is not None else None
            tops = [choice.top_logprobs] if choice.top_logprobs is not None else None
            active.send(seq.delta([choice.token_id], reason, logprobs, tops))
            if reason is not None and active.done:
                self.metrics.e2e.observe(now - active.submitted)

    def _fail_all(self, error: BaseException) -> None:
        with self._cond:
            pending, self._pending = list(self._pending), deque()
        requests = {id(r): r for r in pending}
        for lane in self._lanes.values():
            requests.update({id(s.request): s.request for s in lane.rows})
        self._lanes = {}
        for active in requests.values():
            if not active.done:
                active.send(error)


def _prefill_groups(rows: list[Sequence]) -> list[list[Sequence]]:
    """Split rows so a prefill's padded size stays within the token budget (longest first)."""
    groups: list[list[Sequence]] = []
    for seq in sorted(rows, key=lambda s: -len(s.request.prompt_ids)):
        width = len(groups[-1][0].request.prompt_ids) if groups else 0
        if groups and width * (len(groups[-1]) + 1) <= PREFILL_TOKEN_BUDGET:
            groups[-1].append(seq)
        else:
            groups.append([seq])
    return groups
