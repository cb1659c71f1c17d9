"""Calibration bins (reliability plot data): mean predicted vs observed CTR per prediction bin.

    bins = calibration_bins(labels, preds)          # call where holdout predictions exist
    record["calibration_bins"] = bins                # e.g. in validation.json

The run report draws whatever bins the validate stage recorded (validation.json key
"calibration_bins") or the train stage recorded (model manifest metrics "calibration_bins");
when neither did, it scores a bounded sample of the holdout snapshot with the run's model
(`sample_holdout_predictions`), so the plot also exists for runs that stopped after training.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_BINS = 10
# The report's own holdout sample (when no stage recorded bins) must keep the page's render time
# well under 20 s on CPU: it is sized to spend about SAMPLE_SECONDS embedding ad images.
SAMPLE_SECONDS = 3.0
PROBE_ADS = 16  # images embedded (and timed) to size the sample
SAMPLE_MAX_ROWS = 50_000  # rows scored at most (variant dcn has no image cost at all)
SAMPLE_SEED = 20200823  # the paper's conference date: any fixed value keeps reports reproducible


def calibration_bins(labels: Any, preds: Any, n_bins: int = DEFAULT_BINS) -> list[dict[str, float]]:
    """Equal-count bins of the predictions sorted ascending, each
    {"lo", "hi", "n", "mean_pred", "observed_ctr"} (lo/hi: the bin's smallest/largest prediction).

    Equal-count rather than equal-width bins because CTR predictions crowd near zero; with fewer
    rows than `n_bins` every row is its own bin. Empty inputs give no bins.
    """
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(preds, dtype=np.float64)
    if y.ndim != 1 or p.ndim != 1 or len(y) != len(p):
        raise ValueError(f"labels and preds must be 1-d of one length, got shapes {y.shape} and {p.shape}")
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be an integer >= 1, got {n_bins!r}")
    if len(p) == 0:
        return []
    if not np.isfinite(p).all() or p.min() < 0 or p.max() > 1:
        raise ValueError(f"preds must be probabilities in [0, 1], got range [{np.nanmin(p)}, {np.nanmax(p)}]")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError(f"labels must be 0 or 1, got values {sorted(set(np.unique(y).tolist()) - {0.0, 1.0})[:5]}")
    order = np.argsort(p, kind="stable")
    bins = []
    for idx in np.array_split(order, min(n_bins, len(p))):
        bins.append({"lo": float(p[idx].min()), "hi": float(p[idx].max()), "n": int(len(idx)),
                     "mean_pred": float(p[idx].mean()), "observed_ctr": float(y[idx].mean())})
    return bins


@dataclass(frozen=True)
class HoldoutSample:
    """Holdout predictions of a bounded sample of ads (all impressions of each sampled ad)."""

    labels: np.ndarray  # (n,) 0/1
    preds: np.ndarray  # (n,) pCTR
    n_ads: int  # ads sampled
    n_ads_total: int  # ads in the holdout with an image
    n_rows_total: int  # holdout impressions


def sample_holdout_predictions(model: Any, snapshot_dir: str | os.PathLike,
                               seconds_budget: float = SAMPLE_SECONDS, max_rows: int = SAMPLE_MAX_ROWS
                               ) -> HoldoutSample:
    """Score a random sample of holdout ads (every impression of each) from a training snapshot
    (<snapshot>/holdout/*.parquet, <snapshot>/images/*.parquet) with `model`.

    Ads are sampled uniformly (a fixed permutation, so a smaller sample is a prefix of a larger
    one), so every holdout impression has the same chance to be in the sample and the bins
    estimate the whole holdout's. The visual tower dominates the cost, so the number of ads is
    sized from a timed probe of PROBE_ADS images to take about `seconds_budget`; rows are capped
    at `max_rows`. Raises FileNotFoundError naming the snapshot folder when it is incomplete.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from models.train import embed_images, predict
    from models.train_job import decode_images

    snap = os.fspath(snapshot_dir)
    hold_dir, img_dir = os.path.join(snap, "holdout"), os.path.join(snap, "images")
    if not os.path.isdir(hold_dir) or (model.uses_images and not os.path.isdir(img_dir)):
        raise FileNotFoundError(f"no holdout snapshot at {snap} (holdout/ and images/ are needed)")
    holdout = pq.read_table(hold_dir)
    if "row_idx" in holdout.column_names:
        holdout = holdout.sort_by("row_idx")  # groups stay contiguous, as the batch planner needs
    n_rows_total = holdout.num_rows
    hold_ad = holdout.column("ad_id").to_numpy(zero_copy_only=False).astype(np.int64)
    hold_ads = np.unique(hold_ad)
    images_tbl = None
    if model.uses_images:
        images_tbl = pq.read_table(img_dir, columns=["ad_id", "image_bytes"])
        hold_ads = np.intersect1d(hold_ads, images_tbl.column("ad_id").to_numpy(zero_copy_only=False))
    shuffled = np.random.default_rng(SAMPLE_SEED).permutation(hold_ads)

    def decode(ads: np.ndarray) -> dict[int, np.ndarray]:
        img = images_tbl.filter(pc.is_in(images_tbl.column("ad_id"), value_set=pa.array(ads, pa.int64())))
        return decode_images(img.column("image_bytes").to_pylist(), img.column("ad_id").to_pylist())

    n_ads = len(shuffled)
    if model.uses_images and len(shuffled) > PROBE_ADS:
        probe = shuffled[:PROBE_ADS]
        probe_images = decode(probe)
        first_row = {int(a): i for i, a in reversed(list(enumerate(hold_ad)))}
        cats = holdout.column("category_idx").to_numpy(zero_copy_only=False).astype(np.int64)
        started = time.perf_counter()
        embed_images(model, np.stack([probe_images[int(a)] for a in probe]),
                     np.array([cats[first_row[int(a)]] for a in probe]))
        per_ad = (time.perf_counter() - started) / len(probe)
        n_ads = max(PROBE_ADS, int(seconds_budget / max(per_ad, 1e-9)))
    chosen = np.sort(shuffled[:n_ads])
    sample = holdout.filter(pc.is_in(holdout.column("ad_id"), value_set=pa.array(chosen, pa.int64())))
    if sample.num_rows > max_rows:
        sample = sample.slice(0, max_rows)
        chosen = np.unique(sample.column("ad_id").to_numpy(zero_copy_only=False))
    images = decode(chosen) if model.uses_images else None
    labels = sample.column("label").to_numpy(zero_copy_only=False).astype(np.float64)
    preds = predict(model, sample, images) if sample.num_rows else np.zeros(0)
    log.info("calibration sample: %d of %d holdout ads, %d of %d rows", len(chosen), len(hold_ads),
             sample.num_rows, n_rows_total)
    return HoldoutSample(labels=labels, preds=np.asarray(preds, dtype=np.float64), n_ads=int(len(chosen)),
                         n_ads_total=int(len(hold_ads)), n_rows_total=int(n_rows_total))
