"""Raw contract values -> the model ids of features/spec.py, and the encoder's saved form (no Spark).

The features job encodes the window's rows with FeatureEncoder.encode_batch (the examples
assembly, spark_jobs/example_assembly.py), and serving and offline inference encode requests with
the very same encoder, so the training and the serving encodings cannot drift apart:

    edges = np.array([9.5, 20.0, 45.0])
    apply_bin_edges(edges, 20.0)                      # 2   (bin ids: 0 = null/NaN, 1..len(edges)+1)
    apply_bin_edges(edges, np.array([1.0, np.nan]))   # array([1, 0], dtype=int32)
    lookup_ids(np.array([3, 7]), np.array([1, 2]), 7) # 2   (0 = out of vocabulary)

Conventions (features/spec.py): id 0 is OOV for categorical fields (rare, unseen or null);
numeric fields get bin ids 0 = null, 1.. = quantile bins; a value equal to an edge falls in the
lower bin (bin k holds edges[k-2] < x <= edges[k-1]).

A vocabulary maps a raw value to its id in one of two ways with the same ids: `lookup_ids`, a
binary search over the sorted values (any vocabulary, scalars), or `DirectIds`, a gather from a
direct-address table (raw value - shift -> id) for vocabularies of a narrow value span, which
FeatureEncoder.encode_single and serving's RequestEncoder both use on arrays. The encoder travels
with a published version as ``encoder.npz`` (``save_encoder`` / ``load_encoder_file``).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from typing import IO, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from core.files import replace_file
from features.spec import COLD_MAX_IMPRESSIONS, MULTI_FIELDS, NUMERIC_FIELDS, SINGLE_FIELDS

# Single-valued fields that get a vocabulary (the numeric ones get bins instead).
CATEGORICAL_SINGLE_FIELDS: tuple[str, ...] = tuple(f for f in SINGLE_FIELDS if f not in NUMERIC_FIELDS)
# Every field with a vocabulary (single- and multi-valued).
VOCAB_FIELDS: tuple[str, ...] = CATEGORICAL_SINGLE_FIELDS + MULTI_FIELDS

# A vocabulary whose raw values span at most max(DENSE_MIN_SPAN, DENSE_SPAN_PER_ENTRY * entries)
# integers is looked up through a direct-address id array (4 bytes x that span) instead of a
# binary search.
DENSE_MIN_SPAN = 1 << 20
DENSE_SPAN_PER_ENTRY = 16
# Raw values beyond +-2^62 keep raw - shift from wrapping into a direct table's range.
_DIRECT_VALUE_LIMIT = 1 << 62

# Raw columns (joined impression + catalog row) the encoder reads, besides the feature fields.
PASSTHROUGH_COLUMNS: tuple[str, ...] = ("split", "impression_id", "event_ts")


def stable_column(name: str) -> str:
    """The column of a stored day row holding field `name`'s stable ids (spark_jobs/id_registry.py)."""
    return f"id_{name}"


def apply_bin_edges(edges: np.ndarray | list[float], values):
    """Bin ids of `values` (scalar or array) for sorted, distinct bin `edges`.

    0 for None/NaN, otherwise 1 + the number of edges strictly below the value, so ids run
    from 1 to len(edges) + 1. Returns an int for a scalar and an int32 array for an array.
    """
    edges_arr = np.asarray(edges, dtype=np.float64)
    if edges_arr.ndim != 1 or (edges_arr.size > 1 and not np.all(np.diff(edges_arr) > 0)):
        raise ValueError(f"bin edges must be a 1-d strictly increasing array, got {edges_arr!r}")
    if values is None or np.isscalar(values):
        x = np.nan if values is None else float(values)
        return 0 if np.isnan(x) else int(np.searchsorted(edges_arr, x, side="left")) + 1
    x = np.asarray(values, dtype=np.float64)
    ids = np.searchsorted(edges_arr, x, side="left").astype(np.int32) + 1
    return np.where(np.isnan(x), 0, ids).astype(np.int32)


