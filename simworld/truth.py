"""The simulator's ground truth: the best achievable AUC of a day.

The truth file (Paths.truth_day) holds the true click probability of every impression; it is
never read by the pipeline's features or models, only by evaluation and tests.
"""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.config import PipelineConfig
from core.metrics import auc  # re-exported: simworld.truth.auc
from core.paths import Paths
from core.storage import filesystem


def oracle_auc(cfg: PipelineConfig, day: dt.date | str) -> float:
    """AUC of the true p_click against the landed clicks of `day` (the best any model can do).

    Rows with a label outside {0, 1}, a null id and repeated impression ids are left out.
    """
    paths = Paths.of(cfg)
    imps = _read(paths.landing_impressions(day), columns=["impression_id", "click"])
    truth = _read(paths.truth_day(day))
    imps = imps.filter(pc.is_in(imps.column("click"), value_set=pa.array([0, 1], pa.int32())))
    imps = imps.filter(pc.is_valid(imps.column("impression_id")))
    joined = imps.group_by("impression_id").aggregate([("click", "min")]).join(truth, "impression_id")
    return auc(joined.column("click_min").to_numpy(), joined.column("p_click").to_numpy())


def _read(uri: str, columns: list[str] | None = None) -> pa.Table:
    """A parquet file on a local path or object storage."""
    fs, path = filesystem(uri)
    return pq.read_table(path, columns=columns, filesystem=fs)
