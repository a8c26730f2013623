"""Batched decoding state over transformers' KV caches: prefill, one step, drop rows, merge.

A batch is a set of sequences whose key/value caches share one tensor per layer,
left-padded in time (the attention mask marks the padding; causal models get
position ids from the mask, so padding never shifts a sequence's positions).
New sequences are prefilled as a batch of their own and merged in between two
steps; finished or cancelled sequences are dropped between steps, and the
padding columns nobody needs any more are trimmed away.

Encoder-decoder models (T5, BART) keep the encoder states and the cached
cross-attention keys right-padded on the encoder axis, with the encoder mask.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from transformers.cache_utils import (
    CacheLayerMixin,
    DynamicCache,
    DynamicLayer,
    EncoderDecoderCache,
)


def _pad_time(tensor: torch.Tensor, width: int, *, left: bool, dim: int) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    pad = torch.zeros(shape, dtype=tensor.dtype, device=tensor.device)
    return torch.cat([pad, tensor] if left else [tensor, pad], dim=dim)


def _layers(cache: DynamicCache) -> list[tuple[CacheLayerMixin, torch.Tensor, torch.Tensor]]:
    """Each layer with its keys and values: attention layers of a cache prefill has filled."""
    layers = []
    for layer in cache.layers:
        assert isinstance(layer, CacheLayerMixin), "an attention layer (keys and values)"
        assert layer.keys is not None and layer.values is not None, "a filled layer"
        layers.append((layer, layer.keys, layer.values))
    return layers


def _mergeable(cache: DynamicCache) -> bool:
    return all(type(layer) is DynamicLayer for layer in cache.layers)


def _merge_caches(a: DynamicCache, b: DynamicCache, *, left: bool) -> None:
    """Append b's rows to a, padding the shorter along time (dim -2)."""
    for (layer, keys_a, values_a), (_, keys_b, values_b) in zip(
        _layers(a), _layers(b), strict=True
    ):
        width = max(keys_a.shape[-2], keys_b.shape[-2])
        layer.keys = torch.cat(
            [
                _pad_time(keys_a, width, left=left, dim=-2),
                _pad_time(keys_b, width, left=left, dim=-2),
            ]
        )
        layer.values = torch.cat(
            [
                _pad_time(values_a, width, left=left, dim=-2),
                _pad_time(values_b, width, left=left, dim=-2),
            ]
        )


def _select_cache(cache: DynamicCache, rows: torch.Tensor, time: slice) -> None:
    for layer, keys, values in _layers(cache):
        layer.keys = keys[rows][..., time, :]
        layer.values = values[rows][..., time, :]


def _merge_masks(a: torch.Tensor, b: torch.Tensor, *, left: bool) -> torch.Tensor:
    width = max(a.shape[1], b.shape[1])
    return torch.cat([_pad_time(a, width, left=left, dim=1), _pad_time(b, width, left=left, dim=1)])


def _kept_columns(mask: torch.Tensor, *, left: bool) -> slice:
    used = mask.any(dim=0).nonzero()
    if used.numel() == 0:
        return slice(0, 0)
    return slice(int(used[0]), None) if left else slice(0, int(used[-1]) + 1)


class CausalBatch:
    """Decoder-only models (Llama, GPT-2, ...)."""

    def __init__(self, model: Any, cache: DynamicCache, mask: torch.Tensor) -> None:
        self.model = model
        self.cache = cache
        self.mask = mask

    @property
    def size(self) -> int:
        return int(self.mask.shape[0])

    @property
    def mergeable(self) -> bool:
        return _mergeable(self.cache)

    @classmethod
    def prefill(
        cls, model: Any, prompts: list[list[int]], pad_id: int
    ) -> tuple[CausalBatch, torch.Tensor]:
        device = model.device
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=model.config)
        extra = (
            {"logits_to_keep": 1}
            if "logits_to_keep" in inspect.signature(model.forward).parameters
            else {}
        )
        with torch.inference_mode():
            out = model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
                **extra,
            )
        return cls(model, out.past_key_values, mask), out.logits[:, -1, :]

    def decode(self, tokens: list[int]) -> torch.Tensor:
        device = self.mask.device
        self.mask = torch.cat(
            [self.mask, torch.ones((self.size, 1), dtype=self.mask.dtype, device=device)], dim=1
        )
        positions = self.mask.sum(dim=1, keepdim=True) - 1
        with torch.inference_mode():
            out = self.model(
                input_ids=torch.tensor(tokens, device=device)[:, None],
                attention_mask=self.mask,
                position_ids=positions,
                past_key_values=self.cache,
                use_cache=True,
            )
        self.cache = out.past_key_values
        return out.logits[:, -1, :]

    def select(self, rows: list[int]) -> None:
        index = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        mask = self.mask[index]
        time = _kept_columns(mask, left=True)
        _select_cache(self.cache, index, time)
        self.mask = mask[:, time]

    def extend(self, other: CausalBatch) -> None:
        _merge_caches(self.cache, other.cache, left=True)
        self.mask = _merge_masks(self.mask, other.mask, left=True)