def lookup_ids(vocab_values: np.ndarray, vocab_ids: np.ndarray, values, valid: np.ndarray | None = None):
    """Vocabulary ids of `values` (scalar or int64 array); 0 for values not in the vocabulary.

    `vocab_values` must be sorted ascending and `vocab_ids` aligned with it. `valid` (bool
    array) marks non-null entries of an array; invalid entries map to 0. A scalar None maps to 0.
    """
    if values is None:
        return 0
    scalar = np.isscalar(values)
    x = np.atleast_1d(np.asarray(values, dtype=np.int64))
    out = np.zeros(x.shape, dtype=np.int32)
    if vocab_values.size:
        pos = np.minimum(np.searchsorted(vocab_values, x), vocab_values.size - 1)
        hit = vocab_values[pos] == x
        if valid is not None:
            hit &= valid
        out = np.where(hit, vocab_ids[pos], 0).astype(np.int32)
    return int(out[0]) if scalar else out


def direct_table(vocab_values: np.ndarray, vocab_ids: np.ndarray, max_span: int) -> tuple[int, np.ndarray] | None:
    """(shift, table) of a direct-address lookup: table[v - shift] = id of raw value v, int32.

    Slots 0 and len(table) - 1 hold 0, where values below and above the vocabulary land once
    clipped (``DirectIds.lookup``). None when the vocabulary is empty, spans more than `max_span`
    integers, or holds values beyond +-2^62.
    """
    if (vocab_values.size == 0 or vocab_values[0] <= -_DIRECT_VALUE_LIMIT
            or vocab_values[-1] >= _DIRECT_VALUE_LIMIT):
        return None
    span = int(vocab_values[-1]) - int(vocab_values[0]) + 1
    if span > max_span:
        return None
    shift = int(vocab_values[0]) - 1  # raw value v -> slot v - shift; slots 0 and span + 1 stay 0 (OOV)
    table = np.zeros(span + 2, np.int32)
    table[vocab_values - shift] = vocab_ids
    return shift, table


