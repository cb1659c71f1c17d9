"""A numpy reference of the examples layout and encoding (spark_jobs/example_assembly.py does it in Spark).

The examples table was once assembled in the driver with exactly this code. The tests keep it
as an independent statement of the layout: the Spark job must give the same table, row for row.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.encoder import FeatureEncoder
from features.examples import FILE_COLUMNS, FILE_SCHEMA, take_rows
from spark_jobs.example_assembly import NULL_AD_KEY, group_shuffle_keys, within_ad_keys


def ad_order(ad_key: np.ndarray, within_ad: np.ndarray) -> np.ndarray:
    """Row indices sorted by (ad_key, within_ad), ties in input order: np.lexsort's answer.

    Faster path: when the spans of both keys fit in 63 bits together (ad ids of up to about
    2^26 with a 32-day window) and no two rows share both, one argsort of the packed key
    (SIMD-accelerated in numpy) replaces the two-key lexsort; with unique keys any sort
    algorithm gives the same order. The null-ad key sorts first either way.
    """
    if ad_key.size > 1:
        real = ad_key != NULL_AD_KEY
        if real.any():
            everyone_real = bool(real.all())
            lo_ad = int(ad_key[real].min()) - (0 if everyone_real else 1)  # null ads just below the real ones
            ads = ad_key if everyone_real else np.where(real, ad_key, lo_ad)
            ad_bits = (int(ads.max()) - lo_ad).bit_length()
            lo, hi = int(within_ad.min()), int(within_ad.max())
            within_bits = (hi - lo).bit_length()
            if ad_bits + within_bits <= 63:
                key = ((ads.astype(np.int64) - lo_ad) << within_bits) | (within_ad.astype(np.int64) - lo)
                order = np.argsort(key)
                packed = key[order]
                if not np.any(packed[1:] == packed[:-1]):
                    return order
    return np.lexsort((within_ad, ad_key))


def ad_group_layout(ad_key: np.ndarray, within_ad: np.ndarray, group_size: int, seed: int,
                    run_date: dt.date) -> tuple[np.ndarray, np.ndarray]:
    """(group_id, row_idx) of every row, both int64 and aligned with the input.

    The rows of an ad, ordered by `within_ad`, are cut into consecutive groups of at most
    `group_size`; groups are ordered by `group_shuffle_keys` (ties by ad, then group number),
    numbered 0.. in that order, and laid out contiguously: row_idx = the group's offset + the
    row's position in it. Every row gets exactly one row_idx in 0..n-1.
    """
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    n = int(ad_key.size)
    if within_ad.shape != ad_key.shape:
        raise ValueError(f"ad_key and within_ad differ in shape: {ad_key.shape} vs {within_ad.shape}")
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = ad_order(ad_key, within_ad)
    ads = ad_key[order]
    new_ad = np.empty(n, dtype=bool)
    new_ad[0] = True
    np.not_equal(ads[1:], ads[:-1], out=new_ad[1:])
    ad_start = np.flatnonzero(new_ad)
    pos = np.arange(n, dtype=np.int64) - np.repeat(ad_start, np.diff(np.append(ad_start, n)))
    pos_in_group = pos % group_size
    starts = np.flatnonzero(pos_in_group == 0)
    sizes = np.diff(np.append(starts, n))
    g_ad, g_no = ads[starts], pos[starts] // group_size
    g_order = np.lexsort((g_no, g_ad, group_shuffle_keys(seed, run_date, g_ad, g_no)))
    group_id = np.empty(starts.size, dtype=np.int64)
    group_id[g_order] = np.arange(starts.size, dtype=np.int64)
    offset = np.empty(starts.size, dtype=np.int64)
    ordered_sizes = sizes[g_order]
    offset[g_order] = np.cumsum(ordered_sizes) - ordered_sizes
    row_group = np.cumsum(pos_in_group == 0) - 1
    out_group, out_idx = np.empty(n, np.int64), np.empty(n, np.int64)
    out_group[order] = group_id[row_group]
    out_idx[order] = offset[row_group] + pos_in_group
    return out_group, out_idx


def encode_day_rows(encoder: FeatureEncoder, table: pa.Table, day: dt.date,
                    split: str) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """Encode one day's rows: (encoded columns, ad keys, within-ad keys).

    `table` holds a day-rows file's columns (DAY_ROW_READ_COLUMNS: the vocabulary fields as stable
    ids, which the run's encoder maps to its ids, inactive ones to 0). The encoded table has
    FILE_COLUMNS except run_date, row_idx, group_id.
    """
    n = table.num_rows
    batch_table = table.append_column("split", pa.repeat(pa.scalar(split, pa.string()), n))
    batches = batch_table.combine_chunks().to_batches() or [pa.RecordBatch.from_pylist([], schema=batch_table.schema)]
    enc = pa.Table.from_batches([encoder.encode_batch(b, stable=True) for b in batches])
    ad = table.column("ad_id").combine_chunks()
    ad_key = np.asarray(pc.fill_null(ad.cast(pa.int64()), NULL_AD_KEY).to_numpy(zero_copy_only=False), np.int64)
    ad_pos = np.asarray(table.column("ad_pos").to_numpy(), np.int64)
    keys = within_ad_keys(np.full(n, (day - dt.date(1970, 1, 1)).days, np.int64), ad_pos)
    keep = [c for c in FILE_COLUMNS if c not in ("run_date", "row_idx", "group_id")]
    return enc.select(keep), ad_key, keys



def assemble_split(encoder: FeatureEncoder, days: list[tuple[dt.date, pa.Table]], split: str, run_date: dt.date,
                   group_size: int, seed: int) -> pa.Table:
    """One split's examples (FILE_SCHEMA, in row_idx order) from [(day, that day's rows)]."""
    parts = [encode_day_rows(encoder, table, day, split) for day, table in days]
    table = pa.concat_tables([p[0] for p in parts])
    group_id, row_idx = ad_group_layout(np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts]),
                                        group_size, seed, run_date)
    n = table.num_rows
    order = np.empty(n, dtype=np.int64)
    order[row_idx] = np.arange(n, dtype=np.int64)  # row_idx is a permutation of 0..n-1: invert it
    table = take_rows(table, order)
    table = (table.append_column("run_date", pa.repeat(pa.scalar(run_date, pa.date32()), n))
             .append_column("row_idx", pa.array(row_idx[order]))
             .append_column("group_id", pa.array(group_id[order])))
    return table.select(list(FILE_COLUMNS)).cast(FILE_SCHEMA)
