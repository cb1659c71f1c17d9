"""Scoring requests in the raw data contract, their validation, and their encoding into model ids.

A request is one (user, context, ad) triple given as raw contract fields (core/contract.py):

    {"user_id": 17, "ad_id": 1042, "category_id": 3, "weekday": 2, "hour": 20,
     "price": 19.9, "title_words": [5, 81], "query_words": [], ...}

Required: user_id, ad_id, category_id, weekday, hour (the contract's required feature fields).
Every other feature field is optional (absent or null = out of vocabulary / null bin, as in
training). ``impression_id`` and ``event_ts`` may be present and are ignored. Any other key is
an error, as is a value of the wrong type; the error names the request and the field.

Encoding applies the run's FeatureEncoder (features/encoder.py: the very functions the features
job used), vectorised per field over the whole batch. The encoder travels with a published
version as ``encoder.npz`` (features.encoder.save_encoder / load_encoder_file).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from features.encoder import DirectIds, FeatureEncoder, direct_table
from features.spec import MULTI_FIELDS, NUMERIC_FIELDS, SINGLE_FIELDS

REQUIRED_FIELDS: tuple[str, ...] = ("user_id", "ad_id", "category_id", "weekday", "hour")
IGNORED_FIELDS: tuple[str, ...] = ("impression_id", "event_ts")
ALLOWED_FIELDS: frozenset[str] = frozenset((*SINGLE_FIELDS, *MULTI_FIELDS, *IGNORED_FIELDS))
_INT_TYPES = (int, np.integer)


class RequestError(ValueError):
    """A scoring request is malformed; the message names the request index and the field."""


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

    A vocabulary whose raw values span at most ``max_span`` integers is looked up through its
    direct-address table (features.encoder.direct_table / DirectIds), so a lookup is one gather
    instead of a binary search: ~14 dependent cache misses per value for a 10k vocabulary once
    the model's weights have pushed it out of cache. The single-valued fields with a table are
    looked up together, in one gather. Wider vocabularies, numeric binning and fields without a
    vocabulary use ``FeatureEncoder.encode_single`` itself; the ids are the same either way
    (tests/serving/test_requests_encoder.py). Tables are built once, within ``max_bytes`` in all.
    """

    def __init__(self, encoder: FeatureEncoder, single_names: tuple[str, ...], multi_names: tuple[str, ...],
                 max_span: int = 1 << 21, max_bytes: int = 64 << 20) -> None:
        self.encoder = encoder
        self.single_names, self.multi_names = tuple(single_names), tuple(multi_names)
        tables: dict[str, tuple[int, np.ndarray]] = {}  # name -> (shift, ids (span + 2,) int32)
        budget = max_bytes
        for name in dict.fromkeys((*self.single_names, *self.multi_names)):
            if name not in encoder.vocab or name in NUMERIC_FIELDS:
                continue
            values, ids = encoder.vocab[name]
            if values.size and 4 * (int(values[-1]) - int(values[0]) + 3) > budget:  # 4 bytes x (span + 2)
                continue
            table = direct_table(values, ids, max_span)
            if table is not None:
                tables[name] = table
                budget -= table[1].nbytes
        self.direct: dict[str, DirectIds] = {name: DirectIds([t]) for name, t in tables.items()}
        self._direct_names = [n for n in self.single_names if n in tables]
        self._direct_singles = DirectIds([tables[n] for n in self._direct_names])

    def ids(self, name: str, values: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """Ids of one field's raw values (B,), as ``FeatureEncoder.encode_single`` gives them."""
        direct = self.direct.get(name)
        if direct is None:
            return self.encoder.encode_single(name, values, valid)
        x = np.asarray(values, dtype=np.int64)[None]  # (1, B)
        return direct.lookup(x, None if valid is None else valid[None])[0]  # (B,)

    def encode(self, cols: RequestColumns) -> EncodedRequests:
        """Model inputs of validated request columns (``encode_requests``'s result)."""
        direct_names = self._direct_names
        if not direct_names:
            return _encode(self.ids, cols, self.single_names, self.multi_names)
        raw = np.stack([cols.single[n][0] for n in direct_names])  # (k, B) int64
        valid = np.stack([cols.single[n][1] for n in direct_names])  # (k, B) bool; null values -> OOV id 0
        ids = self._direct_singles.lookup(raw, valid)  # (k, B) int32
        return _encode(self.ids, cols, self.single_names, self.multi_names, dict(zip(direct_names, ids)))