class DirectIds:
    """The direct-address tables of k vocabularies (``direct_table``), looked up with one gather.

    Their tables are concatenated (field j's slots start at bases[j]); raw values are shifted
    and clipped per field, so a value outside a vocabulary's span lands on an OOV slot. The ids
    equal ``lookup_ids``'s for every int64 value (tests/features/test_encoding.py).
    """

    def __init__(self, tables: Sequence[tuple[int, np.ndarray]]) -> None:
        sizes = np.array([len(t) for _, t in tables], dtype=np.int64)
        self.nbytes = int(4 * sizes.sum())
        self._shifts = np.array([s for s, _ in tables], dtype=np.int64)[:, None]  # (k, 1)
        self._last_slots = (sizes - 1)[:, None]  # (k, 1)
        self._bases = (np.cumsum(sizes) - sizes)[:, None]  # (k, 1)
        self._table = np.concatenate([t for _, t in tables]) if tables else np.zeros(0, np.int32)

    def lookup(self, values: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """Ids (k, B) int32 of raw int64 values (k, B), 0 where `valid` (k, B) is False."""
        slots = np.clip(values - self._shifts, 0, self._last_slots)  # (k, B)
        ids = self._table[slots + self._bases]  # (k, B)
        if valid is not None:
            ids[~valid] = 0
        return ids


def _int_values(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(int64 values with nulls as 0, validity mask) of an integer Arrow array."""
    valid = ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    values = np.asarray(arr.fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)
    return values, valid


@dataclass(frozen=True)
class FeatureEncoder:
    """One run date's encoding: vocabularies, numeric bin edges and window impressions per ad.

    vocab[field] = (sorted raw values int64, ids int32); bin_edges[field] = sorted distinct
    float64 edges; ad_window_counts = (sorted ad ids int64, impressions in the window int64);
    stable_ids[field] = the registry id (spark_jobs/id_registry.py) of each vocabulary value,
    aligned with vocab[field][0] (None for encoders saved before the registry existed).

    A run's ids are the rows of its model's embedding tables: its active values ranked by window
    frequency. The raw value and the stable id of a row are two names of the same value; the
    features job encodes stored day rows by stable id (`encode_batch(..., stable=True)`), serving
    encodes raw requests by value, and both give the same row.
    """

    vocab: dict[str, tuple[np.ndarray, np.ndarray]]
    bin_edges: dict[str, np.ndarray]
    ad_window_counts: tuple[np.ndarray, np.ndarray] = field(
        default_factory=lambda: (np.zeros(0, np.int64), np.zeros(0, np.int64)))
    stable_ids: dict[str, np.ndarray] | None = None

    def __post_init__(self) -> None:
        missing = [f for f in VOCAB_FIELDS if f not in self.vocab] + \
                  [f for f in NUMERIC_FIELDS if f not in self.bin_edges]
        if missing:
            raise ValueError(f"feature encoder lacks fields {missing}; it needs a vocabulary for each of "
                             f"{list(VOCAB_FIELDS)} and bin edges for each of {list(NUMERIC_FIELDS)}")
        for name, (values, ids) in self.vocab.items():
            if values.shape != ids.shape or (values.size > 1 and not np.all(np.diff(values) > 0)):
                raise ValueError(f"vocabulary of field {name!r} must have sorted distinct values aligned with ids")
        if self.stable_ids is not None:
            for name in VOCAB_FIELDS:
                stable = self.stable_ids.get(name)
                if stable is None or stable.shape != self.vocab[name][0].shape:
                    raise ValueError(f"stable ids of field {name!r} must be aligned with its vocabulary values")
                if stable.size and int(stable.min()) < 1:
                    raise ValueError(f"stable ids of field {name!r} must be >= 1, got {int(stable.min())}")

    @classmethod
    def from_entries(cls, vocab_entries: dict[str, dict[int, int]], bin_edges: dict[str, list[float]],
                     ad_window_counts: dict[int, int] | None = None,
                     stable_ids: dict[str, dict[int, int]] | None = None) -> "FeatureEncoder":
        """Build from plain dicts: {field: {raw value: id}}, {field: edges}, {ad_id: impressions},
        and optionally {field: {raw value: stable id}} for every vocabulary value."""
        vocab, stable = {}, None if stable_ids is None else {}
        for name in VOCAB_FIELDS:
            entries = vocab_entries.get(name, {})
            values = np.array(sorted(entries), dtype=np.int64)
            vocab[name] = (values, np.array([entries[v] for v in values.tolist()], dtype=np.int32))
            if stable is not None:
                of = stable_ids.get(name, {})
                unknown = [v for v in values.tolist() if v not in of]
                if unknown:
                    raise ValueError(f"field {name!r}: vocabulary values {unknown[:5]} have no stable id")
                stable[name] = np.array([of[v] for v in values.tolist()], dtype=np.int64)
        edges = {name: np.array(sorted(set(bin_edges.get(name, []))), dtype=np.float64) for name in NUMERIC_FIELDS}
        counts = ad_window_counts or {}
        ads = np.array(sorted(counts), dtype=np.int64)
        return cls(vocab, edges, (ads, np.array([counts[a] for a in ads.tolist()], dtype=np.int64)), stable)

    def vocab_size(self, name: str) -> int:
        """Ids of a field including OOV (numeric fields: bins + the null bin)."""
        if name in NUMERIC_FIELDS:
            return int(self.bin_edges[name].size) + 2
        ids = self.vocab[name][1]
        return int(ids.max()) + 1 if ids.size else 1

    def direct_ids(self, name: str) -> DirectIds | None:
        """The direct-address lookup of a vocabulary of narrow value span, else None.

        Built on first use and kept: a gather is several times faster than a binary search over
        the sorted values, with the same ids.
        """
        cache = self.__dict__.setdefault("_direct_ids", {})  # frozen fields; a private cache
        if name not in cache:
            values, ids = self.vocab[name]
            table = direct_table(values, ids, max(DENSE_MIN_SPAN, DENSE_SPAN_PER_ENTRY * values.size))
            cache[name] = None if table is None else DirectIds([table])
        return cache[name]

    def stable_lookup(self, name: str) -> DirectIds:
        """The direct-address lookup stable id -> this run's id of a vocabulary field (built once).

        Stable ids are dense (1, 2, ... per field), so the table spans at most the field's
        registry; an id that is not active in this run (or above every active one) maps to 0.
        """
        if self.stable_ids is None:
            raise ValueError("this encoder has no stable ids (saved before the id registry); "
                             "it encodes raw values only")
        cache = self.__dict__.setdefault("_stable_lookup", {})
        if name not in cache:
            stable, ids = self.stable_ids[name], self.vocab[name][1]
            order = np.argsort(stable, kind="stable")
            table = direct_table(stable[order], ids[order], 1 << 62)
            cache[name] = DirectIds([table if table is not None else (0, np.zeros(2, np.int32))])
        return cache[name]

    def encode_single(self, name: str, values, valid: np.ndarray | None = None):
        """Ids of one single-valued field's raw values (scalar or array)."""
        if name in NUMERIC_FIELDS:
            if valid is not None:
                values = np.where(valid, np.asarray(values, dtype=np.float64), np.nan)
            return apply_bin_edges(self.bin_edges[name], values)
        vocab_values, vocab_ids = self.vocab[name]
        if values is None or np.isscalar(values):
            return lookup_ids(vocab_values, vocab_ids, values, valid)
        direct = self.direct_ids(name)
        if direct is None:
            return lookup_ids(vocab_values, vocab_ids, values, valid)
        x = np.asarray(values, dtype=np.int64)[None]  # (1, B)
        return direct.lookup(x, None if valid is None else np.asarray(valid, dtype=bool)[None])[0]

    def is_cold(self, ad_ids: np.ndarray) -> np.ndarray:
        """True where the ad had fewer than COLD_MAX_IMPRESSIONS impressions in the window."""
        ads, counts = self.ad_window_counts
        x = np.asarray(ad_ids, dtype=np.int64)
        n = np.zeros(x.shape, dtype=np.int64)
        if ads.size:
            pos = np.minimum(np.searchsorted(ads, x), ads.size - 1)
            n = np.where(ads[pos] == x, counts[pos], 0)
        return n < COLD_MAX_IMPRESSIONS

    def encode_batch(self, batch: pa.RecordBatch, stable: bool = False) -> pa.RecordBatch:
        """Encode a batch of joined impression rows into ENCODED_BATCH_COLUMNS.

        Inputs: PASSTHROUGH_COLUMNS, click, ad_id and the raw SINGLE_FIELDS / MULTI_FIELDS columns;
        with `stable`, the vocabulary fields are read as stable ids from their `stable_column`
        instead (stored day rows, spark_jobs/id_registry.py), the numeric fields stay raw.
        """
        n = batch.num_rows
        cols = {name: batch.column(batch.schema.get_field_index(name)) for name in batch.schema.names}
        out: dict[str, pa.Array] = {c: cols[c] for c in PASSTHROUGH_COLUMNS}
        ad_raw, ad_valid = _int_values(cols["ad_id"])
        out["ad_id"] = cols["ad_id"].cast(pa.int64())
        out["label"] = cols["click"].cast(pa.int32())
        out["is_cold"] = pa.array(self.is_cold(ad_raw) | ~ad_valid, type=pa.bool_())
        def ids_of(name: str, values: np.ndarray, valid: np.ndarray) -> np.ndarray:
            if not stable:
                return self.encode_single(name, values, valid)
            return self.stable_lookup(name).lookup(values[None], valid[None])[0]

        for name in SINGLE_FIELDS:
            if name in NUMERIC_FIELDS:
                arr = cols[name]
                values = np.asarray(arr.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False))
                ids = apply_bin_edges(self.bin_edges[name], values)
            else:
                values, valid = _int_values(cols[stable_column(name) if stable else name])
                ids = ids_of(name, values, valid)
            out[f"f_{name}"] = pa.array(ids, type=pa.int32())
        out["category_idx"] = out["f_category_id"]
        for name in MULTI_FIELDS:
            lists = cols[stable_column(name) if stable else name]
            lengths = np.asarray(pc.list_value_length(lists).fill_null(0).to_numpy(zero_copy_only=False),
                                 dtype=np.int64)
            flat_values, flat_valid = _int_values(pc.list_flatten(lists))  # null lists contribute nothing
            flat_ids = ids_of(name, flat_values, flat_valid)
            offsets = np.zeros(n + 1, dtype=np.int32)
            np.cumsum(lengths, out=offsets[1:])
            out[f"m_{name}"] = pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()),
                                                         pa.array(flat_ids, type=pa.int32()))
        return pa.RecordBatch.from_arrays([out[c] for c in ENCODED_BATCH_COLUMNS], names=list(ENCODED_BATCH_COLUMNS))


