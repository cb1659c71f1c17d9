"""What the validate stage computes for the run report, so that the report only renders.

The validate stage has the run's model loaded, the holdout examples of D (the run date's
examples table) and their bronze images decoded, and scores every holdout row with the full
model; from those it writes, under `Paths.run_report_data(D)` (<artifacts>/runs/D/report_data/):

    calibration.json           core.records.CalibrationRecord: equal-count bins of the full model's
                               holdout predictions (calibration_bins)
    attention.json             core.records.AttentionRecord: one panel per drawn category, or why none
    attention/category-<k>.png one PNG per panel (originals above, attention overlays below)

    write_report_data(cfg, run_date, model, holdout, images, preds, category_ids)  # spark_jobs/validate.py

Attention maps: M_s = sigmoid(Conv7x7([max_c F', mean_c F', A_s^k])) of the LAST attentive conv of
the visual tower (models.attention: CSCNNAttention, or CBAM for the category-blind rung), captured
with a forward hook on that module's `spatial` conv (its output is the pre-sigmoid logit map), so
the model code needs no change. Maps are upsampled bilinearly to the image size and drawn as a heat
overlay with PIL; each category gets one PNG panel (originals above, overlays below).

torch (models.attention, models.batching) is imported inside the functions that run the model, as
in spark_jobs/validate.py, so that importing the validate stage does not load it
(tests/test_cli_errors.py).
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import posixpath
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from core import storage
from core.config import PipelineConfig
from core.paths import Paths
from core.records import AttentionPanel, AttentionRecord, CalibrationBin, CalibrationRecord

log = logging.getLogger(__name__)

DEFAULT_BINS = 10


def calibration_bins(labels: Any, preds: Any, n_bins: int = DEFAULT_BINS) -> list[CalibrationBin]:
    """Equal-count bins of the predictions sorted ascending (lo/hi: the bin's smallest/largest prediction).

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
        bins.append(CalibrationBin(lo=float(p[idx].min()), hi=float(p[idx].max()), n=int(len(idx)),
                                   mean_pred=float(p[idx].mean()), observed_ctr=float(y[idx].mean())))
    return bins


# --------------------------------------------------------------------------- attention maps

# Piecewise-linear heat colormap (dark blue -> cyan -> yellow -> red), values in [0, 1].
_HEAT_STOPS = np.array([0.0, 0.35, 0.65, 1.0])
_HEAT_RGB = np.array([[20, 30, 140], [0, 200, 220], [255, 230, 0], [220, 20, 20]], dtype=np.float64)
OVERLAY_ALPHA = 0.55  # weight of the heat colour over the image
PANEL_CELL = 128  # pixels per image in a panel (small images are scaled up, nearest neighbour)
PANEL_GAP = 4


class NoSpatialAttention(ValueError):
    """The model has no spatial attention to draw (variants dcn, cnn_fixed, cnn_finetune)."""


@dataclass(frozen=True)
class CategoryPanel:
    """One category's panel: the PNG and what it shows."""

    category_idx: int
    ad_ids: list[int]
    png: bytes
    map_min: float  # range of M_s over the panel's maps, before the per-image display scaling
    map_max: float


def last_spatial_attention(model: Any) -> Any:
    """The deepest attention module of the model's visual tower that has a `spatial` conv."""
    from models.attention import CBAM, CSCNNAttention

    tower = getattr(model, "tower", None)
    if tower is None:
        raise NoSpatialAttention(f"variant {model.cfg.variant!r} has no visual tower")
    found = [m for m in tower.modules() if isinstance(m, (CSCNNAttention, CBAM))]
    if not found:
        raise NoSpatialAttention(f"variant {model.cfg.variant!r} has no CBAM/CSCNN attention layer "
                                 f"(model.attention_layers={model.cfg.attention_layers})")
    return found[-1]  # modules() walks in registration order: the last is the deepest conv


def spatial_attention_maps(model: Any, images: np.ndarray, categories: Sequence[int],
                           keys: Mapping[str, Sequence[int]] | None = None) -> np.ndarray:
    """M_s of the last attentive conv for uint8 images (N, H, W, 3) with their category ids (N,)
    (and, for CSCNN priors beyond the category, ``keys``: the ids (N,) of the model's key_fields,
    e.g. parent_category_id, brand_id), upsampled to (N, H, W), float32 in (0, 1). The model is
    run in eval mode without gradients."""
    import torch
    import torch.nn.functional as F

    from models.batching import preprocess_images

    images = np.ascontiguousarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    cats = np.asarray(categories, dtype=np.int64)
    if cats.shape != (len(images),):
        raise ValueError(f"need one category per image: {len(images)} images, categories shape {cats.shape}")
    module = last_spatial_attention(model)
    captured: list[torch.Tensor] = []
    handle = module.spatial.register_forward_hook(lambda _m, _inp, out: captured.append(out.detach()))
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            x = preprocess_images(torch.from_numpy(images).to(device), dtype)  # (N, 3, H, W)
            prior_keys = torch.from_numpy(cats).to(device)
            if getattr(model, "key_fields", ()):
                prior_keys = model.prior_keys(prior_keys, {f: torch.as_tensor(np.asarray(v, dtype=np.int64),
                                                                              device=device)
                                                           for f, v in (keys or {}).items()})
            model.tower(x, prior_keys)
    finally:
        handle.remove()
        model.train(was_training)
    if len(captured) != 1:
        raise RuntimeError(f"expected one spatial-attention call in the tower, captured {len(captured)}")
    m_s = torch.sigmoid(captured[0].float())  # (N, 1, h, w)
    up = F.interpolate(m_s, size=images.shape[1:3], mode="bilinear", align_corners=False)  # (N, 1, H, W)
    return up[:, 0].cpu().numpy().astype(np.float32)  # (N, H, W)


def heat_colors(values: np.ndarray) -> np.ndarray:
    """uint8 RGB (..., 3) of values in [0, 1] through the heat colormap."""
    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    rgb = np.stack([np.interp(v, _HEAT_STOPS, _HEAT_RGB[:, c]) for c in range(3)], axis=-1)  # (..., 3)
    return rgb.round().astype(np.uint8)


def overlay(image: np.ndarray, attention: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """The image (H, W, 3) uint8 blended with the heat colours of `attention` (H, W).

    The map is min-max scaled per image for display (M_s often spans a narrow range around
    0.5); a flat map is drawn at mid-scale.
    """
    if image.shape[:2] != attention.shape:
        raise ValueError(f"attention map {attention.shape} does not match image {image.shape[:2]}")
    a = attention.astype(np.float64)
    span = a.max() - a.min()
    scaled = (a - a.min()) / span if span > 1e-12 else np.full_like(a, 0.5)
    blend = (1 - alpha) * image.astype(np.float64) + alpha * heat_colors(scaled)
    return blend.round().clip(0, 255).astype(np.uint8)


def panel_png(originals: Sequence[np.ndarray], overlays: Sequence[np.ndarray], cell: int = PANEL_CELL) -> bytes:
    """PNG of a 2-row grid: originals on top, their overlays below, each scaled to `cell` pixels."""
    if len(originals) != len(overlays) or not originals:
        raise ValueError(f"need as many overlays as originals (> 0), got {len(originals)} and {len(overlays)}")
    n = len(originals)
    canvas = Image.new("RGB", (n * cell + (n - 1) * PANEL_GAP, 2 * cell + PANEL_GAP), (255, 255, 255))
    for i, (orig, over) in enumerate(zip(originals, overlays)):
        x = i * (cell + PANEL_GAP)
        for row, arr in enumerate((orig, over)):
            tile = Image.fromarray(arr, "RGB").resize((cell, cell), Image.Resampling.NEAREST)
            canvas.paste(tile, (x, row * (cell + PANEL_GAP)))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def category_panels(model: Any, ads_by_category: dict[int, list[tuple[int, np.ndarray]]],
                    keys_of: Mapping[int, Mapping[str, int]] | None = None) -> list[CategoryPanel]:
    """One panel per category from {category_idx: [(ad_id, uint8 image (H, W, 3)), ...]}.

    All images go through the tower in one forward pass, each with its own category (and, for
    CSCNN priors beyond the category, its ad's ids of the model's key_fields from ``keys_of``:
    {ad_id: {field: id}}; the images' sizes must match, as in training).
    """
    cats = [c for c in sorted(ads_by_category) if ads_by_category[c]]
    if not cats:
        return []
    images = np.stack([img for c in cats for _, img in ads_by_category[c]])  # (N, H, W, 3)
    keys = None
    if keys_of is not None:
        ads = [a for c in cats for a, _ in ads_by_category[c]]
        keys = {f: [keys_of[a][f] for a in ads] for f in (keys_of[ads[0]] if ads else {})}
    maps = spatial_attention_maps(model, images, [c for c in cats for _ in ads_by_category[c]], keys)  # (N, H, W)
    panels, start = [], 0
    for c in cats:
        ads = ads_by_category[c]
        end = start + len(ads)
        overlays = [overlay(img, m) for img, m in zip(images[start:end], maps[start:end])]
        panels.append(CategoryPanel(category_idx=int(c), ad_ids=[int(a) for a, _ in ads],
                                    png=panel_png(list(images[start:end]), overlays),
                                    map_min=float(maps[start:end].min()), map_max=float(maps[start:end].max())))
        start = end
    return panels


# --------------------------------------------------------------------------- the records

ATTENTION_CATEGORIES = 6  # categories drawn in the attention section
ATTENTION_ADS_PER_CATEGORY = 4


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
                     category_ids: Mapping[int, int],
                     key_idx: Mapping[str, np.ndarray] | None = None) -> AttentionRecord:
    """Draw the attention panels of the holdout's most frequent categories and write their PNGs
    (``key_idx``: each row's ids of the fields CSCNN priors beyond the category need, e.g.
    {"parent_category_id": (n,)})."""
    paths = Paths.of(cfg)
    try:
        layer = type(last_spatial_attention(model)).__name__
    except NoSpatialAttention as err:
        return AttentionRecord(run_date.isoformat(), None, [], str(err))
    chosen = choose_attention_ads(ad_ids, category_idx, set(int(a) for a in images))
    if not chosen:
        return AttentionRecord(run_date.isoformat(), layer, [], "no holdout ad has an image")
    keys_of = None
    if key_idx:
        rows = {int(a): i for i, a in enumerate(np.asarray(ad_ids))}  # an ad's ids are the same on all its rows
        keys_of = {a: {f: int(np.asarray(v)[rows[a]]) for f, v in key_idx.items()}
                   for ads, _ in chosen.values() for a in ads}
    drawn = category_panels(model, {c: [(a, images[a]) for a in ads] for c, (ads, _) in chosen.items()}, keys_of)
    panels = []
    for p in drawn:
        path = paths.attention_panel(run_date, p.category_idx)
        storage.write_bytes(path, p.png)
        panels.append(AttentionPanel(
            category_idx=p.category_idx, category_id=category_ids.get(p.category_idx), ad_ids=p.ad_ids,
            holdout_impressions=chosen[p.category_idx][1], map_min=p.map_min, map_max=p.map_max,
            png=posixpath.relpath(path, posixpath.dirname(paths.attention_record(run_date)))))
    panels.sort(key=lambda p: -p.holdout_impressions)
    return AttentionRecord(run_date.isoformat(), layer, panels)


def write_report_data(cfg: PipelineConfig, run_date: dt.date, model: Any, holdout: Any,
                      images: Mapping[int, np.ndarray], preds: np.ndarray,
                      category_ids: Mapping[int, int]) -> tuple[CalibrationRecord, AttentionRecord]:
    """Write the calibration and attention records of run date D (see the module docstring).

    `holdout` is the run date's holdout examples (label, ad_id, category_idx), `preds` the full
    model's pCTR of each row, `images` the decoded bronze images by ad id.
    """
    paths = Paths.of(cfg)
    storage.remove_tree(paths.run_report_data(run_date))  # a re-run of the date replaces its panels whole
    labels = np.asarray(holdout["label"].to_numpy(), dtype=np.float64)
    calibration = CalibrationRecord(run_date.isoformat(), int(len(labels)), calibration_bins(labels, preds))
    storage.write_json(paths.calibration_record(run_date), asdict(calibration), default=float)
    key_idx = {f: holdout[f"f_{f}"].to_numpy() for f in getattr(model, "key_fields", ())}
    attention = attention_record(cfg, run_date, model, holdout["ad_id"].to_numpy(),
                                 holdout["category_idx"].to_numpy(), images, category_ids, key_idx)
    storage.write_json(paths.attention_record(run_date), asdict(attention), default=float)
    log.info("report data: %d calibration bins over %d holdout rows, %d attention panel(s)%s",
             len(calibration.bins), calibration.rows, len(attention.panels),
             f" ({attention.unavailable})" if attention.unavailable else "")
    return calibration, attention


def category_ids_of(encoder_path: str) -> dict[int, int]:
    """Encoded category id -> raw category id, from a lookup folder's encoder.npz."""
    with np.load(encoder_path, allow_pickle=False) as z:
        values, ids = z["vocab_values.category_id"], z["vocab_ids.category_id"]
    return {int(i): int(v) for v, i in zip(values, ids)}
