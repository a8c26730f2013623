"""Sequence packing for embedding batches: forward passes without padding tokens.

Short sentences of different lengths padded to the longest waste much of a
batched forward (a batch of 11–18-token sentences is a quarter padding). Packing
lays the sequences end to end in rows of about `ROW_TOKENS` tokens, restarts
position ids at each sequence and gives attention a block-diagonal mask, so each
sequence only sees itself: the hidden states are those of a padded forward
(within float rounding), at the cost of the real tokens only.

Used for text-in embedding requests, whose result (mean pooling over the mask)
never looks at padding positions. `packing_supported` checks a model once at load
time by comparing packed and padded outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

ROW_TOKENS = 64
AGREEMENT_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Place:
    """Where one sequence landed: row, first column, length."""

    row: int
    start: int
    length: int


def _rows(lengths: list[int], row_tokens: int) -> list[list[int]]:
    """First-fit decreasing: sequence indices per row."""
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for r, free in enumerate(room):
            if lengths[index] <= free:
                rows[r].append(index)
                room[r] -= lengths[index]
                break
        else:
            rows.append([index])
            room.append(max(row_tokens, lengths[index]) - lengths[index])
    return rows


def pack(
    sequences: list[np.ndarray],
    type_ids: list[np.ndarray] | None,
    device: Any,
    row_tokens: int = ROW_TOKENS,
) -> tuple[dict[str, torch.Tensor], list[Place]]:
    """Model inputs for packed `sequences` (1-D token ids each) and where each one went."""
    lengths = [len(s) for s in sequences]
    rows = _rows(lengths, row_tokens)
    width = max(sum(lengths[i] for i in row) for row in rows)
    ids = np.zeros((len(rows), width), dtype=np.int64)
    positions = np.zeros_like(ids)
    types = np.zeros_like(ids)
    segment = np.full((len(rows), width), -1, dtype=np.int64)
    places: dict[int, Place] = {}
    for r, row in enumerate(rows):
        start = 0
        for index in row:
            end = start + lengths[index]
            ids[r, start:end] = sequences[index]
            positions[r, start:end] = np.arange(lengths[index])
            if type_ids is not None:
                types[r, start:end] = type_ids[index]
            segment[r, start:end] = index
            places[index] = Place(r, start, lengths[index])
            start = end
    same = segment[:, :, None] == segment[:, None, :]
    same |= np.eye(width, dtype=bool)[None]  # padding positions attend to themselves only
    mask = np.where(same, 0.0, np.finfo(np.float32).min).astype(np.float32)[:, None]
    inputs = {
        "input_ids": torch.from_numpy(ids).to(device),
        "position_ids": torch.from_numpy(positions).to(device),
        "attention_mask": torch.from_numpy(mask).to(device),
    }
    if type_ids is not None:
        inputs["token_type_ids"] = torch.from_numpy(types).to(device)
    return inputs, [places[index] for index in range(len(sequences))]


def unpack(hidden: np.ndarray, places: list[Place], width: int) -> np.ndarray:
    """[rows, P, H] packed states → [N, width, H], zeros where a padded batch would hold padding."""
    out = np.zeros((len(places), width, hidden.shape[-1]), dtype=hidden.dtype)
    for index, place in enumerate(places):
        out[index, : place.length] = hidden[place.row, place.start : place.start + place.length]
    return out


def packing_supported(model: Any, tokenizer: Any, device: Any) -> bool:
    """Does this model give the same states packed as padded? (position ids + 4-D masks
    honoured)."""
    texts = ["a short one", "a somewhat longer sentence to check packing with"]
    try:
        encoded = tokenizer(texts, padding=True, return_tensors="pt").to(device)
        with torch.inference_mode():
            padded = model(**encoded).last_hidden_state.float().cpu().numpy()
            lengths = encoded["attention_mask"].sum(dim=1).tolist()
            sequences = [encoded["input_ids"][i, :n].cpu().numpy() for i, n in enumerate(lengths)]
            inputs, places = pack(sequences, None, device)
            packed = model(**inputs).last_hidden_state.float().cpu().numpy()
    except (TypeError, ValueError, RuntimeError, IndexError):
        return False
    restored = unpack(packed, places, padded.shape[1])
    for index, n in enumerate(lengths):
        if not np.allclose(restored[index, :n], padded[index, :n], atol=AGREEMENT_TOLERANCE):
            return False
    return True
