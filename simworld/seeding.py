"""Deterministic random streams: every draw comes from a Generator keyed by (seed, purpose, keys).

A stream never depends on which date range is being generated, so a day is the same whether it
is generated alone or inside a backfill.
"""

from __future__ import annotations

import zlib

import numpy as np


def purpose_code(purpose: str) -> int:
    """A stable integer for a purpose name (crc32; Python's hash() is salted per process)."""
    return zlib.crc32(purpose.encode("utf-8"))


def stream(seed: int, purpose: str, *keys: int) -> np.random.Generator:
    """The Generator for `purpose` under `seed` and non-negative integer `keys` (day, block, ...)."""
    if seed < 0:
        raise ValueError(f"bad value for 'world.seed': {seed!r}; allowed: an integer >= 0")
    for k in keys:
        if k < 0:
            raise ValueError(f"internal: random stream key {k!r} for {purpose!r} must be >= 0")
    return np.random.default_rng(np.random.SeedSequence([int(seed), purpose_code(purpose), *map(int, keys)]))
