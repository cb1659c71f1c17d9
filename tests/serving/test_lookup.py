"""Frequency control, reductions, the serving files and their checksums (no Spark)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from serving.lookup import (IntegrityError, LookupTable, Reduction, bytes_per_ad, coverage_curve, fit_pca,
                            make_reduction, select_ads, write_lookup_files)
from spark_jobs.build_lookup import BuildLookupError, stack_images
from spark_jobs.validate import holdout_coverage_curve


def test_select_ads_ranks_by_impressions_then_ad_id_within_budgets():
    ads = np.array([50, 10, 30, 20, 40])
    imps = np.array([5, 9, 5, 0, 7])
    assert ads[select_ads(ads, imps)].tolist() == [10, 40, 30, 50, 20]
    assert ads[select_ads(ads, imps, budget_ads=3)].tolist() == [10, 40, 30]
    # 2 rows of 100 bytes fit in 250 bytes; the row budget (3) is not binding
    assert ads[select_ads(ads, imps, budget_ads=3, budget_bytes=250, row_bytes=100)].tolist() == [10, 40]
    with pytest.raises(ValueError, match="budget"):
        select_ads(ads, imps, budget_ads=-1)


def test_bytes_per_ad_and_coverage_curve():
    assert bytes_per_ad(150, "none", 32) == 150 * 4 + 12
    assert bytes_per_ad(150, "float16", 32) == 150 * 2 + 12
    assert bytes_per_ad(150, "pca", 32) == 32 * 4 + 12
    curve = coverage_curve(np.array([3, 1]), np.array([7, 8]), np.array([7, 7, 8, 9]), [1, 2])
    assert curve == [{"budget_ads": 1, "coverage": 0.5}, {"budget_ads": 2, "coverage": 0.75}]


def test_pca_reconstructs_low_rank_rows_and_is_deterministic():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(40, 3)) @ rng.normal(size=(3, 10)) + 2.0).astype(np.float32)  # rank 3 + offset
    red = make_reduction(x, "pca", 3)
    assert red.encode(x).shape == (40, 3)
    np.testing.assert_allclose(red.roundtrip(x), x, atol=1e-4)
    mean2, comps2 = fit_pca(x, 3)
    np.testing.assert_array_equal(comps2, red.pca_components)
    assert make_reduction(x, "pca", 2).roundtrip(x).shape == (40, 10)
    with pytest.raises(ValueError, match="unknown reduction"):
        make_reduction(x, "int8", 3)


@pytest.mark.parametrize("method", ["none", "float16", "pca"])
def test_files_roundtrip_lookup_and_fallbacks(tmp_path, method):
    rng = np.random.default_rng(1)
    ads = np.array([30, 10, 20, 40], dtype=np.int64)
    cats = np.array([1, 2, 1, 2])
    x = rng.normal(size=(4, 6)).astype(np.float32)
    red = make_reduction(x, method, 4)
    manifest = write_lookup_files(tmp_path, ads, cats, x, red, run_date="2026-01-03", model_version="m1",
                                  model_sha256="ab" * 32)
    assert manifest["rows"] == 4 and manifest["dims"] == (4 if method == "pca" else 6)
    table = LookupTable.load(tmp_path)
    got, hit = table.lookup(np.array([20, 99, 10, 98]), np.array([1, 2, 2, 7]))
    assert hit.tolist() == [True, False, True, False]
    expected = red.roundtrip(x)
    np.testing.assert_allclose(got[0], expected[2], atol=1e-6)
    np.testing.assert_allclose(got[2], expected[1], atol=1e-6)
    stored = red.encode(x).astype(np.float64)
    # ad 99 falls back to category 2's mean (ads 10 and 40), ad 98 (unknown category 7) to the global mean
    np.testing.assert_allclose(got[1], red.decode(stored[[1, 3]].mean(0, keepdims=True))[0], atol=1e-5)
    np.testing.assert_allclose(got[3], red.decode(stored.mean(0, keepdims=True))[0], atol=1e-5)


def test_tampered_or_missing_file_is_refused_by_name(tmp_path):
    x = np.ones((2, 3), np.float32)
    write_lookup_files(tmp_path, np.array([1, 2]), np.array([0, 0]), x, Reduction("none"), run_date="d",
                       model_version="m", model_sha256="0" * 64)
    emb = np.load(tmp_path / "embeddings.npy")
    emb[0, 0] = 5.0
    np.save(tmp_path / "embeddings.npy", emb)
    with pytest.raises(IntegrityError, match="embeddings.npy"):
        LookupTable.load(tmp_path)
    (tmp_path / "categories.npy").unlink()
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["files"].pop("embeddings.npy")
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IntegrityError, match="categories.npy"):
        LookupTable.load(tmp_path)


def test_duplicate_ad_ids_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="unique"):
        write_lookup_files(tmp_path, np.array([1, 1]), np.array([0, 0]), np.ones((2, 3)), Reduction("none"),
                           run_date="d", model_version="m", model_sha256="0" * 64)


def test_holdout_coverage_curve_halves_the_table():
    curve = holdout_coverage_curve(np.array([1, 2, 3, 4]), np.array([9, 5, 1, 0]), np.array([1, 1, 2, 4]), points=3)
    assert curve == [{"budget_ads": 1, "coverage": 0.5}, {"budget_ads": 2, "coverage": 0.75},
                     {"budget_ads": 4, "coverage": 1.0}]


def test_stack_images_blanks_missing_ads_only_when_asked():
    img = np.zeros((4, 4, 3), np.uint8)
    out = stack_images({7: img}, np.array([7, 8]), blank_missing=True)
    assert out.shape == (2, 4, 4, 3) and (out[1] == 128).all()
    with pytest.raises(BuildLookupError, match="ad 8 has no bronze image"):
        stack_images({7: img}, np.array([7, 8]))
    with pytest.raises(BuildLookupError, match="shape"):
        stack_images({7: img, 8: np.zeros((5, 5, 3), np.uint8)}, np.array([7, 8]))
