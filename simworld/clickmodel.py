"""The ground-truth click model.

    logit = intercept + user bias + ad quality - price x price sensitivity + query-title match
            + history-category match + hour effect + visual part + weekday effect
    visual part = w_generic * brightness cue                              (in [-1, 1])
                + 2 * w_position * (1 - category_specificity) * mark cue  (+1 top, -1 bottom, 0)
                + 2 * w_category * category_specificity * (conjunction - P(conjunction))
                + 2 * w_brand * (brand logo conjunction - P(conjunction))   (with world.brand_logos)

The factor 2 makes the default category_specificity = 0.5 give the nominal weights (1.5 for the
positional pattern, 2 for the category conjunction), the mixture meant to separate every rung
of the paper's Table 8. The intercept is calibrated per day on everything but the weekday effect,
so the mean CTR is close to `base_ctr` and the weekday effect still moves it.
"""

from __future__ import annotations

import numpy as np

from core.config import WorldConfig
from simworld.world import BLOB_KIND_P, BLOB_TARGET, AdTable

PRICE_SENSITIVITY_WEIGHT = 0.25  # per sensitivity level above the middle, per price z-score
QUERY_MATCH_WEIGHT = 0.35  # per matching query word, up to QUERY_MATCH_CAP
QUERY_MATCH_CAP = 3
HISTORY_MATCH_WEIGHT = 0.5  # the ad's category is among the user's recent clicks
# Monday..Sunday; CTR rises at the weekend.
WEEKDAY_CTR = np.array([-0.04, -0.04, -0.02, 0.0, 0.03, 0.08, 0.06])
# CTR by hour of day: lowest at night, highest in the evening.
HOUR_CTR = (0.15 * np.cos(2 * np.pi * (np.arange(24) - 21) / 24)).astype(np.float32)
CALIBRATION_ROWS = 50_000  # rows used to calibrate the intercept (the day's first, a random order)


def visual_logit(cfg: WorldConfig, ads: AdTable) -> np.ndarray:
    """The visual part of each ad's logit, shape (n,)."""
    spec = cfg.category_specificity
    p_target = float(BLOB_KIND_P[BLOB_TARGET])
    logit = (cfg.w_generic * ads.visual_generic
             + 2.0 * cfg.w_position * (1.0 - spec) * ads.visual_position
             + 2.0 * cfg.w_category * spec * (ads.visual_category - p_target)).astype(np.float64)
    if cfg.brand_logos and cfg.w_brand:
        logit += 2.0 * cfg.w_brand * (ads.visual_brand - p_target)
    return logit


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def calibrate_intercept(z: np.ndarray, target: float) -> float:
    """The b with mean(sigmoid(b + z)) == target (bisection; the mean is increasing in b)."""
    if len(z) == 0:
        return float(np.log(target / (1 - target)))
    z = z[:CALIBRATION_ROWS]
    lo, hi = -30.0, 30.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if sigmoid(mid + z).mean() < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)
