"""Scoring requests in the raw data contract, their validation, and their encoding into model ids.

A request is one (user, context, ad) triple given as raw contract fields (core/contract.py):

    {"user_id": 17, "ad_id": 1042, "category_id": 3, "weekday": 2, "hour": 20,
     "price": 19.9, "title_words": [5, 81], "query_words": [], ...}

Required: user_id, ad_id, category_id, weekday, hour (the contract's required feature fields).
Every other feature field is optional (absent or null = out of vocabulary / null bin, as in
training). ``impression_id`` and ``event_ts`` may be present and are ignored. Any other key is
an error, as is a value of the wrong type; the error names the request and the field.

Encoding applies the run's FeatureEncoder (spark_jobs/feature_encoding.py: the very functions the
features job used), vectorised per field over the whole batch. The encoder travels with a published
version as ``encoder.npz`` (``save_encoder`` / ``load_encoder_file``).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from core.feature_spec import MULTI_FIELDS, NUMERIC_FIELDS, SINGLE_FIELDS
from spark_jobs.feature_encoding import VOCAB_FIELDS, FeatureEncoder

REQUIRED_FIELDS: tuple[str, ...] = ("user_id", "ad_id", "category_id", "weekday", "hour")
IGNORED_FIELDS: tuple[str, ...] = ("impression_id", "event_ts")
ALLOWED_FIELDS: frozenset[str] = frozenset((*SINGLE_FIELDS, *MULTI_FIELDS, *IGNORED_FIELDS))
_INT_TYPES = (int, np.integer)


class RequestError(ValueError):
    """A scoring request is malformed; the message names the request index and the field."""


# --------------------------------------------------------------------------- encoder files


def save_encoder(encoder: FeatureEncoder, path: str | os.PathLike) -> None:
    """Write the encoder as one .npz of plain arrays (readable with allow_pickle=False)."""
    arrays: dict[str, np.ndarray] = {}
    for name, (values, ids) in encoder.vocab.items():
        arrays[f"vocab_values.{name}"] = np.asarray(values, dtype=np.int64)
        arrays[f"vocab_ids.{name}"] = np.asarray(ids, dtype=np.int32)
    for name, edges in encoder.bin_edges.items():
        arrays[f"bin_edges.{name}"] = np.asarray(edges, dtype=np.float64)
    arrays["ad_window_counts.ad_id"] = np.asarray(encoder.ad_window_counts[0], dtype=np.int64)
    arrays["ad_window_counts.impressions"] = np.asarray(encoder.ad_window_counts[1], dtype=np.int64)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "wb") as f:
        f.write(buf.getvalue())
    os.replace(tmp, path)


def load_encoder_file(path: str | os.PathLike) -> FeatureEncoder:
    """The FeatureEncoder written by ``save_encoder``."""
    with np.load(path, allow_pickle=False) as z:
        vocab = {n: (z[f"vocab_values.{n}"], z[f"vocab_ids.{n}"]) for n in VOCAB_FIELDS}
        edges = {n: z[f"bin_edges.{n}"] for n in NUMERIC_FIELDS}
        counts = (z["ad_window_counts.ad_id"], z["ad_window_counts.impressions"])
    return FeatureEncoder(vocab, edges, counts)


# --------------------------------------------------------------------------- validation


@dataclass
class RequestColumns:
    """A batch of requests as columns: values with nulls filled, plus validity masks.

    single[name] = (values (B,) int64 or float64 for numeric fields, valid (B,) bool);
    multi[name] = (flat ids (N,) int64, lengths (B,) int64)."""

    size: int
    single: dict[str, tuple[np.ndarray, np.ndarray]]
    multi: dict[str, tuple[np.ndarray, np.ndarray]]


def _type_error(records: list[Mapping[str, Any]], name: str, ok) -> RequestError:
    for i, r in enumerate(records):
        v = r.get(name)
        if not ok(v):
            return RequestError(f"request {i}: field {name!r} has {type(v).__name__} value {v!r}; "
                                f"expected {_expected(name)}")
    return RequestError(f"field {name!r}: expected {_expected(name)}")


def _expected(name: str) -> str:
    if name in MULTI_FIELDS:
        return "a list of integer ids (or null)"
    if name in NUMERIC_FIELDS:
        return "a number (or null)"
    return "an integer" + ("" if name in REQUIRED_FIELDS else " (or null)")


def _is_int(v: Any) -> bool:
    return isinstance(v, _INT_TYPES) and not isinstance(v, bool)


def _all_int_types(types: set[type], nullable: bool = True) -> bool:
    """Whether every Python type seen in a column is an integer type (None allowed if nullable)."""
    return all((t is type(None) and nullable) or (issubclass(t, _INT_TYPES) and t is not bool) for t in types)


def columns_from_records(records: Iterable[Mapping[str, Any]]) -> RequestColumns:
    """Validate request dicts and turn them into columns (one pass per field, not per request)."""
    records = list(records)
    for i, r in enumerate(records):
        if not isinstance(r, Mapping):
            raise RequestError(f"request {i}: expected a JSON object of contract fields, got {type(r).__name__}")
    keys = set().union(*records) if records else set()
    unknown = sorted(keys - ALLOWED_FIELDS, key=str)
    if unknown:
        i = next(i for i, r in enumerate(records) if unknown[0] in r)
        raise RequestError(f"request {i}: unknown field {unknown[0]!r}; allowed fields: "
                           f"{', '.join(sorted(ALLOWED_FIELDS))}")
    n = len(records)
    single: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in SINGLE_FIELDS:
        col = [r.get(name) for r in records]
        types = {type(v) for v in col}
        if name in REQUIRED_FIELDS and type(None) in types:
            i = col.index(None)
            raise RequestError(f"request {i}: required field {name!r} is missing or null")
        if name in NUMERIC_FIELDS:
            if not all(t is type(None) or (issubclass(t, (int, float, np.integer, np.floating)) and t is not bool)
                       for t in types):
                raise _type_error(records, name, lambda v: v is None or (
                    isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)))
            values = np.array([np.nan if v is None else v for v in col], dtype=np.float64) if n else \
                np.zeros(0, np.float64)
            single[name] = (values, ~np.isnan(values))
        else:
            if not _all_int_types(types):
                raise _type_error(records, name, lambda v: v is None or _is_int(v))
            valid = np.array([v is not None for v in col], dtype=bool)
            values = np.array([0 if v is None else v for v in col], dtype=np.int64) if n else np.zeros(0, np.int64)
            single[name] = (values, valid)
    multi: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in MULTI_FIELDS:
        col = [r.get(name) or () for r in records]
        if not {type(v) for v in col} <= {list, tuple}:
            raise _type_error(records, name, lambda v: v is None or isinstance(v, (list, tuple)))
        lengths = np.fromiter(map(len, col), dtype=np.int64, count=n)
        flat = [x for v in col for x in v]
        if not _all_int_types({type(x) for x in flat}, nullable=False):
            raise _type_error(records, name, lambda v: v is None or all(_is_int(x) for x in v))
        multi[name] = (np.array(flat, dtype=np.int64), lengths)
    return RequestColumns(n, single, multi)


# --------------------------------------------------------------------------- encoding


@dataclass
class EncodedRequests:
    """Model inputs of a request batch (the layout of models.layers.FieldEmbedding)."""

    single: np.ndarray  # (B, n_single) int64, columns in sorted field-name order
    multi_values: dict[str, np.ndarray]  # name -> (N_f,) int64
    multi_offsets: dict[str, np.ndarray]  # name -> (B,) int64
    ad_id: np.ndarray  # (B,) int64 raw ad ids (keys of the lookup table)
    category: np.ndarray  # (B,) int64 encoded category ids (category_idx)


def encode_requests(encoder: FeatureEncoder, cols: RequestColumns,
                    single_names: tuple[str, ...], multi_names: tuple[str, ...]) -> EncodedRequests:
    """Encode request columns with the run's vocabularies and bin edges, vectorised per field."""
    return _encode(encoder.encode_single, cols, single_names, multi_names)


