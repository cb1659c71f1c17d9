"""The numpy layout reference (tests/features/layout_reference.py) and features/examples.py's table helpers."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from features.examples import take_rows, validation_split
from spark_jobs.example_assembly import NULL_AD_KEY
from tests.features.layout_reference import ad_group_layout, ad_order


@pytest.mark.parametrize("seed", range(6))


def test_ad_order_is_lexsort_with_nulls_ties_and_huge_ids(seed):
    rng = np.random.default_rng(seed)
    pool = np.array([NULL_AD_KEY, -5, 0, 3, 7, 2**62, 2**63 - 1], dtype=np.int64)
    for trial in range(60):
        n = int(rng.integers(0, 200))
        ads = rng.choice(pool[: int(rng.integers(1, pool.size + 1))], n)
        # unique within-ad keys (the packed fast path) or ties (the lexsort fallback)
        within = (rng.permutation(n) if trial % 3 else rng.integers(0, 4, n)).astype(np.int64)
        within += int(rng.integers(0, 2)) << 40
        np.testing.assert_array_equal(ad_order(ads, within), np.lexsort((within, ads)))


def test_ad_group_layout_is_a_permutation_of_contiguous_groups():
    rng = np.random.default_rng(1)
    ads = rng.choice(np.array([NULL_AD_KEY, 1, 2, 3, 50], dtype=np.int64), 500)
    within = rng.permutation(500).astype(np.int64)
    group_id, row_idx = ad_group_layout(ads, within, 7, seed=3, run_date=dt.date(2026, 3, 1))
    assert sorted(row_idx.tolist()) == list(range(500))
    for g in np.unique(group_id):
        rows = np.flatnonzero(group_id == g)
        assert len(set(ads[rows].tolist())) == 1 and rows.size <= 7
        idx = np.sort(row_idx[rows])
        assert idx[-1] - idx[0] + 1 == rows.size  # contiguous in training order
        # within a group, training order follows the within-ad order
        np.testing.assert_array_equal(within[rows][np.argsort(row_idx[rows])], np.sort(within[rows]))
    assert np.unique(group_id).tolist() == list(range(int(group_id.max()) + 1))
    with pytest.raises(ValueError, match="group_size must be >= 1, got 0"):
        ad_group_layout(ads, within, 0, seed=3, run_date=dt.date(2026, 3, 1))


def test_take_rows_equals_arrow_take():
    table = pa.table({"a": np.arange(20), "m": [[i] * (i % 4) for i in range(20)], "s": [str(i) for i in range(20)]})
    order = np.random.default_rng(0).permutation(20)
    assert take_rows(table, order).equals(table.take(pa.array(order)))


def _ids_table(n: int, prefix: str = "imp") -> pa.Table:
    return pa.table({"row_idx": np.arange(n, dtype=np.int64), "group_id": np.arange(n, dtype=np.int64) // 7,
                     "impression_id": [f"{prefix}-{i}" for i in range(n)]})


def test_validation_split_is_a_seeded_hash_sample_in_row_order():
    table = _ids_table(20_000)
    fit, valid = validation_split(table, 0.05, seed=3)
    assert fit.num_rows + valid.num_rows == table.num_rows
    assert 0.04 < valid.num_rows / table.num_rows < 0.06
    assert not set(fit["impression_id"].to_pylist()) & set(valid["impression_id"].to_pylist())
    for part in (fit, valid):  # row order kept, so ad groups stay contiguous
        assert np.all(np.diff(part["row_idx"].to_numpy()) > 0)
    # The same rows in every process and whatever the row order; another seed, another sample.
    again = validation_split(table.take(np.random.default_rng(0).permutation(table.num_rows)), 0.05, seed=3)[1]
    assert set(again["impression_id"].to_pylist()) == set(valid["impression_id"].to_pylist())
    other = validation_split(table, 0.05, seed=4)[1]
    assert set(other["impression_id"].to_pylist()) != set(valid["impression_id"].to_pylist())


def test_validation_split_off_or_empty_keeps_every_row():
    table = _ids_table(50)
    assert validation_split(table, 0.0, seed=1) == (table, None)
    assert validation_split(table, 1e-9, seed=1) == (table, None)  # no row falls in the sample
