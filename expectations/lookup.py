"""Suite for the ad-embedding lookup table (ad_id bigint, embedding array<float|double>).

GX checks columns, so the table is validated through a projection with one row per ad:

    result = validate(cfg, project_lookup(table_df), build_lookup_suite(dims, 1e-3, 1e3), "lookup", run_name)

`project_lookup` yields ad_id, dim = size(embedding) (null for a null embedding),
norm = L2 norm in double precision, has_nan_or_inf = any element NaN or +-Inf. A NaN element also
makes the norm NaN, which Spark orders above every number, so the norm bound fails too.
"""

from __future__ import annotations

import great_expectations as gx
import great_expectations.expectations as gxe
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from expectations.runner import expectation, new_suite

LOOKUP_SUITE = "lookup_table"


def project_lookup(table_df: DataFrame, embedding_col: str = "embedding") -> DataFrame:
    """The DataFrame the lookup suite validates: ad_id, dim, norm, has_nan_or_inf (one row per row)."""
    missing = [c for c in ("ad_id", embedding_col) if c not in table_df.columns]
    if missing:
        raise ValueError(f"lookup DataFrame lacks columns {missing}; it has {table_df.columns}")
    emb = F.col(embedding_col)
    sum_sq = F.aggregate(emb, F.lit(0.0).cast("double"), lambda acc, x: acc + x.cast("double") * x.cast("double"))
    bad = F.exists(emb, lambda x: F.isnan(x) | (F.abs(x.cast("double")) == F.lit(float("inf"))))
    return table_df.select(
        F.col("ad_id"),
        F.size(emb).alias("dim"),
        F.sqrt(sum_sq).alias("norm"),
        F.coalesce(bad, F.lit(False)).alias("has_nan_or_inf"),
    )


def build_lookup_suite(dims: int, norm_min: float, norm_max: float) -> gx.ExpectationSuite:
    """Suite for `project_lookup(table_df)`: unique non-null ad ids, `dims` values per embedding,
    no NaN/Inf, L2 norms within [norm_min, norm_max], at least one row. All critical."""
    if dims < 1:
        raise ValueError(f"dims must be >= 1, got {dims}")
    if not 0 <= norm_min <= norm_max:
        raise ValueError(f"need 0 <= norm_min <= norm_max, got norm_min={norm_min}, norm_max={norm_max}")
    return new_suite(LOOKUP_SUITE, [
        expectation(gxe.ExpectTableRowCountToBeBetween, critical=True, min_value=1, max_value=None),
        expectation(gxe.ExpectColumnValuesToNotBeNull, critical=True, column="ad_id"),
        expectation(gxe.ExpectColumnValuesToBeUnique, critical=True, column="ad_id"),
        expectation(gxe.ExpectColumnValuesToNotBeNull, critical=True, column="dim"),
        expectation(gxe.ExpectColumnValuesToBeBetween, critical=True, column="dim", min_value=dims, max_value=dims),
        expectation(gxe.ExpectColumnValuesToBeInSet, critical=True, column="has_nan_or_inf", value_set=[False]),
        expectation(gxe.ExpectColumnValuesToBeBetween, critical=True, column="norm", min_value=norm_min,
                    max_value=norm_max),
    ])
