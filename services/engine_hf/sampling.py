"""Choosing the next token per sequence: grammar masks, penalties, temperature, top-k/p,
min-p, seeds.

Semantics follow vLLM's `SamplingParams`: temperature 0 is greedy; `top_k` 0 or
-1 is off; repetition penalty (HF/CTRL style: divide positive logits, multiply
negative ones) covers prompt and output tokens; presence/frequency penalties
(OpenAI style) cover output tokens; until `min_tokens` are out, EOS and
`stop_token_ids` cannot be chosen. Log-probabilities are those of the model's
raw distribution (vLLM's default `raw_logprobs`). Each request samples from its
own `torch.Generator`, so a seeded request gives the same tokens whatever it is
batched with.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import torch

from services.common.engine import SamplingParams
from services.common.errors import InvalidArgument
from services.common.llm_tensors import check_sampling
from services.engine_hf import grammar

GREEDY_EPS = 1e-5
MAX_LOGPROBS = 20


def validate(params: SamplingParams, *, vocab_size: int, max_sequences: int) -> None:
    """Reject what this engine cannot honour, naming the parameter: the common ranges
    (`check_sampling`), then this engine's own limits."""
    check_sampling(params)
    unsupported = sorted(k for k in params.extra if k not in grammar.SAMPLING_KEYS)
    if unsupported:
        raise InvalidArgument(
            f"sampling parameter '{unsupported[0]}' is not supported by the HF engine"
        )
    checks = (
        ("n", params.n <= max_sequences, f"at most {max_sequences} (--max_concurrent_sequences)"),
        (
            "logprobs",
            params.logprobs is None or 0 <= params.logprobs <= MAX_LOGPROBS,
            f"in [0, {MAX_LOGPROBS}]",
        ),
        (
            "stop_token_ids",
            all(0 <= t < vocab_size for t in params.stop_token_ids),
            f"token ids in [0, {vocab_size - 1}]",
        ),
    )
    for name, ok, expected in checks:
        if not ok:
            raise InvalidArgument(
                f"sampling parameter '{name}' must be {expected}, got {getattr(params, name)!r}"
            )


def make_generator(seed: int | None) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(seed if seed is not None else random.getrandbits(63))
    return generator


@dataclass
class Choice:
    token_id: int
    logprob: float | None = None
    top_logprobs: dict[int, float] | None = None


@dataclass
class SamplingState:
    """What the sampler needs about one sequence."""

    params: SamplingParams
    generator: torch.Generator
    prompt_ids: list[int]
    output_ids: list[int] = field(default_factory=list)
    eos_ids: frozenset[int] = frozenset()
    matcher: Any = None  # the sequence's grammar matcher (structured outputs), if any

    def accept(self, token: int) -> None:
        """Record a chosen token (the grammar advances with it)."""
        self.output_ids.append(token)
        if self.matcher is not None and not self.matcher.is_terminated():
            self.matcher.accept_token(token)

    @property
    def greedy(self) -> bool:
        return self.params.temperature < GREEDY_EPS or self.params.top_k == 1

    @property
    def plain_greedy(self) -> bool:
        """Greedy with nothing that changes the logits and no log-probs wanted."""
        p = self.params
        return (
            self.greedy
            and p.repetition_penalty == 1.0
            and p.presence_penalty == 0.0
            and p.frequency_penalty == 0.0
            and p.logprobs is None
            and len(self.output_ids) >= p.min_tokens
        )


def choose(logits: torch.Tensor, states: list[SamplingState]) -> list[Choice]:
    """One next token per row of `logits` [B, V]; a row with a grammar chooses among the
    tokens it allows."""
    logits = logits.float()
    if any(s.matcher is not None for s in states):
        grammar.apply_masks(logits, [s.matcher for s in states])
    greedy: dict[int, Choice] = {}
    plain = [i for i, s in enumerate(states) if s.plain_greedy]
    if plain:
        picked = logits[plain].argmax(dim=-1).tolist()
        for i, token in zip(plain, picked, strict=True):
            greedy[i] = Choice(int(token))
    return [
        greedy[i] if i in greedy else _choose_one(logits[i], state)
        for i, state in enumerate(states)
    ]


def _penalise(x: torch.Tensor, state: SamplingState) -> torch.Tensor:
    p = state.params
    if p.repetition_penalty != 1.0:
        seen = torch.tensor(sorted(set(state.prompt_ids) | set(state.output_ids)), dtype=torch.long)
        values = x[seen]
        x[seen] = torch.where(
            values > 0, values / p.repetition_penalty, values * p.repetition_penalty
        )
    if (p.presence_penalty or p.frequency_penalty) and state.output_ids:
        counts = torch.bincount(
            torch.tensor(state.output_ids, dtype=torch.long), minlength=x.numel()
        )[: x.numel()]
        x -= p.frequency_penalty * counts.float() + p.presence_penalty * (counts > 0).float()
    if len(state.output_ids) < p.min_tokens:
        banned = [t for t in (*state.eos_ids, *p.stop_token_ids) if t < x.numel()]
        if banned:
            x[banned] = float("-inf")
    return x


def _filter(x: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    if params.top_k > 0 and params.top_k < x.numel():
        kth = torch.topk(x, params.top_k).values[-1]
        x = x.masked_fill(x < kth, float("-inf"))
    if params.top_p < 1.0:
        ordered, order = torch.sort(x, descending=True)
        probs = torch.softmax(ordered, dim=-1)
        drop = (torch.cumsum(probs, dim=-1) - probs) > params.top_p
        ordered = ordered.masked_fill(drop, float("-inf"))
        x = torch.empty_like(x).scatter_(0, order, ordered)
    if params.min_p > 0.0:
        probs = torch.softmax(x, dim=-1)
        x = x.masked_fill(probs < params.min_p * probs.max(), float("-inf"))
    return x


def _choose_one(raw: torch.Tensor, state: SamplingState) -> Choice:
    p = state.params
    x = _penalise(raw.clone(), state)
    if state.greedy:
        token = int(x.argmax())
    else:
        x = _filter(x / p.temperature, p)
        probs = torch.softmax(x, dim=-1)
        token = int(torch.multinomial(probs, 1, generator=state.generator))
    if p.logprobs is None:
        return Choice(token)
    logprobs = torch.log_softmax(raw, dim=-1)
    top = None
    if p.logprobs > 0:
        values, ids = torch.topk(logprobs, p.logprobs)
        top = {int(i): float(v) for i, v in zip(ids.tolist(), values.tolist(), strict=True)}
    return Choice(token, float(logprobs[token]), top)
