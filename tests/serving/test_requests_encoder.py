"""RequestEncoder's direct vocabulary lookups give exactly FeatureEncoder.encode_single's ids."""

from __future__ import annotations

import numpy as np

from features.encoder import VOCAB_FIELDS, FeatureEncoder
from features.spec import MULTI_FIELDS, NUMERIC_FIELDS, SINGLE_FIELDS
from serving.requests import RequestColumns, RequestEncoder, encode_requests

SINGLE_NAMES = tuple(sorted(SINGLE_FIELDS))
MULTI_NAMES = tuple(sorted(MULTI_FIELDS))


def _encoder(rng: np.random.Generator) -> FeatureEncoder:
    """Sparse vocabularies with negative values; user_id spans more than the direct-table limit."""
    entries = {}
    for name in VOCAB_FIELDS:
        values = rng.choice(np.arange(-50, 400), size=60, replace=False)
        entries[name] = {int(v): 1 + i for i, v in enumerate(values)}
    entries["user_id"] = {-(1 << 40): 1, 7: 2, 1 << 40: 3}  # too wide for a direct array
    edges = {name: [0.5, 2.5, 10.0] for name in NUMERIC_FIELDS}
    return FeatureEncoder.from_entries(entries, edges)


def _raw_values(rng: np.random.Generator, encoder: FeatureEncoder, name: str, n: int) -> np.ndarray:
    known = encoder.vocab[name][0]
    pool = np.concatenate([known, rng.integers(-100, 500, 40), known.max(initial=0) + np.arange(1, 4),
                           known.min(initial=0) - np.arange(1, 4),
                           [np.iinfo(np.int64).min, np.iinfo(np.int64).max, 0]]).astype(np.int64)
    return rng.choice(pool, size=n)


def test_direct_lookups_equal_encode_single_for_every_field():
    rng = np.random.default_rng(0)
    encoder = _encoder(rng)
    fast = RequestEncoder(encoder, SINGLE_NAMES, MULTI_NAMES)
    assert "user_id" not in fast.direct and "ad_id" in fast.direct and "title_words" in fast.direct
    for name in VOCAB_FIELDS:
        values = _raw_values(rng, encoder, name, 500)
        valid = rng.random(500) < 0.8
        np.testing.assert_array_equal(fast.ids(name, values), encoder.encode_single(name, values))
        np.testing.assert_array_equal(fast.ids(name, values, valid), encoder.encode_single(name, values, valid))
        assert (fast.ids(name, values) > 0).any() and (fast.ids(name, values) == 0).any()


def test_encode_equals_encode_requests():
    rng = np.random.default_rng(1)
    encoder = _encoder(rng)
    b = 40
    single = {}
    for name in SINGLE_FIELDS:
        if name in NUMERIC_FIELDS:
            values = rng.random(b) * 12
            values[::7] = np.nan
            single[name] = (values, ~np.isnan(values))
        else:
            single[name] = (_raw_values(rng, encoder, name, b), rng.random(b) < 0.9)
    multi = {}
    for name in MULTI_FIELDS:
        lengths = rng.integers(0, 4, b)
        multi[name] = (_raw_values(rng, encoder, name, int(lengths.sum())), lengths)
    cols = RequestColumns(b, single, multi)
    got = RequestEncoder(encoder, SINGLE_NAMES, MULTI_NAMES).encode(cols)
    want = encode_requests(encoder, cols, SINGLE_NAMES, MULTI_NAMES)
    np.testing.assert_array_equal(got.single, want.single)
    np.testing.assert_array_equal(got.category, want.category)
    np.testing.assert_array_equal(got.ad_id, want.ad_id)
    for name in MULTI_NAMES:
        np.testing.assert_array_equal(got.multi_values[name], want.multi_values[name])
        np.testing.assert_array_equal(got.multi_offsets[name], want.multi_offsets[name])


def test_byte_budget_leaves_the_rest_to_encode_single():
    rng = np.random.default_rng(2)
    encoder = _encoder(rng)
    fast = RequestEncoder(encoder, SINGLE_NAMES, MULTI_NAMES, max_bytes=4 * 1000)
    assert 0 < len(fast.direct) < len(VOCAB_FIELDS) - 1
    for name in VOCAB_FIELDS:
        values = _raw_values(rng, encoder, name, 100)
        np.testing.assert_array_equal(fast.ids(name, values), encoder.encode_single(name, values))
