"""Pure DataFrame -> DataFrame transforms of the build_window stage (spark_jobs/build_window.py).

`with_*` adds columns, `agg_*` aggregates; `window_oov_rates` collects one small summary.
"""

from __future__ import annotations

from typing import Callable

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from features.encoder import CATEGORICAL_SINGLE_FIELDS
from features.spec import MULTI_FIELDS, NUMERIC_FIELDS
from spark_jobs.example_assembly import NULL_AD_KEY


def with_catalog(ads_df: DataFrame) -> Callable[[DataFrame], DataFrame]:
    """Join each impression to the catalog row of its ad on the impression's day (left join).

    Ingest keeps one catalog row per (dt, ad_id), so the join never multiplies impressions; an
    impression without a catalog row keeps null ad attributes (OOV ids, null bins).
    """

    def inner(imp_df: DataFrame) -> DataFrame:
        catalog_df = ads_df.select("dt", "ad_id", "category_id", "parent_category_id", "brand_id", "shop_id",
                                   "price", "review_count", "title_words")
        return imp_df.join(catalog_df, on=["dt", "ad_id"], how="left")

    return inner


def agg_daily_value_counts(joined_df: DataFrame, column: Callable[[str], str] = lambda name: name) -> DataFrame:
    """Occurrences of every raw value per (dt, field) of joined impression rows.

    `column` names the column a categorical field is read from (stored day rows hold stable ids
    in `features.encoder.stable_column(field)`); numeric fields are read from their own column.

    Categorical values land in `value` (bigint), numeric ones in `num_value` (double; NaN counts
    as null); null single values are counted too (with both null) so that OOV rates include them.
    Multi-valued fields count each array element; a null array counts nothing.
    """

    def entry(name: str, value, num_value):
        return F.struct(F.lit(name).alias("field"), value.cast("bigint").alias("value"),
                        num_value.cast("double").alias("num_value"))

    no_long, no_double = F.lit(None).cast("bigint"), F.lit(None).cast("double")
    singles = [entry(n, F.col(column(n)), no_double) for n in CATEGORICAL_SINGLE_FIELDS]
    for n in NUMERIC_FIELDS:
        x = F.col(n).cast("double")
        singles.append(entry(n, no_long, F.when(F.isnan(x), None).otherwise(x)))
    def element_entry(name: str):  # a one-argument lambda: transform() passes (x, index) to two
        return lambda x: entry(name, x, no_double)

    multis = [F.transform(F.coalesce(F.col(column(n)).cast("array<bigint>"), F.array().cast("array<bigint>")),
                          element_entry(n)) for n in MULTI_FIELDS]
    entries = F.concat(F.array(*singles), *multis)
    return (joined_df.select("dt", F.explode(entries).alias("e"))
            .select("dt", "e.field", "e.value", "e.num_value")
            .groupBy("dt", "field", "value", "num_value").agg(F.count(F.lit(1)).alias("count")))


def agg_window_counts(daily_counts_df: DataFrame) -> DataFrame:
    """Sum daily value counts over the days present in `daily_counts_df`."""

    return daily_counts_df.groupBy("field", "value", "num_value").agg(F.sum("count").cast("bigint").alias("count"))


def field_threshold(thresholds: dict[str, int]):
    """A Column: the frequency threshold of the row's `field` (a literal map lookup)."""

    pairs = [x for name, t in sorted(thresholds.items()) for x in (F.lit(name), F.lit(t))]
    return F.create_map(*pairs)[F.col("field")]


def agg_vocabulary(thresholds: dict[str, int], extra: tuple[str, ...] = ()) -> Callable[[DataFrame], DataFrame]:
    """Vocabulary rows (field, value, id, count, *extra) from window counts: values seen >= the
    field's threshold; ids 1.. by descending count, ties by ascending value (id 0 stays OOV).
    `extra` columns of the counts (e.g. the stable id) are carried along."""

    def inner(window_counts_df: DataFrame) -> DataFrame:
        threshold = field_threshold(thresholds)
        order = Window.partitionBy("field").orderBy(F.col("count").desc(), F.col("value").asc())
        return (window_counts_df
                .where(F.col("field").isin(list(thresholds)) & F.col("value").isNotNull()
                       & (F.col("count") >= threshold))
                .select("field", "value", F.row_number().over(order).cast("int").alias("id"), "count", *extra))

    return inner


def agg_bin_edges(n_bins: int) -> Callable[[DataFrame], DataFrame]:
    """Exact quantile bin edges (field, edges) of numeric fields from window value counts.

    Edge k (k = 1..n_bins-1) is the smallest value whose cumulative count reaches k/n_bins of
    the field's non-null count; equal edges (heavy values) collapse, so a field may get fewer
    than n_bins bins. Fields without any non-null value get no row.
    """

    def inner(window_counts_df: DataFrame) -> DataFrame:
        spark = window_counts_df.sparkSession
        by_field = Window.partitionBy("field")
        cumulative = by_field.orderBy("num_value").rowsBetween(Window.unboundedPreceding, Window.currentRow)
        cdf_df = (window_counts_df
                  .where(F.col("field").isin(list(NUMERIC_FIELDS)) & F.col("num_value").isNotNull())
                  .select("field", "num_value", F.sum("count").over(cumulative).alias("cum"),
                          F.sum("count").over(by_field).alias("total")))
        ks_df = spark.range(1, n_bins).select(F.col("id").alias("k"))
        return (cdf_df.crossJoin(F.broadcast(ks_df))
                .where(F.col("cum") * n_bins >= F.col("k") * F.col("total"))  # integer maths: no rounding
                .groupBy("field", "k").agg(F.min("num_value").alias("edge"))
                .groupBy("field").agg(F.array_sort(F.collect_set("edge")).alias("edges")))

    return inner


def with_ad_positions(df: DataFrame) -> DataFrame:
    """Add `ad_pos` (int, 0..): each row's position among the rows of its ad and dt, ordered by
    (event_ts, impression_id). Rows with a null ad_id are ordered as one more ad."""

    ad_key = F.coalesce(F.col("ad_id").cast("bigint"), F.lit(NULL_AD_KEY))
    within_ad = Window.partitionBy("dt", "_ad_key").orderBy("event_ts", "impression_id")
    return (df.withColumn("_ad_key", ad_key)
            .withColumn("ad_pos", (F.row_number().over(within_ad) - 1).cast("int")).drop("_ad_key"))


def window_oov_rates(window_counts_df: DataFrame, thresholds: dict[str, int]) -> dict[str, float]:
    """Per vocabulary field, the window's share of occurrences (nulls included) that map to OOV."""

    threshold = field_threshold(thresholds)
    in_vocab = F.col("value").isNotNull() & (F.col("count") >= threshold)
    rows = (window_counts_df.where(F.col("field").isin(list(thresholds))).groupBy("field")
            .agg(F.sum("count").alias("total"), F.sum(F.when(in_vocab, F.col("count")).otherwise(0)).alias("kept"))
            .collect())
    totals = {r["field"]: int(r["total"]) for r in rows}
    return field_rates({r["field"]: int(r["total"]) - int(r["kept"]) for r in rows},
                        {n: totals.get(n, 0) for n in thresholds})


def field_rates(numerators: dict[str, int], denominators: dict[str, int]) -> dict[str, float]:
    """numerators[k] / denominators[k] per key of `denominators` (0.0 where the denominator is 0)."""
    return {k: (numerators.get(k, 0) / denominators[k]) if denominators.get(k) else 0.0 for k in denominators}
