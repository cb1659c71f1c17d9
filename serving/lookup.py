"""The ad_id -> visual embedding lookup table: frequency control, dimension reduction, the
memory-mappable serving files, their manifest and checksums.

Serving folder layout (all numpy .npy files, loaded with ``mmap_mode="r"``):

    ad_ids.npy               int64 (n,)  sorted ascending: the index (binary search)
    embeddings.npy           (n, dims)   float32 ("none"), float16 ("float16") or float32 z ("pca")
    categories.npy           int32 (n,)  each ad's encoded category id (category_idx)
    fallback_categories.npy  int32 (m,)  sorted category ids that have a mean row
    fallback_means.npy       float32 (m + 1, dims): per-category mean stored row; row m = global mean
    pca_mean.npy             float32 (visual_dim,)             only for "pca"
    pca_components.npy       float32 (dims, visual_dim)        only for "pca"
    encoder.npz              the run's FeatureEncoder (features.encoder.save_encoder)
    category_ids.npy         int64 (n,)  each ad's raw catalog category id (-1: none), for the
                             published Delta table (serving.registry); not read by serving
    manifest.json            dims, dtype, rows, reduction, model version and sha256, run date,
                             and the sha256 and size of every file above

Reductions and what the head sees (x_v, the visual input of the DCN):
  none     x_v = the stored float32 row
  float16  x_v = float32(stored float16 row)
  pca      x_v = pca_mean + z @ pca_components, z the stored k-dim row (PCA fitted on the table)

Missing ads: x_v = the stored mean of the ad's category (from the request's encoded category id),
else the global mean, both reconstructed like any row; `LookupTable.lookup` reports which rows hit.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.files import replace_file, sha256_file, write_json  # sha256_file re-exported: serving.lookup.sha256_file

REDUCTIONS = ("none", "float16", "pca")
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
AD_IDS_FILE = "ad_ids.npy"
EMBEDDINGS_FILE = "embeddings.npy"
CATEGORIES_FILE = "categories.npy"
FALLBACK_CATEGORIES_FILE = "fallback_categories.npy"
FALLBACK_MEANS_FILE = "fallback_means.npy"
PCA_MEAN_FILE = "pca_mean.npy"
PCA_COMPONENTS_FILE = "pca_components.npy"
CATEGORY_IDS_FILE = "category_ids.npy"
INDEX_BYTES_PER_AD = 8 + 4  # int64 ad id + int32 category id per row


class IntegrityError(RuntimeError):
    """A serving file is missing or does not match its manifest checksum; the message names it."""


# --------------------------------------------------------------------------- frequency control


def stored_dims(visual_dim: int, reduction: str, pca_dims: int) -> int:
    """Values per stored row: visual_dim, or min(pca_dims, visual_dim) for PCA."""
    _check_reduction(reduction)
    return min(pca_dims, visual_dim) if reduction == "pca" else visual_dim


def bytes_per_ad(visual_dim: int, reduction: str, pca_dims: int) -> int:
    """Serving-file bytes of one ad: its stored row plus its index entries (ad id, category)."""
    itemsize = 2 if reduction == "float16" else 4
    return stored_dims(visual_dim, reduction, pca_dims) * itemsize + INDEX_BYTES_PER_AD


def select_ads(ad_ids: np.ndarray, impressions: np.ndarray, budget_ads: int = 0, budget_bytes: int = 0,
               row_bytes: int = 1) -> np.ndarray:
    """Positions of the ads kept by frequency control, best first.

    Ads are ranked by impressions (descending), ties by ad id (ascending); the first
    min(budget_ads, budget_bytes // row_bytes) are kept (a budget of 0 means no limit).
    """
    ad_ids = np.asarray(ad_ids, dtype=np.int64)
    impressions = np.asarray(impressions, dtype=np.int64)
    if ad_ids.shape != impressions.shape or ad_ids.ndim != 1:
        raise ValueError(f"ad_ids and impressions must be 1-d of one length, got {ad_ids.shape} and "
                         f"{impressions.shape}")
    if budget_ads < 0 or budget_bytes < 0 or row_bytes < 1:
        raise ValueError(f"budgets must be >= 0 and row_bytes >= 1, got budget_ads={budget_ads}, "
                         f"budget_bytes={budget_bytes}, row_bytes={row_bytes}")
    order = np.lexsort((ad_ids, -impressions))  # last key is primary
    limit = len(order)
    if budget_ads:
        limit = min(limit, budget_ads)
    if budget_bytes:
        limit = min(limit, budget_bytes // row_bytes)
    return order[:limit]


def coverage_curve(impressions: np.ndarray, ad_ids: np.ndarray, holdout_ad_ids: np.ndarray,
                   budgets: list[int]) -> list[dict[str, float]]:
    """Share of ``holdout_ad_ids`` (one entry per impression) covered by the top-``b`` ads per budget."""
    holdout = np.asarray(holdout_ad_ids, dtype=np.int64)
    out = []
    for b in budgets:
        kept = np.asarray(ad_ids, dtype=np.int64)[select_ads(ad_ids, impressions, budget_ads=b)]
        cov = float(np.isin(holdout, kept).mean()) if holdout.size else float("nan")
        out.append({"budget_ads": int(b), "coverage": cov})
    return out


# --------------------------------------------------------------------------- reduction


@dataclass(frozen=True)
class Reduction:
    """How stored rows map back to x_v: method plus PCA parameters (None unless method is pca)."""

    method: str
    pca_mean: np.ndarray | None = None  # (visual_dim,) float32
    pca_components: np.ndarray | None = None  # (k, visual_dim) float32, orthonormal rows

    def __post_init__(self) -> None:
        _check_reduction(self.method)
        if (self.method == "pca") != (self.pca_mean is not None and self.pca_components is not None):
            raise ValueError("PCA parameters must be given exactly when the reduction is 'pca'")

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float16 if self.method == "float16" else np.float32)

    def encode(self, x_v: np.ndarray) -> np.ndarray:
        """Stored rows (n, dims) of visual embeddings (n, visual_dim)."""
        x = np.asarray(x_v, dtype=np.float32)
        if self.method == "pca":
            return ((x - self.pca_mean) @ self.pca_components.T).astype(np.float32)  # (n, k)
        return x.astype(self.dtype)

    def decode(self, stored: np.ndarray) -> np.ndarray:
        """x_v (n, visual_dim) float32 of stored rows (n, dims)."""
        z = np.asarray(stored, dtype=np.float32)
        if self.method == "pca":
            return z @ self.pca_components + self.pca_mean  # (n, visual_dim)
        return z

    def roundtrip(self, x_v: np.ndarray) -> np.ndarray:
        """What serving sees for an embedding: decode(encode(x_v))."""
        return self.decode(self.encode(x_v))


def fit_pca(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean (d,) and the top-k principal directions (k, d) of rows x (n, d), float32.

    k is capped at min(n, d); each direction's sign is fixed (largest |value| positive) so a refit
    on the same rows gives the same components."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"PCA needs a non-empty (n, d) matrix, got shape {x.shape}")
    k = min(k, x.shape[0], x.shape[1])
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)  # vt (min(n, d), d)
    comps = vt[:k]
    signs = np.sign(comps[np.arange(k), np.abs(comps).argmax(axis=1)])
    comps = comps * np.where(signs == 0, 1.0, signs)[:, None]
    return mean.astype(np.float32), comps.astype(np.float32)


def make_reduction(x_v: np.ndarray, method: str, pca_dims: int) -> Reduction:
    """The reduction of config ``inference.reduction`` (PCA is fitted on ``x_v``, the table's rows)."""
    _check_reduction(method)
    if method == "pca":
        mean, comps = fit_pca(x_v, pca_dims)
        return Reduction("pca", mean, comps)
    return Reduction(method)


def _check_reduction(method: str) -> None:
    if method not in REDUCTIONS:
        raise ValueError(f"unknown reduction {method!r}; allowed: {', '.join(REDUCTIONS)}")


# --------------------------------------------------------------------------- files


def _save_npy(folder: Path, name: str, array: np.ndarray) -> None:
    with replace_file(folder / name, "wb") as f:
        np.save(f, array, allow_pickle=False)


def fallback_rows(stored: np.ndarray, categories: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted categories (m,) and their mean stored rows plus the global mean ((m + 1, dims) float32)."""
    stored64 = np.asarray(stored, dtype=np.float64)
    cats, inverse = np.unique(np.asarray(categories, dtype=np.int32), return_inverse=True)  # (m,), (n,)
    sums = np.zeros((len(cats), stored64.shape[1]))
    np.add.at(sums, inverse, stored64)
    means = sums / np.bincount(inverse, minlength=len(cats))[:, None]
    global_mean = stored64.mean(axis=0, keepdims=True) if len(stored64) else np.zeros((1, stored64.shape[1]))
    return cats.astype(np.int32), np.vstack([means, global_mean]).astype(np.float32)


def write_lookup_files(folder: str | os.PathLike, ad_ids: np.ndarray, categories: np.ndarray,
                       x_v: np.ndarray, reduction: Reduction, *, run_date: str, model_version: str,
                       model_sha256: str, extra_files: dict[str, str] | None = None,
                       extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the serving files of ads (n,) with categories (n,) and embeddings x_v (n, visual_dim).

    Rows are sorted by ad id; ``extra_files`` (name -> path already inside ``folder``) are
    checksummed too. The manifest is written last (atomically), so a folder without one is
    incomplete. Returns the manifest."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ad_ids = np.asarray(ad_ids, dtype=np.int64)
    x_v = np.asarray(x_v, dtype=np.float32)
    if x_v.ndim != 2 or len(x_v) != len(ad_ids) or len(categories) != len(ad_ids):
        raise ValueError(f"need ad_ids (n,), categories (n,), x_v (n, d); got {ad_ids.shape}, "
                         f"{np.shape(categories)}, {x_v.shape}")
    if len(np.unique(ad_ids)) != len(ad_ids):
        raise ValueError("ad ids of a lookup table must be unique")
    order = np.argsort(ad_ids, kind="stable")
    stored = reduction.encode(x_v[order])  # (n, dims)
    cats = np.asarray(categories, dtype=np.int32)[order]
    fb_cats, fb_means = fallback_rows(stored, cats)
    files = {AD_IDS_FILE: ad_ids[order], EMBEDDINGS_FILE: stored, CATEGORIES_FILE: cats,
             FALLBACK_CATEGORIES_FILE: fb_cats, FALLBACK_MEANS_FILE: fb_means}
    if reduction.method == "pca":
        files[PCA_MEAN_FILE] = reduction.pca_mean
        files[PCA_COMPONENTS_FILE] = reduction.pca_components
    for name, array in files.items():
        _save_npy(folder, name, array)
    checksums = {name: {"sha256": sha256_file(folder / name), "bytes": (folder / name).stat().st_size}
                 for name in [*files, *sorted(extra_files or {})]}
    manifest = {
        "format_version": FORMAT_VERSION, "run_date": run_date, "model_version": model_version,
        "model_sha256": model_sha256, "reduction": reduction.method, "dtype": str(stored.dtype),
        "dims": int(stored.shape[1]), "visual_dim": int(x_v.shape[1]), "rows": int(len(ad_ids)),
        "bytes_per_ad": int(stored.shape[1] * stored.dtype.itemsize + INDEX_BYTES_PER_AD),
        "fallback": "mean stored row of the ad's category, else the global mean",
        "files": checksums, **(extra or {}),
    }
    write_json(folder / MANIFEST_FILE, manifest)
    return manifest


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a serving folder (an IntegrityError naming it when missing or unreadable)."""
    path = Path(folder) / MANIFEST_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise IntegrityError(f"{path} is missing: the lookup folder is incomplete or not a lookup folder") from None
    except json.JSONDecodeError as e:
        raise IntegrityError(f"{path} is not valid JSON ({e}); the folder is corrupt") from None


def loaded_files(manifest: dict[str, Any]) -> list[str]:
    """The files ``LookupTable.load`` opens for a manifest, plus every file the manifest lists."""
    names = [AD_IDS_FILE, EMBEDDINGS_FILE, CATEGORIES_FILE, FALLBACK_CATEGORIES_FILE, FALLBACK_MEANS_FILE]
    if manifest.get("reduction") == "pca":
        names += [PCA_MEAN_FILE, PCA_COMPONENTS_FILE]
    return sorted({*names, *manifest.get("files", {})})


def verify_files(folder: str | os.PathLike, manifest: dict[str, Any]) -> None:
    """Check every file listed in the manifest against its size and sha256; raise IntegrityError
    naming the first file that is missing or differs."""
    folder = Path(folder)
    for name, info in sorted(manifest["files"].items()):
        path = folder / name
        if not path.is_file():
            raise IntegrityError(f"{name}: listed in {folder / MANIFEST_FILE} but missing from {folder}")
        if path.stat().st_size != info["bytes"] or sha256_file(path) != info["sha256"]:
            raise IntegrityError(f"{name}: checksum mismatch in {folder} (expected sha256 {info['sha256'][:16]}..., "
                                 "the file was modified or corrupted); refusing to load it")


# --------------------------------------------------------------------------- the table


class LookupTable:
    """A loaded serving folder: vectorised lookups of x_v by ad id (binary search on ad_ids.npy)."""

    def __init__(self, ad_ids: np.ndarray, stored: np.ndarray, categories: np.ndarray,
                 fallback_categories: np.ndarray, fallback_means: np.ndarray, reduction: Reduction,
                 manifest: dict[str, Any] | None = None) -> None:
        self.ad_ids = ad_ids  # (n,) int64 sorted
        self.stored = stored  # (n, dims)
        self.categories = categories  # (n,) int32
        self.fallback_categories = fallback_categories  # (m,) int32 sorted
        # The m + 1 fallback rows decoded once (a handful of rows).
        self.fallback_vectors = reduction.decode(fallback_means)  # (m + 1, visual_dim)
        self.reduction = reduction
        self.manifest = manifest or {}

    @classmethod
    def load(cls, folder: str | os.PathLike, verify: bool = True, mmap: bool = True) -> "LookupTable":
        """Load a serving folder; with ``verify`` every file's checksum is checked first."""
        folder = Path(folder)
        manifest = read_manifest(folder)
        if manifest.get("format_version") != FORMAT_VERSION:
            raise IntegrityError(f"{folder / MANIFEST_FILE}: format_version {manifest.get('format_version')!r}, "
                                 f"this code reads {FORMAT_VERSION}")
        if verify:
            verify_files(folder, manifest)
        mode = "r" if mmap else None

        def load(name: str) -> np.ndarray:
            return np.load(folder / name, mmap_mode=mode, allow_pickle=False)

        reduction = (Reduction("pca", np.asarray(load(PCA_MEAN_FILE)), np.asarray(load(PCA_COMPONENTS_FILE)))
                     if manifest["reduction"] == "pca" else Reduction(manifest["reduction"]))
        table = cls(load(AD_IDS_FILE), load(EMBEDDINGS_FILE), load(CATEGORIES_FILE),
                    np.asarray(load(FALLBACK_CATEGORIES_FILE)), np.asarray(load(FALLBACK_MEANS_FILE)),
                    reduction, manifest)
        if table.stored.shape != (manifest["rows"], manifest["dims"]) or table.ad_ids.shape != (manifest["rows"],):
            raise IntegrityError(f"{folder}: embeddings {table.stored.shape} / ad ids {table.ad_ids.shape} do not "
                                 f"match the manifest's rows={manifest['rows']}, dims={manifest['dims']}")
        return table

    def __len__(self) -> int:
        return int(self.ad_ids.shape[0])

    @property
    def visual_dim(self) -> int:
        return int(self.fallback_vectors.shape[1])

    def positions(self, ad_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row of each ad id (B,) and whether it is in the table (B,) bool."""
        x = np.asarray(ad_ids, dtype=np.int64)
        if len(self.ad_ids) == 0:
            return np.zeros(x.shape, np.int64), np.zeros(x.shape, bool)
        pos = np.minimum(np.searchsorted(self.ad_ids, x), len(self.ad_ids) - 1)
        return pos, np.asarray(self.ad_ids[pos]) == x

    def lookup(self, ad_ids: np.ndarray, categories: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """x_v (B, visual_dim) float32 and the hit mask (B,) for ad ids (B,).

        Misses get the mean row of ``categories`` (B,) (encoded category ids) when that category
        has rows, else the global mean."""
        pos, hit = self.positions(ad_ids)
        out = self.reduction.decode(self.stored[pos])  # (B, visual_dim); misses overwritten below
        if not hit.all():
            miss = ~hit
            fb = np.full(int(miss.sum()), len(self.fallback_categories), np.int64)  # global mean row
            if categories is not None and len(self.fallback_categories):
                c = np.asarray(categories, dtype=np.int64)[miss]
                cpos = np.minimum(np.searchsorted(self.fallback_categories, c), len(self.fallback_categories) - 1)
                fb = np.where(self.fallback_categories[cpos] == c, cpos, fb)
            out[miss] = self.fallback_vectors[fb]
        return out, hit
