"""Pure (Spark-free) encoding functions shared by the features job and serving."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from features.encoder import FeatureEncoder, apply_bin_edges, load_encoder_file, lookup_ids, save_encoder


def test_apply_bin_edges_scalars_arrays_and_nulls():
    edges = [10.0, 20.0, 30.0]
    assert [apply_bin_edges(edges, v) for v in (None, float("nan"), -5, 10.0, 10.5, 30.0, 31.0)] == \
           [0, 0, 1, 1, 2, 3, 4]
    out = apply_bin_edges(np.array(edges), np.array([np.nan, 5.0, 20.0, 99.0]))
    assert out.dtype == np.int32
    assert out.tolist() == [0, 1, 2, 4]
    assert apply_bin_edges([], 7.0) == 1  # no edges: every non-null value is bin 1


def test_apply_bin_edges_rejects_unsorted_edges():
    with pytest.raises(ValueError, match="strictly increasing"):
        apply_bin_edges([3.0, 1.0], 2.0)


def test_lookup_ids_maps_unknown_and_invalid_to_oov():
    values, ids = np.array([3, 7, 11], np.int64), np.array([2, 1, 3], np.int32)
    assert lookup_ids(values, ids, 7) == 1
    assert lookup_ids(values, ids, 8) == 0
    assert lookup_ids(values, ids, None) == 0
    got = lookup_ids(values, ids, np.array([11, 12, 3, 0]), valid=np.array([True, True, False, True]))
    assert got.tolist() == [3, 0, 0, 0]
    assert lookup_ids(np.zeros(0, np.int64), np.zeros(0, np.int32), np.array([1, 2])).tolist() == [0, 0]


def test_encode_batch_single_multi_numeric_and_cold():
    enc = FeatureEncoder.from_entries(
        {"user_id": {100: 1}, "ad_id": {1: 1}, "category_id": {5: 1}, "title_words": {9: 2, 4: 1}},
        {"price": [10.0], "review_count": []}, ad_window_counts={1: 6, 2: 1})
    n = 3
    none_ints = pa.array([None] * n, pa.int32())
    batch = pa.RecordBatch.from_pydict({
        "split": ["train"] * n, "impression_id": ["a", "b", "c"],
        "event_ts": pa.array([0, 1, 2], pa.timestamp("us", tz="UTC")),
        "ad_id": pa.array([1, 2, 3], pa.int64()), "click": pa.array([1, 0, 0], pa.int32()),
        "user_id": pa.array([100, 101, None], pa.int64()), "category_id": pa.array([5, 6, None], pa.int32()),
        "parent_category_id": none_ints, "brand_id": none_ints, "shop_id": none_ints,
        "price": pa.array([3.0, None, 50.0], pa.float64()), "review_count": pa.array([None, 0, 7], pa.int32()),
        "user_location": none_ints, "user_price_sensitivity": none_ints, "weekday": none_ints, "hour": none_ints,
        "query_title_match": none_ints,
        "title_words": pa.array([[9, 4, 77], None, [None, 9]], pa.list_(pa.int32())),
        "query_words": pa.array([[], None, [1]], pa.list_(pa.int32())),
        "hist_categories": pa.array([None] * n, pa.list_(pa.int32())),
        "hist_brands": pa.array([None] * n, pa.list_(pa.int32())),
        "hist_shops": pa.array([None] * n, pa.list_(pa.int32())),
    })
    out = enc.encode_batch(batch).to_pydict()
    assert out["f_user_id"] == [1, 0, 0]
    assert out["f_ad_id"] == [1, 0, 0]
    assert out["category_idx"] == out["f_category_id"] == [1, 0, 0]
    assert out["f_price"] == [1, 0, 2]
    assert out["f_review_count"] == [0, 1, 1]
    assert out["m_title_words"] == [[2, 1, 0], [], [0, 2]]
    assert out["m_query_words"] == [[], [], [0]]
    assert out["is_cold"] == [False, True, True]
    assert out["label"] == [1, 0, 0]
    assert enc.vocab_size("title_words") == 3 and enc.vocab_size("price") == 3 and enc.vocab_size("brand_id") == 1


@pytest.mark.parametrize("span", [50, 10**12])  # a dense id table, and a binary search over huge ids
def test_encode_single_arrays_equal_the_binary_search(span):
    rng = np.random.default_rng(5)
    entries = {int(v): i + 1 for i, v in enumerate(rng.choice(span, 40, replace=False))}
    encoder = FeatureEncoder.from_entries({"user_id": entries}, {"price": [1.0], "review_count": [1.0]})
    values = np.concatenate([rng.integers(-5, span + 5, 500), np.array(list(entries)), [-(2**63), 2**63 - 1]])
    valid = rng.random(values.size) > 0.2
    got = encoder.encode_single("user_id", values, valid)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, lookup_ids(*encoder.vocab["user_id"], values, valid))
    assert (encoder.direct_ids("user_id") is None) == (span > 10**6)
    assert encoder.encode_single("user_id", next(iter(entries))) == 1  # scalars take the same ids


def test_stable_ids_travel_in_encoder_npz_and_an_older_file_still_loads(tmp_path):
    """encoder.npz keeps each vocabulary value's stable id; a file written before the id registry
    (no stable ids) loads as before and encodes raw values the same, stable ids then unavailable."""
    vocab = {"user_id": {500: 2, 700: 1}, "title_words": {9: 1}}
    stable = {"user_id": {500: 31, 700: 4}, "title_words": {9: 12}}
    enc = FeatureEncoder.from_entries(vocab, {"price": [1.0], "review_count": [1.0]}, stable_ids=stable)
    save_encoder(enc, tmp_path / "new.npz")
    loaded = load_encoder_file(tmp_path / "new.npz")
    assert loaded.stable_ids["user_id"].tolist() == [31, 4]  # aligned with the sorted values 500, 700
    ids = loaded.stable_lookup("user_id").lookup(np.array([[4, 31, 5, 0, 99]]), None)[0]
    assert ids.tolist() == [1, 2, 0, 0, 0]  # inactive or unknown stable ids -> OOV
    with np.load(tmp_path / "new.npz") as z:  # an encoder.npz as published before the registry
        np.savez(tmp_path / "old.npz", **{k: z[k] for k in z.files if not k.startswith("vocab_stable_ids.")})
    old = load_encoder_file(tmp_path / "old.npz")
    assert old.stable_ids is None
    assert old.encode_single("user_id", np.array([700, 500, 1])).tolist() == [1, 2, 0]
    with pytest.raises(ValueError, match="no stable ids"):
        old.stable_lookup("user_id")
    with pytest.raises(ValueError, match=r"field 'user_id': vocabulary values \[500\] have no stable id"):
        FeatureEncoder.from_entries(vocab, {}, stable_ids={"user_id": {700: 4}})