def _encode(ids_of: Callable[..., np.ndarray], cols: RequestColumns, single_names: tuple[str, ...],
            multi_names: tuple[str, ...], single_ids: Mapping[str, np.ndarray] | None = None) -> EncodedRequests:
    """encode_requests with ``ids_of(name, values, valid=None)`` giving one field's ids (except the
    single-valued fields whose ids ``single_ids`` already holds)."""
    b = cols.size
    single_ids = single_ids or {}
    single = np.empty((b, len(single_names)), np.int64)  # (B, n_single)
    for j, name in enumerate(single_names):
        if name in single_ids:
            single[:, j] = single_ids[name]
            continue
        values, valid = cols.single[name]
        single[:, j] = ids_of(name, values, None if name in NUMERIC_FIELDS else valid)
    values_out, offsets_out = {}, {}
    for name in multi_names:
        flat, lengths = cols.multi[name]
        values_out[name] = np.asarray(ids_of(name, flat), dtype=np.int64)  # (N_f,)
        offsets = np.zeros(b, np.int64)
        np.cumsum(lengths[:-1], out=offsets[1:])  # start of each request's list
        offsets_out[name] = offsets
    category = single[:, single_names.index("category_id")] if "category_id" in single_names else \
        np.zeros(b, np.int64)
    return EncodedRequests(single, values_out, offsets_out, cols.single["ad_id"][0], category)