# Columns produced by FeatureEncoder.encode_batch, in order.
ENCODED_BATCH_COLUMNS: tuple[str, ...] = (
    "split", "impression_id", "event_ts", "ad_id", "label", "is_cold", "category_idx",
    *[f"f_{n}" for n in SINGLE_FIELDS], *[f"m_{n}" for n in MULTI_FIELDS],
)


# --------------------------------------------------------------------------- the saved form


ENCODER_FILE = "encoder.npz"  # the saved encoder's name in a lookup folder and in a training snapshot


def save_encoder(encoder: FeatureEncoder, path: str | os.PathLike) -> None:
    """Write the encoder as one .npz of plain arrays (readable with allow_pickle=False) to the
    local `path`, atomically (core.storage.write_bytes of encoder_bytes for any URI)."""
    with replace_file(path, "wb") as f:
        f.write(encoder_bytes(encoder))


def encoder_bytes(encoder: FeatureEncoder) -> bytes:
    """The .npz file save_encoder writes, as bytes."""
    arrays: dict[str, np.ndarray] = {}
    for name, (values, ids) in encoder.vocab.items():
        arrays[f"vocab_values.{name}"] = np.asarray(values, dtype=np.int64)
        arrays[f"vocab_ids.{name}"] = np.asarray(ids, dtype=np.int32)
        if encoder.stable_ids is not None:
            arrays[f"vocab_stable_ids.{name}"] = np.asarray(encoder.stable_ids[name], dtype=np.int64)
    for name, edges in encoder.bin_edges.items():
        arrays[f"bin_edges.{name}"] = np.asarray(edges, dtype=np.float64)
    arrays["ad_window_counts.ad_id"] = np.asarray(encoder.ad_window_counts[0], dtype=np.int64)
    arrays["ad_window_counts.impressions"] = np.asarray(encoder.ad_window_counts[1], dtype=np.int64)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def load_encoder_file(path: str | os.PathLike | IO[bytes]) -> FeatureEncoder:
    """The FeatureEncoder written by ``save_encoder`` (a path or an open binary file)."""
    with np.load(path, allow_pickle=False) as z:
        vocab = {n: (z[f"vocab_values.{n}"], z[f"vocab_ids.{n}"]) for n in VOCAB_FIELDS}
        edges = {n: z[f"bin_edges.{n}"] for n in NUMERIC_FIELDS}
        counts = (z["ad_window_counts.ad_id"], z["ad_window_counts.impressions"])
        stable = ({n: z[f"vocab_stable_ids.{n}"] for n in VOCAB_FIELDS}
                  if all(f"vocab_stable_ids.{n}" in z.files for n in VOCAB_FIELDS) else None)
    return FeatureEncoder(vocab, edges, counts, stable)
