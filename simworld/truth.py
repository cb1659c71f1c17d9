"""The simulator's ground truth: the best achievable AUC of a day.

The truth file (Paths.truth_day) holds the true click probability of every impression; it is
never read by the pipeline's features or models, only by evaluation and tests.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.config import PipelineConfig
from core.paths import Paths, local_path


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Rank-based ROC AUC (Mann-Whitney U); tied scores get their average rank.

    `labels` are 0/1 (or booleans) and `scores` any real numbers, both shape (n,).
    """
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape[0]} vs {s.shape[0]}")
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUC needs both classes; got {n_pos} positives and {n_neg} negatives")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    # Average 1-based rank of each run of equal scores.
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    run_rank = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(len(s))
    ranks[order] = np.repeat(run_rank, ends - starts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def oracle_auc(cfg: PipelineConfig, day: dt.date | str) -> float:
    """AUC of the true p_click against the landed clicks of `day` (the best any model can do).

    Rows with a label outside {0, 1}, a null id and repeated impression ids are left out.
    """
    paths = Paths.of(cfg)
    imps = pq.read_table(local_path(paths.landing_impressions(day)), columns=["impression_id", "click"])
    truth = pq.read_table(local_path(paths.truth_day(day)))
    imps = imps.filter(pc.is_in(imps.column("click"), value_set=pa.array([0, 1], pa.int32())))
    imps = imps.filter(pc.is_valid(imps.column("impression_id")))
    joined = imps.group_by("impression_id").aggregate([("click", "min")]).join(truth, "impression_id")
    return auc(joined.column("click_min").to_numpy(), joined.column("p_click").to_numpy())
