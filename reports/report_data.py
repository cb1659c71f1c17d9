"""What the validate stage computes for the run report, so that the report only renders.

The validate stage has the run's model loaded, the holdout examples of D (the run date's
examples table) and their bronze images decoded, and scores every holdout row with the full
model; from those it writes, under `Paths.run_report_data(D)` (<artifacts>/runs/D/report_data/):

    calibration.json           CalibrationRecord: equal-count bins of the full model's holdout
                               predictions (reports.calibration.calibration_bins)
    attention.json             AttentionRecord: one panel per drawn category, or why none
    attention/category-<k>.png one PNG per panel (originals above, attention overlays below)

    write_report_data(cfg, run_date, model, holdout, images, preds, category_ids)  # in validate
    read_calibration(path) / read_attention(path)                                 # in the report
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import numpy as np

from core.config import PipelineConfig
from core.paths import Paths, local_path

log = logging.getLogger(__name__)

ATTENTION_CATEGORIES = 6  # categories drawn in the attention section
ATTENTION_ADS_PER_CATEGORY = 4


class ReportDataError(ValueError):
    """A report-data record exists but does not have the shape this module writes."""


@dataclass(frozen=True)
class CalibrationRecord:
    run_date: str
    rows: int  # holdout impressions scored (all of them)
    bins: list[dict[str, float]]  # calibration_bins(): lo, hi, n, mean_pred, observed_ctr

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CalibrationRecord":
        try:
            bins = [{k: float(b[k]) for k in ("lo", "hi", "n", "mean_pred", "observed_ctr")} for b in d["bins"]]
            return cls(str(d["run_date"]), int(d["rows"]), bins)
        except (KeyError, TypeError, ValueError) as err:
            raise ReportDataError(f"not a calibration record ({type(err).__name__}: {err})") from None


@dataclass(frozen=True)
class AttentionPanel:
    category_idx: int  # the model's encoded category
    category_id: int | None  # the raw catalog category, when the run's encoder names it
    ad_ids: list[int]
    holdout_impressions: int  # of the category in the holdout
    map_min: float  # range of M_s over the panel's maps, before the per-image display scaling
    map_max: float
    png: str  # file name, relative to the record's folder


@dataclass(frozen=True)
class AttentionRecord:
    run_date: str
    layer: str | None  # class of the attention module drawn (CSCNNAttention, CBAM); None when none
    panels: list[AttentionPanel] = field(default_factory=list)
    unavailable: str | None = None  # why nothing was drawn (a variant without spatial attention)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AttentionRecord":
        try:
            panels = [AttentionPanel(**p) for p in d["panels"]]
            return cls(str(d["run_date"]), d["layer"], panels, d.get("unavailable"))
        except (KeyError, TypeError) as err:
            raise ReportDataError(f"not an attention record ({type(err).__name__}: {err})") from None


def _write_json(path: str, data: Any) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def _read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def read_calibration(path: str) -> CalibrationRecord:
    return CalibrationRecord.from_dict(_read_json(path))


def read_attention(path: str) -> AttentionRecord:
    return AttentionRecord.from_dict(_read_json(path))


def choose_attention_ads(ad_ids: np.ndarray, category_idx: np.ndarray, with_image: set[int],
                         n_categories: int = ATTENTION_CATEGORIES,
                         ads_per_category: int = ATTENTION_ADS_PER_CATEGORY) -> dict[int, tuple[list[int], int]]:
    """{category_idx: (ad ids, holdout impressions of the category)} for the attention panels.

    Categories with the most holdout impressions come first (at most `n_categories`), and within
    each the ads with the most holdout impressions that have an image (at most
    `ads_per_category`); ties by id.
    """
    if n_categories < 1 or ads_per_category < 1:
        raise ValueError(f"need n_categories >= 1 and ads_per_category >= 1, got {n_categories}, {ads_per_category}")
    ad = np.asarray(ad_ids, dtype=np.int64)
    cat = np.asarray(category_idx, dtype=np.int64)
    keep = np.isin(ad, np.fromiter(with_image, dtype=np.int64, count=len(with_image)))
    ad, cat = ad[keep], cat[keep]
    if not len(ad):
        return {}
    pairs, counts = np.unique(np.stack([cat, ad], axis=1), axis=0, return_counts=True)  # (P, 2): category, ad
    cats, cat_counts = np.unique(cat, return_counts=True)
    order = np.lexsort((cats, -cat_counts))[:n_categories]  # most impressions first, ties by id
    chosen = {}
    for c, n in zip(cats[order], cat_counts[order]):
        in_cat = pairs[:, 0] == c
        ads_c, n_c = pairs[in_cat, 1], counts[in_cat]
        chosen[int(c)] = ([int(a) for a in ads_c[np.lexsort((ads_c, -n_c))][:ads_per_category]], int(n))
    return chosen


def attention_record(cfg: PipelineConfig, run_date: dt.date, model: Any, ad_ids: np.ndarray,
                     category_idx: np.ndarray, images: Mapping[int, np.ndarray],
                     category_ids: Mapping[int, int]) -> AttentionRecord:
    """Draw the attention panels of the holdout's most frequent categories and write their PNGs."""
    from reports.attention_maps import NoSpatialAttention, category_panels, last_spatial_attention

    paths = Paths.of(cfg)
    try:
        layer = type(last_spatial_attention(model)).__name__
    except NoSpatialAttention as err:
        return AttentionRecord(run_date.isoformat(), None, [], str(err))
    chosen = choose_attention_ads(ad_ids, category_idx, set(int(a) for a in images))
    if not chosen:
        return AttentionRecord(run_date.isoformat(), layer, [], "no holdout ad has an image")
    drawn = category_panels(model, {c: [(a, images[a]) for a in ads] for c, (ads, _) in chosen.items()})
    panels = []
    for p in drawn:
        path = local_path(paths.attention_panel(run_date, p.category_idx))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(p.png)
        panels.append(AttentionPanel(
            category_idx=p.category_idx, category_id=category_ids.get(p.category_idx), ad_ids=p.ad_ids,
            holdout_impressions=chosen[p.category_idx][1], map_min=p.map_min, map_max=p.map_max,
            png=os.path.relpath(path, os.path.dirname(local_path(paths.attention_record(run_date))))))
    panels.sort(key=lambda p: -p.holdout_impressions)
    return AttentionRecord(run_date.isoformat(), layer, panels)