class RequestEncoder:
    """``encode_requests`` for one encoder and model layout, with the vocabulary lookups direct.

    A vocabulary whose raw values span at most ``max_span`` integers becomes a direct-address
    array (raw value - lowest value + 1 -> id, 0 outside), so a lookup is one gather instead of a
    binary search: ~14 dependent cache misses per value for a 10k vocabulary once the model's
    weights have pushed it out of cache. Wider vocabularies, numeric binning and fields without a
    vocabulary use ``FeatureEncoder.encode_single`` itself; the ids are the same either way
    (tests/serving/test_requests_encoder.py). Arrays are built once, within ``max_bytes`` in all.
    """

    def __init__(self, encoder: FeatureEncoder, single_names: tuple[str, ...], multi_names: tuple[str, ...],
                 max_span: int = 1 << 21, max_bytes: int = 64 << 20) -> None:
        self.encoder = encoder
        self.single_names, self.multi_names = tuple(single_names), tuple(multi_names)
        self.direct: dict[str, tuple[int, np.ndarray]] = {}  # name -> (shift, ids (span + 2,) int32)
        budget = max_bytes
        for name in dict.fromkeys((*self.single_names, *self.multi_names)):
            if name not in encoder.vocab or name in NUMERIC_FIELDS:
                continue
            values, ids = encoder.vocab[name]
            # Values within +-2^62 keep raw - shift from wrapping into the table's range.
            if values.size == 0 or values[0] <= -(1 << 62) or values[-1] >= (1 << 62):
                continue
            span = int(values[-1]) - int(values[0]) + 1
            if span > max_span or 4 * (span + 2) > budget:
                continue
            shift = int(values[0]) - 1  # raw value v -> slot v - shift; slots 0 and span + 1 stay 0 (OOV)
            table = np.zeros(span + 2, np.int32)
            table[values - shift] = ids
            self.direct[name] = (shift, table)
            budget -= table.nbytes
        # The single-valued fields with a direct array, looked up together: their arrays concatenated
        # (field k's slots start at bases[k]), raw values shifted and clipped per field, one gather.
        self._direct_names = [n for n in self.single_names if n in self.direct]
        names = self._direct_names
        sizes = np.array([len(self.direct[n][1]) for n in names], dtype=np.int64)
        self._shifts = np.array([self.direct[n][0] for n in names], dtype=np.int64)[:, None]  # (k, 1)
        self._last_slots = (sizes - 1)[:, None]  # (k, 1)
        self._bases = (np.cumsum(sizes) - sizes)[:, None]  # (k, 1)
        self._direct_table = np.concatenate([self.direct[n][1] for n in names]) if names else np.zeros(0, np.int32)

    def ids(self, name: str, values: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """Ids of one field's raw values (B,), as ``FeatureEncoder.encode_single`` gives them."""
        direct = self.direct.get(name)
        if direct is None:
            return self.encoder.encode_single(name, values, valid)
        shift, table = direct
        out = table[np.clip(np.asarray(values, dtype=np.int64) - shift, 0, len(table) - 1)]  # (B,)
        if valid is not None:
            out[~valid] = 0
        return out

    def encode(self, cols: RequestColumns) -> EncodedRequests:
        """Model inputs of validated request columns (``encode_requests``'s result)."""
        direct_names = self._direct_names
        if not direct_names:
            return _encode(self.ids, cols, self.single_names, self.multi_names)
        raw = np.stack([cols.single[n][0] for n in direct_names])  # (k, B) int64
        slots = np.clip(raw - self._shifts, 0, self._last_slots)  # (k, B)
        ids = self._direct_table[slots + self._bases]  # (k, B) int32
        ids[~np.stack([cols.single[n][1] for n in direct_names])] = 0  # null values -> OOV id 0
        return _encode(self.ids, cols, self.single_names, self.multi_names, dict(zip(direct_names, ids)))
