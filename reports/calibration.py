"""Calibration bins (reliability plot data): mean predicted vs observed CTR per prediction bin.

    bins = calibration_bins(labels, preds)

The validate stage bins the full model's predictions of every holdout row and records them
(reports.report_data.CalibrationRecord); the run report draws that record.
"""

from __future__ import annotations

from typing import Any

import numpy as np

DEFAULT_BINS = 10


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