def write_report_data(cfg: PipelineConfig, run_date: dt.date, model: Any, holdout: Any,
                      images: Mapping[int, np.ndarray], preds: np.ndarray,
                      category_ids: Mapping[int, int]) -> tuple[CalibrationRecord, AttentionRecord]:
    """Write the calibration and attention records of run date D (see the module docstring).

    `holdout` is the run date's holdout examples (label, ad_id, category_idx), `preds` the full
    model's pCTR of each row, `images` the decoded bronze images by ad id.
    """
    import shutil

    from reports.calibration import calibration_bins

    paths = Paths.of(cfg)
    folder = local_path(paths.run_report_data(run_date))
    shutil.rmtree(folder, ignore_errors=True)  # a re-run of the date replaces its panels whole
    labels = np.asarray(holdout["label"].to_numpy(), dtype=np.float64)
    calibration = CalibrationRecord(run_date.isoformat(), int(len(labels)), calibration_bins(labels, preds))
    _write_json(local_path(paths.calibration_record(run_date)), asdict(calibration))
    attention = attention_record(cfg, run_date, model, holdout["ad_id"].to_numpy(),
                                 holdout["category_idx"].to_numpy(), images, category_ids)
    _write_json(local_path(paths.attention_record(run_date)), asdict(attention))
    log.info("report data: %d calibration bins over %d holdout rows, %d attention panel(s)%s",
             len(calibration.bins), calibration.rows, len(attention.panels),
             f" ({attention.unavailable})" if attention.unavailable else "")
    return calibration, attention


def category_ids_of(encoder_path: str) -> dict[int, int]:
    """Encoded category id -> raw category id, from a lookup folder's encoder.npz."""
    with np.load(encoder_path, allow_pickle=False) as z:
        values, ids = z["vocab_values.category_id"], z["vocab_ids.category_id"]
    return {int(i): int(v) for v, i in zip(values, ids)}
