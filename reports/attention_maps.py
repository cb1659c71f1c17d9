"""Category-specific spatial attention maps drawn over ad images.

The map is M_s = sigmoid(Conv7x7([max_c F', mean_c F', A_s^k])) of the LAST attentive conv of the
visual tower (models.attention: CSCNNAttention, or CBAM for the category-blind rung), captured
with a forward hook on that module's `spatial` conv (its output is the pre-sigmoid logit map),
so the model code needs no change. Maps are upsampled bilinearly to the image size and drawn as
a heat overlay with PIL; each category gets one PNG panel (originals above, overlays below).
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

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

    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


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


def spatial_attention_maps(model: Any, images: np.ndarray, categories: Sequence[int]) -> np.ndarray:
    """M_s of the last attentive conv for uint8 images (N, H, W, 3) with their category ids (N,),
    upsampled to (N, H, W), float32 in (0, 1). The model is run in eval mode without gradients."""
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
            model.tower(x, torch.from_numpy(cats).to(device))
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
    from PIL import Image

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


def category_panels(model: Any, ads_by_category: dict[int, list[tuple[int, np.ndarray]]]) -> list[CategoryPanel]:
    """One panel per category from {category_idx: [(ad_id, uint8 image (H, W, 3)), ...]}.

    All images go through the tower in one forward pass, each with its own category (their
    sizes must match, as in training).
    """
    cats = [c for c in sorted(ads_by_category) if ads_by_category[c]]
    if not cats:
        return []
    images = np.stack([img for c in cats for _, img in ads_by_category[c]])  # (N, H, W, 3)
    maps = spatial_attention_maps(model, images, [c for c in cats for _ in ads_by_category[c]])  # (N, H, W)
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