class Seq2SeqBatch:
    """Encoder-decoder models: the encoder runs once per sequence at prefill."""

    def __init__(
        self,
        model: Any,
        encoder_states: torch.Tensor,
        encoder_mask: torch.Tensor,
        cache: EncoderDecoderCache,
        mask: torch.Tensor,
    ) -> None:
        self.model = model
        self.encoder_states = encoder_states
        self.encoder_mask = encoder_mask
        self.cache = cache
        self.mask = mask

    @property
    def size(self) -> int:
        return int(self.mask.shape[0])

    @property
    def mergeable(self) -> bool:
        return _mergeable(self.cache.self_attention_cache) and _mergeable(
            self.cache.cross_attention_cache
        )

    @classmethod
    def prefill(
        cls, model: Any, prompts: list[list[int]], pad_id: int, start_id: int
    ) -> tuple[Seq2SeqBatch, torch.Tensor]:
        device = model.device
        width = max(len(p) for p in prompts)
        ids = torch.tensor([p + [pad_id] * (width - len(p)) for p in prompts], device=device)
        enc_mask = torch.tensor(
            [[1] * len(p) + [0] * (width - len(p)) for p in prompts], device=device
        )
        mask = torch.ones((len(prompts), 1), dtype=torch.long, device=device)
        cache = EncoderDecoderCache(
            DynamicCache(config=model.config), DynamicCache(config=model.config)
        )
        with torch.inference_mode():
            encoded = model.get_encoder()(input_ids=ids, attention_mask=enc_mask)
            out = model(
                encoder_outputs=encoded,
                attention_mask=enc_mask,
                decoder_input_ids=torch.full((len(prompts), 1), start_id, device=device),
                decoder_attention_mask=mask,
                past_key_values=cache,
                use_cache=True,
            )
        batch = cls(model, encoded.last_hidden_state, enc_mask, out.past_key_values, mask)
        return batch, out.logits[:, -1, :]

    def decode(self, tokens: list[int]) -> torch.Tensor:
        device = self.mask.device
        self.mask = torch.cat(
            [self.mask, torch.ones((self.size, 1), dtype=self.mask.dtype, device=device)], dim=1
        )
        with torch.inference_mode():
            out = self.model(
                encoder_outputs=(self.encoder_states,),
                attention_mask=self.encoder_mask,
                decoder_input_ids=torch.tensor(tokens, device=device)[:, None],
                decoder_attention_mask=self.mask,
                past_key_values=self.cache,
                use_cache=True,
            )
        self.cache = out.past_key_values
        return out.logits[:, -1, :]

    def select(self, rows: list[int]) -> None:
        index = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        mask, enc_mask = self.mask[index], self.encoder_mask[index]
        time, enc_time = _kept_columns(mask, left=True), _kept_columns(enc_mask, left=False)
        _select_cache(self.cache.self_attention_cache, index, time)
        _select_cache(self.cache.cross_attention_cache, index, enc_time)
        self.mask, self.encoder_mask = mask[:, time], enc_mask[:, enc_time]
        self.encoder_states = self.encoder_states[index][:, enc_time]

    def extend(self, other: Seq2SeqBatch) -> None:
        _merge_caches(self.cache.self_attention_cache, other.cache.self_attention_cache, left=True)
        _merge_caches(
            self.cache.cross_attention_cache, other.cache.cross_attention_cache, left=False
        )
        self.mask = _merge_masks(self.mask, other.mask, left=True)
        self.encoder_mask = _merge_masks(self.encoder_mask, other.encoder_mask, left=False)
        width = self.encoder_mask.shape[1]
        self.encoder_states = torch.cat(
            [
                _pad_time(self.encoder_states, width, left=False, dim=1),
                _pad_time(other.encoder_states, width, left=False, dim=1),
            ]
        )
