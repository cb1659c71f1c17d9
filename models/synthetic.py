"""Random encoded examples, feature spec and images with the pipeline's shapes, for tests and
benchmarks. Not a simulator: labels are random (with a weak dependence on image brightness so
that training has something to learn)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.spec import MULTI_FIELDS, SINGLE_FIELDS, FeatureSpec


def make_spec(n_categories: int = 8, vocab: int = 50) -> FeatureSpec:
    """A spec with every contract field, vocab ``vocab`` (category_id: ``n_categories``)."""
    single = {name: vocab for name in SINGLE_FIELDS}
    single["category_id"] = n_categories
    return FeatureSpec(single=single, multi={name: vocab for name in MULTI_FIELDS})


def make_examples(spec: FeatureSpec, n_ads: int = 20, impressions_per_ad: tuple[int, int] = (8, 25),
                  image_size: int = 32, seed: int = 0, max_list_len: int = 4,
                  cold_share: float = 0.2) -> tuple[pd.DataFrame, dict[int, np.ndarray]]:
    """Encoded examples (one group per ad, rows in group order) and an ad_id -> image lookup.

    Each ad has ``impressions_per_ad`` (inclusive range) impressions in one group; lists of
    multi-valued fields have 0..max_list_len ids (empty lists included)."""
    rng = np.random.default_rng(seed)
    n_cat = spec.single.get("category_id", 1)
    ad_ids = rng.choice(np.arange(1000, 1000 + 50 * n_ads), size=n_ads, replace=False)
    ad_cat = rng.integers(0, n_cat, size=n_ads)
    images = {int(a): rng.integers(0, 256, size=(image_size, image_size, 3), dtype=np.uint8) for a in ad_ids}
    brightness = np.array([images[int(a)].mean() / 255.0 for a in ad_ids])
    counts = rng.integers(impressions_per_ad[0], impressions_per_ad[1] + 1, size=n_ads)
    ad_of_row = np.repeat(np.arange(n_ads), counts)  # (n,)
    n = len(ad_of_row)
    cols: dict[str, object] = {
        "row_idx": np.arange(n, dtype=np.int64),
        "group_id": ad_of_row.astype(np.int64),
        "impression_id": [f"imp-{seed}-{i}" for i in range(n)],
        "ad_id": ad_ids[ad_of_row].astype(np.int64),
        "category_idx": ad_cat[ad_of_row].astype(np.int32),
    }
    p_click = 0.05 + 0.3 * brightness[ad_of_row]
    cols["label"] = (rng.random(n) < p_click).astype(np.int32)
    cols["is_cold"] = rng.random(n_ads)[ad_of_row] < cold_share
    for name, vocab in spec.single.items():
        cols[f"f_{name}"] = rng.integers(0, vocab, size=n).astype(np.int32)
    if "category_id" in spec.single:
        cols["f_category_id"] = cols["category_idx"]
    for name, vocab in spec.multi.items():
        lengths = rng.integers(0, max_list_len + 1, size=n)
        cols[f"m_{name}"] = [rng.integers(0, vocab, size=k).astype(np.int32) for k in lengths]
    return pd.DataFrame(cols), images
