"""Encoded examples -> model batches; image preprocessing (used by training and inference alike).

Input tables follow features/spec.py: ad_id, category_idx, label, is_cold, group_id,
f_<name> (int) per single field, m_<name> (list of int) per multi field, rows already in
training order (ad groups of <= group_size impressions). They may be a pandas DataFrame, a
pyarrow Table, a dict of columns or an ``EncodedData``.

Batches are consecutive row ranges cut at group boundaries, so an ad's group lands in one batch.
In grouped mode a batch carries each of its unique ad images once, as uint8 (U, H, W, 3), plus
``image_index`` (B,) mapping impressions to those rows; per impression it carries (B, H, W, 3)
and image_index = arange(B). Images travel as uint8 (4x less host-to-device traffic) and the
model normalises them on its device with ``preprocess_images``.
"""

from __future__ import annotations

import collections
import io
import logging
import threading
from dataclasses import dataclass, field, fields
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from PIL import Image

from features.spec import FeatureSpec

log = logging.getLogger(__name__)

# Single fields whose ids CSCNN priors may need per image beyond the category (models.ctr.CTRModel.key_fields):
# encoded data and batches carry those the spec has.
PRIOR_KEY_FIELDS = ("parent_category_id", "brand_id", "shop_id")

# Fixed pixel normalisation: uint8 [0, 255] -> roughly [-2, 2].
PIXEL_MEAN = 0.5
PIXEL_STD = 0.25


