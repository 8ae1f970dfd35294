"""Seeds for named sub-streams: problem sets, data feeds and randomised optimizers draw from these, so the
same seed gives the same draws on any machine, device or worker count."""

from __future__ import annotations

import hashlib

import numpy as np
import torch

__all__ = ["derive_seed", "make_generator"]


def _words(key: int | str) -> list[int]:
    """A key as 32-bit words: strings through SHA-256 (all of their characters count), ints as two words."""
    if isinstance(key, str):
        digest = hashlib.sha256(key.encode()).digest()
        return [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]
    if key < 0:
        raise ValueError(f"seed keys must be non-negative, got {key}")
    return [key & 0xFFFFFFFF, key >> 32]


def derive_seed(seed: int, *keys: int | str) -> int:
    """An independent 63-bit seed for a named sub-stream, e.g. derive_seed(0, "train", 17)."""
    words = [w for key in keys for w in _words(key)]
    state = np.random.SeedSequence(entropy=seed, spawn_key=words).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


def make_generator(seed: int) -> torch.Generator:
    """A CPU generator; problems are drawn on the CPU in float64 and then moved, so any device agrees."""
    return torch.Generator().manual_seed(seed)
