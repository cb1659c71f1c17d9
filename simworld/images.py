"""Procedural ad images: one RGB PNG per ad, drawn in vectorised numpy batches.

An image is the ad's category palette with a category texture (stripes whose angle follows the
parent category), scaled by the ad's brightness (the generic cue), plus a saturated colour blob
in one quadrant (the category-specific conjunction or a decoy), with world.brand_logos a small
saturated square in one corner (the brand-specific conjunction or a decoy) and, for some ads, a
white badge with a dark centre whose vertical position matters (the category-independent
positional cue).
Bytes are a deterministic function of (seed, ad_id): same pixels, same PNG encoder options.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from core.config import WorldConfig
from core.files import write_bytes
from simworld.world import BLOB_COLOURS, NOISE_RES, AdTable, categories

BLOB_RADIUS = 0.13  # blob radius, share of the image side
LOGO_HALF = 0.07  # half side of a brand logo (world.brand_logos)
LOGO_CENTRE = 0.12  # a logo's centre, from the two image edges of its corner
MARK_HALF = 0.065  # half side of the positional badge
MARK_CORE_HALF = 0.028  # half side of its dark centre
PNG_OPTIONS = {"format": "PNG", "compress_level": 1, "optimize": False}


IMAGES_DIR = "images"  # the landing area's folder of ad images


def image_relpath(ad_id: int) -> str:
    """Path of an ad's image relative to the landing root: images/<shard>/<ad_id>.png."""
    return f"{IMAGES_DIR}/{ad_id % 1000:03d}/{ad_id}.png"


def render(cfg: WorldConfig, ads: AdTable) -> np.ndarray:
    """Pixels of the ads' images, shape (n, S, S, 3) uint8 with S = cfg.image_size."""
    cats = categories(cfg)
    size = cfg.image_size
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    y = coords[None, :, None]  # (1, S, 1)
    x = coords[None, None, :]  # (1, 1, S)
    cat = ads.category

    angle = cats.texture_angle[cat][:, None, None]  # (n, 1, 1)
    freq = cats.texture_freq[cat][:, None, None]
    phase = ads.texture_phase[:, None, None]
    stripes = np.sin(2 * np.pi * freq * (x * np.cos(angle) + y * np.sin(angle)) + phase)  # (n, S, S)
    up = (np.arange(size) * NOISE_RES) // size  # nearest-neighbour upsampling index, (S,)
    noise = ads.noise[:, up][:, :, up]  # (n, S, S, 3)
    img = cats.palette[cat][:, None, None, :] * (1.0 + 0.15 * stripes[..., None]) + 0.035 * noise
    img *= (0.45 + 0.8 * ads.brightness)[:, None, None, None]

    quadrant = ads.blob_quadrant.astype(np.int64)
    cx = (0.25 + 0.5 * (quadrant % 2) + ads.blob_jitter[:, 0])[:, None, None]  # (n, 1, 1)
    cy = (0.25 + 0.5 * (quadrant // 2) + ads.blob_jitter[:, 1])[:, None, None]
    blob = (x - cx) ** 2 + (y - cy) ** 2 <= BLOB_RADIUS ** 2  # (n, S, S)
    img = np.where(blob[..., None], BLOB_COLOURS[ads.blob_colour][:, None, None, :], img)

    if cfg.brand_logos:
        corner = ads.logo_corner.astype(np.int64)
        lx = np.where(corner % 2 == 0, LOGO_CENTRE, 1 - LOGO_CENTRE)[:, None, None]  # (n, 1, 1)
        ly = np.where(corner // 2 == 0, LOGO_CENTRE, 1 - LOGO_CENTRE)[:, None, None]
        logo = np.maximum(np.abs(x - lx), np.abs(y - ly)) <= LOGO_HALF  # (n, S, S)
        img = np.where(logo[..., None], BLOB_COLOURS[ads.logo_colour][:, None, None, :], img)

    mx = ads.mark_xy[:, 0][:, None, None]
    my = ads.mark_xy[:, 1][:, None, None]
    dist = np.maximum(np.abs(x - mx), np.abs(y - my))  # Chebyshev distance, (n, S, S)
    present = ads.mark_present[:, None, None]
    img = np.where((present & (dist <= MARK_HALF))[..., None], np.float32(0.97), img)
    img = np.where((present & (dist <= MARK_CORE_HALF))[..., None], np.float32(0.05), img)
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of one (S, S, 3) uint8 image with fixed encoder options."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, **PNG_OPTIONS)
    return buf.getvalue()


def write_images(cfg: WorldConfig, ads: AdTable, landing_root: str, present: frozenset[str] = frozenset()) -> int:
    """Write the image of every ad whose file is absent (from `landing_root`, and from `present`:
    image paths relative to the landing area that exist elsewhere); returns how many were written."""
    rels = [image_relpath(int(a)) for a in ads.ad_id]
    paths = [os.path.join(landing_root, r) for r in rels]
    todo = np.array([i for i, (r, p) in enumerate(zip(rels, paths)) if r not in present and not os.path.exists(p)],
                    dtype=np.int64)
    batch = max(1, (1 << 20) // (cfg.image_size * cfg.image_size))  # ~12 MB of float32 pixels
    for start in range(0, len(todo), batch):
        idx = todo[start:start + batch]
        pixels = render(cfg, ads.take(idx))
        for j, i in enumerate(idx):
            write_bytes(paths[i], encode_png(pixels[j]))
    return len(todo)


