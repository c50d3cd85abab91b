"""Seeds derived from keys: the same key gives the same seed on every machine, process and run.

Every per-tile, per-image and per-step seed in fewstep is a hash of a text key (never Python's
`hash`, which is salted per process), so a result depends on the seed and what it belongs to
(tile position, file name, sampler stage) — not on the batch, the order or the worker it ran in.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import numpy as np


def seed_from(key: str, *, bits: int = 63, algorithm: str = "blake2b") -> int:
    """A `bits`-bit seed from a text key: the low bits of the key's digest read little-endian.
    blake2b (8-byte digest) for new keys; sha256 where a published seed list depends on it."""
    if algorithm == "blake2b":
        digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    else:
        digest = hashlib.new(algorithm, key.encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << bits) - 1)


def seed_states(entropy: int | Sequence[int], n: int) -> np.ndarray:
    """n independent uint64 seeds from integer entropy (numpy's SeedSequence), for seed tables."""
    import numpy as np

    ints = [int(entropy)] if isinstance(entropy, (int, np.integer)) else [int(e) for e in entropy]
    return np.random.SeedSequence(ints if len(ints) > 1 else ints[0]).generate_state(n, dtype=np.uint64)
