"""Which replica already holds which prompt prefix: chained hashes of exact token blocks.

A prompt's token ids (exactly what the engine will prefill) are cut into fixed-size blocks;
block i's hash covers the seed and every token up to the end of block i, so equal hashes mean
equal prefixes — as vLLM's prefix cache keys its KV blocks. The seed is the model name the
engine request names (a LoRA adapter is addressed as its own model name, so an adapter's
prefixes never match the base model's). A trailing partial block is not hashed: engines cache
full blocks only.

The index keeps, per replica, the block hashes of the prompts sent there, in an LRU of at most
`cap` entries: a write touches the prompt's blocks last-to-first, so a prompt's head is the most
recently used part and eviction trims long tails before shared heads. Each entry remembers
when it was last sent (a write counter), so that of two replicas holding a prefix the policy
can tell which one has it hot. The index is written
after each pick (the replica will hold those blocks once it has prefilled them), and a
replica's entries are dropped when it leaves the mesh or stops serving (a restart loses its
cache). Memory per entry is about `ENTRY_BYTES`, so `cap` bounds the index's memory.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Sequence

import numpy as np

#: Upper bound of one index entry (an OrderedDict slot with its int key; measured 150–210).
ENTRY_BYTES = 200


def block_hashes(seed: str, input_ids: Sequence[int], block_tokens: int) -> list[int]:
    """The chained hashes of `input_ids`' full blocks of `block_tokens` tokens."""
    ids = np.asarray(input_ids, dtype="<i8").tobytes()
    step = 8 * block_tokens
    digest = hashlib.blake2b(seed.encode(), digest_size=8).digest()
    hashes = []
    for start in range(0, len(ids) - step + 1, step):
        digest = hashlib.blake2b(digest + ids[start : start + step], digest_size=8).digest()
        hashes.append(int.from_bytes(digest, "little"))
    return hashes


class PrefixIndex:
    """Per replica address: an LRU set of block hashes, at most `cap` entries each."""

    def __init__(self, cap: int) -> None:
        if cap < 1:
            raise ValueError("the prefix index needs a cap of at least one block")
        self.cap = cap
        self._blocks: dict[str, OrderedDict[int, int]] = {}  # block hash → write number
        self._writes = 0

    def matched(self, address: str, hashes: Sequence[int]) -> int:
        """How many of the prompt's leading blocks `address` holds."""
        held = self._blocks.get(address)
        if not held:
            return 0
        count = 0
        for block in hashes:
            if block not in held:
                break
            count += 1
        return count

    def last_sent(self, address: str, block: int) -> int:
        """The write that last sent `block` to `address` (higher is later; 0: never)."""
        held = self._blocks.get(address)
        return held.get(block, 0) if held else 0

    def best(self, addresses: Iterable[str], hashes: Sequence[int]) -> dict[str, int]:
        """Leading blocks held, for each of `addresses`."""
        return {address: self.matched(address, hashes) for address in addresses}

    def record(self, address: str, hashes: Sequence[int]) -> None:
        """`address` now holds these blocks: touch them (head last), evict beyond the cap."""
        held = self._blocks.setdefault(address, OrderedDict())
        self._writes += 1
        for block in reversed(hashes):
            held[block] = self._writes
            held.move_to_end(block)
        while len(held) > self.cap:
            held.popitem(last=False)

    def purge(self, address: str) -> int:
        """Forget everything `address` held; how many entries went."""
        held = self._blocks.pop(address, None)
        return len(held) if held else 0

    def entries(self) -> dict[str, int]:
        """Entries per replica address."""
        return {address: len(held) for address, held in self._blocks.items()}