def preprocess_images(images: np.ndarray | torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> normalised float (N, 3, H, W); the one preprocessing of the project."""
    t = torch.as_tensor(images)  # no copy for a numpy array or a tensor already on its device
    if t.dtype != torch.uint8 or t.ndim != 4 or t.shape[-1] != 3:
        raise ValueError(f"images must be uint8 of shape (N, H, W, 3), got {t.dtype} {tuple(t.shape)}")
    t = t.permute(0, 3, 1, 2).to(dtype)  # (N, 3, H, W)
    return (t / 255.0 - PIXEL_MEAN) / PIXEL_STD


@dataclass
class Batch:
    """One model batch (see the module docstring); all tensors on one device."""

    single: torch.Tensor  # (B, n_single) long, sorted single-field names
    multi_values: dict[str, torch.Tensor]  # name -> (N_f,) long
    multi_offsets: dict[str, torch.Tensor]  # name -> (B,) long
    images: torch.Tensor | None  # (U, H, W, 3) uint8, or None without a visual tower
    image_category: torch.Tensor | None  # (U,) long
    image_index: torch.Tensor | None  # (B,) long, rows of `images`
    labels: torch.Tensor  # (B,) float
    # Each image's ids of the PRIOR_KEY_FIELDS the spec has (CSCNN priors beyond the category):
    # name -> (U,) long
    image_keys: dict[str, torch.Tensor] | None = None

    @property
    def size(self) -> int:
        return int(self.single.shape[0])

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "Batch":
        """A copy on ``device``; floating tensors also cast to ``dtype`` when given."""
        def mv(t: Any) -> Any:
            if t is None:
                return None
            if isinstance(t, dict):
                return {k: mv(v) for k, v in t.items()}
            if dtype is not None and t.is_floating_point():
                return t.to(device=device, dtype=dtype, non_blocking=True)
            return t.to(device, non_blocking=True)
        return Batch(**{f.name: mv(getattr(self, f.name)) for f in fields(self)})


@dataclass
class EncodedData:
    """Encoded examples as numpy arrays (row order kept)."""

    single_names: tuple[str, ...]
    multi_names: tuple[str, ...]
    single: np.ndarray  # (n, n_single) int64
    multi: dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (values (N,), offsets (n + 1,)) int64
    ad_id: np.ndarray  # (n,) int64, raw ad ids (keys of the image lookup)
    category: np.ndarray  # (n,) int64, category_idx
    label: np.ndarray  # (n,) float32
    is_cold: np.ndarray  # (n,) bool
    group_id: np.ndarray  # (n,) int64
    keys: dict[str, np.ndarray] = field(default_factory=dict)  # PRIOR_KEY_FIELDS of the spec: name -> (n,) int64

    def __len__(self) -> int:
        return int(self.ad_id.shape[0])


def to_arrow(data: Any) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    if hasattr(data, "to_arrow") and not isinstance(data, Mapping):  # e.g. polars
        return data.to_arrow()
    if isinstance(data, pd.DataFrame):
        return pa.Table.from_pandas(data, preserve_index=False)
    if isinstance(data, Mapping):
        return pa.table({k: _to_arrow_column(v) for k, v in data.items()})
    raise TypeError(f"encoded examples must be a pandas DataFrame, pyarrow Table, dict of columns or "
                    f"EncodedData, got {type(data).__name__}")


def _to_arrow_column(values: Any) -> pa.Array | pa.ChunkedArray:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values
    if isinstance(values, np.ndarray) and values.dtype != object:
        return pa.array(values)
    values = list(values)
    if values and isinstance(values[0], (list, tuple, np.ndarray)):  # a multi-valued id column
        return pa.array([None if v is None else [int(x) for x in v] for v in values], type=pa.list_(pa.int64()))
    return pa.array(values)


def _int_column(table: pa.Table, name: str) -> np.ndarray:
    col = table.column(name)
    if col.null_count:
        raise ValueError(f"column {name!r} has {col.null_count} nulls; encoded ids must be non-null (0 = OOV)")
    return np.asarray(col.to_numpy(), dtype=np.int64)


def _check_range(values: np.ndarray, vocab: int, name: str) -> None:
    if values.size and (values.min() < 0 or values.max() >= vocab):
        bad = values[(values < 0) | (values >= vocab)][0]
        raise ValueError(f"field {name!r} has id {int(bad)} outside [0, {vocab}) of the feature spec; "
                         "the examples and the spec come from different encodings")


def encode_examples(data: Any, spec: FeatureSpec, require_label: bool = True) -> EncodedData:
    """Validate and convert encoded examples (see module docstring) to ``EncodedData``."""
    if isinstance(data, EncodedData):
        return data
    table = to_arrow(data)
    single_names, multi_names = tuple(sorted(spec.single)), tuple(sorted(spec.multi))
    needed = ["ad_id", "category_idx", *[f"f_{n}" for n in single_names], *[f"m_{n}" for n in multi_names]]
    if require_label:
        needed.append("label")
    missing = [c for c in needed if c not in table.column_names]
    if missing:
        raise ValueError(f"encoded examples lack column(s) {missing}; present: {table.column_names}")
    n = table.num_rows
    single = np.stack([_int_column(table, f"f_{name}") for name in single_names], axis=1) if single_names \
        else np.zeros((n, 0), np.int64)  # (n, n_single)
    for i, name in enumerate(single_names):
        _check_range(single[:, i], spec.single[name], name)
    multi = {}
    for name in multi_names:
        col = table.column(f"m_{name}").combine_chunks()
        if not pa.types.is_list(col.type) and not pa.types.is_large_list(col.type):
            raise ValueError(f"column 'm_{name}' must be a list of ids, got {col.type}")
        col = col.fill_null(pa.scalar([], type=col.type)) if col.null_count else col  # null list = empty
        offsets = np.asarray(col.offsets.to_numpy(), dtype=np.int64)
        values = np.asarray(col.values.to_numpy(zero_copy_only=False), dtype=np.int64)[offsets[0]:offsets[-1]]
        offsets = offsets - offsets[0]
        _check_range(values, spec.multi[name], name)
        multi[name] = (values, offsets)
    category = _int_column(table, "category_idx")
    if "category_id" in spec.single:
        _check_range(category, spec.single["category_id"], "category_idx")
    if "label" in table.column_names:
        label = _int_column(table, "label")
        if label.size and not np.isin(label, (0, 1)).all():
            raise ValueError(f"labels must be 0 or 1, found {sorted(set(np.unique(label)) - {0, 1})[:5]}")
    else:
        label = np.zeros(n, np.int64)
    is_cold = (np.asarray(table.column("is_cold").to_numpy(zero_copy_only=False), dtype=bool)
               if "is_cold" in table.column_names else np.zeros(n, bool))
    ad_id = _int_column(table, "ad_id")
    group_id = _int_column(table, "group_id") if "group_id" in table.column_names else ad_id
    keys = {f: single[:, single_names.index(f)] for f in PRIOR_KEY_FIELDS if f in single_names}
    return EncodedData(single_names, multi_names, single, multi, ad_id, category,
                       label.astype(np.float32), is_cold, group_id, keys)


class ImageTable:
    """The images of a dataset's ads as one uint8 array (A, H, W, 3) plus each row's ad position.

    Ads without an image in the lookup get a mid-grey image (zeros after normalisation) and a
    warning: the ingest stage quarantines broken images but keeps the ads' impressions.
    """

    def __init__(self, images: Mapping[int, np.ndarray], ad_id: np.ndarray) -> None:
        ads, self.row_ad = np.unique(ad_id, return_inverse=True)  # (A,), (n,)
        arrays, missing, shape = [], 0, None
        for a in ads.tolist():
            img = images.get(a)
            if img is None:
                missing += 1
            else:
                img = np.asarray(img)
                if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
                    raise ValueError(f"image of ad {a} must be uint8 (H, W, 3), got {img.dtype} {img.shape}")
                if shape is not None and img.shape != shape:
                    raise ValueError(f"image of ad {a} has shape {img.shape}, others {shape}; resize upstream")
                shape = img.shape
            arrays.append(img)
        if shape is None and len(ads):
            raise ValueError(f"none of the {len(ads)} ads has an image in the lookup")
        if missing:
            log.warning("%d of %d ads have no image; using a blank image for them", missing, len(ads))
        blank = np.full(shape or (1, 1, 3), 128, np.uint8)
        self.pixels = np.stack([blank if a is None else a for a in arrays]) if arrays \
            else np.zeros((0, 1, 1, 3), np.uint8)  # (A, H, W, 3)


class EncodedImages(Mapping[int, np.ndarray]):
    """Ad images kept as their encoded PNG/JPEG bytes (one Arrow binary array), each decoded to
    uint8 (H, W, 3) when asked for: the trainer's image lookup holds bytes, not pixels, and the
    pixels of one chunk's ads at a time (ImageTable).

    With `cache_bytes`, decoded images are also kept, least recently used dropped first once
    their pixels exceed it, so an ad seen in many chunks and epochs is decoded once while they
    fit. The cached arrays are read-only (every caller gets the same one). Thread-safe."""

    def __init__(self, ad_id: Any, image_bytes: Any, cache_bytes: int = 0) -> None:
        arrow = isinstance(ad_id, (pa.Array, pa.ChunkedArray))
        ids = np.asarray(ad_id.to_numpy(zero_copy_only=False) if arrow else ad_id, np.int64)
        order = np.argsort(ids, kind="stable")
        self._ids = ids[order]
        if len(self._ids) > 1 and not np.all(self._ids[1:] != self._ids[:-1]):
            dup = self._ids[1:][self._ids[1:] == self._ids[:-1]][0]
            raise ValueError(f"ad {int(dup)} has more than one image")
        data = image_bytes if isinstance(image_bytes, (pa.Array, pa.ChunkedArray)) else pa.array(image_bytes, pa.binary())
        self._bytes = data.take(pa.array(order))
        self._cache: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._cache_budget, self._cached_bytes = int(cache_bytes), 0
        self._lock = threading.Lock()
        self.decoded = 0  # images decoded so far (cache misses)

    def __getitem__(self, ad_id: int) -> np.ndarray:
        i = int(np.searchsorted(self._ids, ad_id))
        if i == len(self._ids) or self._ids[i] != ad_id:
            raise KeyError(ad_id)
        key = int(self._ids[i])
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        with Image.open(io.BytesIO(self._bytes[i].as_py())) as im:
            pixels = np.asarray(im.convert("RGB"), dtype=np.uint8)
        with self._lock:
            self.decoded += 1
            if self._cache_budget and pixels.nbytes <= self._cache_budget and key not in self._cache:
                pixels.flags.writeable = False
                self._cache[key] = pixels
                self._cached_bytes += pixels.nbytes
                while self._cached_bytes > self._cache_budget:
                    self._cached_bytes -= self._cache.popitem(last=False)[1].nbytes
        return pixels

    def __len__(self) -> int:
        return len(self._ids)

    def __iter__(self) -> Iterator[int]:
        return iter(self._ids.tolist())


def plan_batches(group_id: np.ndarray, batch_size: int) -> list[tuple[int, int]]:
    """Consecutive row ranges [start, end) of about batch_size rows, cut at group boundaries.

    A group larger than batch_size forms a batch of its own."""
    n = len(group_id)
    if n == 0:
        return []
    starts = np.flatnonzero(np.r_[True, group_id[1:] != group_id[:-1]])  # first row of each run
    bounds = np.r_[starts, n]
    plan, start = [], 0
    for i in range(1, len(bounds)):
        if bounds[i] - start > batch_size and bounds[i - 1] > start:
            plan.append((start, int(bounds[i - 1])))
            start = int(bounds[i - 1])
    plan.append((start, n))
    return plan


def batch_chunks(chunks: Iterable[pa.Table], batch_size: int) -> Iterator[tuple[pa.Table, list[tuple[int, int]]]]:
    """Chunks of whole groups, in row order -> (table, its batches' row ranges), batches cut as
    ``plan_batches`` cuts the chunks' concatenation.

    The rows of each chunk's last batch, which the next chunk's groups may still join, are carried
    into the next table, so the batches do not depend on where the chunks were cut."""
    carry: pa.Table | None = None
    for chunk in chunks:
        if not chunk.num_rows:
            continue
        table = chunk if carry is None else pa.concat_tables([carry, chunk])
        plan = plan_batches(np.asarray(table.column("group_id").to_numpy(), np.int64), batch_size)
        last = plan[-1][0]
        if last:
            yield table.slice(0, last), plan[:-1]
        carry = table.slice(last)
    if carry is not None:
        yield carry, [(0, carry.num_rows)]


def shard_range(group_id: np.ndarray, start: int, end: int, rank: int, world: int) -> tuple[int, int] | None:
    """Rank ``rank``'s contiguous share of rows [start, end), cut at group boundaries.

    Shares are balanced by impressions; None when the range has fewer groups than ranks."""
    if world == 1:
        return start, end
    g = group_id[start:end]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])  # (G,) group starts within the range
    if len(starts) < world:
        return None
    n = end - start
    owner = np.minimum(starts * world // n, world - 1)  # rank of each group by impression position
    if len(np.unique(owner)) < world:  # a large group swallowed a share: split by group count
        owner = np.arange(len(starts)) * world // len(starts)
    mine = np.flatnonzero(owner == rank)
    lo = int(starts[mine[0]])
    hi = int(starts[mine[-1] + 1]) if mine[-1] + 1 < len(starts) else n
    return start + lo, start + hi


def make_batch(data: EncodedData, pixels: np.ndarray | None, row_ad: np.ndarray | None,
               start: int, end: int, grouped: bool = True) -> Batch:
    """The batch of rows [start, end); images from ``pixels`` (A, H, W, 3) via ``row_ad`` (n,)."""
    single = torch.from_numpy(data.single[start:end])  # (B, n_single)
    values, offsets = {}, {}
    for name, (vals, offs) in data.multi.items():
        values[name] = torch.from_numpy(vals[offs[start]:offs[end]])  # (N_f,)
        offsets[name] = torch.from_numpy(offs[start:end] - offs[start])  # (B,)
    images = image_category = image_index = image_keys = None
    if pixels is not None:
        ads = row_ad[start:end]  # (B,)
        cats = data.category[start:end]  # (B,)
        if grouped:
            uniq, inverse = np.unique(ads, return_inverse=True)  # (U,), (B,)

            def per_image(rows: np.ndarray) -> torch.Tensor:  # (B,) -> each ad's value (one per ad), (U,)
                out = np.empty(len(uniq), np.int64)
                out[inverse] = rows
                return torch.from_numpy(out)
            images = torch.from_numpy(pixels[uniq])  # (U, H, W, 3) uint8
            image_category = per_image(cats)
            image_index = torch.from_numpy(inverse.astype(np.int64))
            image_keys = {f: per_image(v[start:end]) for f, v in data.keys.items()}
        else:
            images = torch.from_numpy(pixels[ads])  # (B, H, W, 3) uint8
            image_category = torch.from_numpy(cats.copy())
            image_index = torch.arange(end - start)
            image_keys = {f: torch.from_numpy(v[start:end].copy()) for f, v in data.keys.items()}
    return Batch(single, values, offsets, images, image_category, image_index,
                 torch.from_numpy(data.label[start:end]), image_keys)
