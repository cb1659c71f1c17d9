"""Benchmark of the features stage: full rebuild vs incremental daily run.

    python -m bench.features                          # 10k, 100k and 1M impressions per day
    python -m bench.features --sizes 10000            # only the small case
    python -m bench.features --sizes 1000000 --largest-window-days 16 --set spark.driver_memory=8g

For each size it writes synthetic bronze tables straight into a scratch warehouse (no landing
files, no ingest: Spark generates contract-shaped rows with long-tailed users and ads, so the
benchmark measures only the features stage), then

  1. runs the features job for D-1 incrementally (untimed: registers the values of its window
     days and holdout day D-1 in the id registry and stores their rows encoded to stable ids,
     and the counts of its window days),
  2. times the incremental run for D (registers and stores day D's rows, counts day D-1 from its
     stored rows, sums the stored daily counts),
  3. times the full rebuild for D (features.incremental=false: rejoins, re-encodes, rewrites and
     recounts every day from the bronze tables, against the same id registry).

Both timed runs write the same outputs (vocabularies, bins, and the encoded examples of the
whole window, assembled from the stored day rows; `*_examples_s` is that assembly's share).
Results go to bench/results/features.json; cases of sizes not run this time are kept from an
earlier file with the same window_days. The largest size may use fewer window days
(--largest-window-days); each case records the window it used.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import shutil
import sys
import time

from pyspark.sql import functions as F

from bench.common import checkout_version
from core.cli import setup_logging
from core.config import load_config, parse_overrides
from core.paths import Paths
from core.spark import get_spark
from spark_jobs import build_window

log = logging.getLogger("bench.features")
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "features.json")
RUN_DATE = dt.date(2026, 3, 10)
SEED = 11
TARGET_RATIO = 0.15  # the goal: the incremental daily run costs at most 0.15 of the full rebuild at the largest size


def write_synthetic_bronze(spark, cfg, first_day: dt.date, n_days: int, impressions_per_day: int) -> None:
    """Bronze impressions and daily ad catalogs for n_days days from first_day (partitioned by dt)."""
    n_ads = max(2_000, impressions_per_day // 20)
    n_users = max(5_000, impressions_per_day // 2)
    paths = Paths.of(cfg)

    def long_tail(n: int, salt: int):  # log-uniform ids in [0, n): a few very frequent, a long tail
        return (F.floor(F.pow(F.lit(float(n)), F.rand(SEED + salt))) - 1).cast("bigint")

    def small_list(max_len: int, vocab: int, salt: int):  # 0..max_len word/history ids
        length = F.floor(F.rand(SEED + salt) * (max_len + 1)).cast("int")
        ids = F.transform(F.sequence(F.lit(1), F.lit(max_len)),
                          lambda i: (F.abs(F.xxhash64(F.lit(salt), F.col("id"), i)) % vocab).cast("int"))
        return F.slice(ids, 1, length)

    day_idx = (F.col("id") / impressions_per_day).cast("int")
    imp_df = (spark.range(impressions_per_day * n_days)
              .withColumn("dt", F.date_add(F.lit(first_day), day_idx))
              .select(
                  F.concat_ws("-", F.lit("imp"), F.col("id").cast("string")).alias("impression_id"),
                  F.timestamp_seconds(F.unix_timestamp(F.col("dt").cast("timestamp"))
                                      + F.floor((F.col("id") % impressions_per_day) * 86_399 / impressions_per_day)
                                      ).alias("event_ts"),
                  long_tail(n_users, 1).alias("user_id"), long_tail(n_ads, 2).alias("ad_id"),
                  (F.col("id") % 40).cast("int").alias("user_location"),
                  (F.col("id") % 5).cast("int").alias("user_price_sensitivity"),
                  ((F.dayofweek("dt") + 5) % 7).cast("int").alias("weekday"),
                  F.floor(F.rand(SEED + 3) * 24).cast("int").alias("hour"),
                  small_list(3, 3_000, 4).alias("query_words"),
                  F.floor(F.rand(SEED + 5) * 3).cast("int").alias("query_title_match"),
                  small_list(5, 24, 6).alias("hist_categories"), small_list(5, 500, 7).alias("hist_brands"),
                  small_list(5, 800, 8).alias("hist_shops"),
                  (F.rand(SEED + 9) < 0.03).cast("int").alias("click"), "dt"))
    imp_df.write.format("delta").mode("overwrite").partitionBy("dt").save(paths.bronze_impressions)

    days_df = spark.range(n_days).select(F.date_add(F.lit(first_day), F.col("id").cast("int")).alias("dt"))
    ads_df = (spark.range(n_ads).crossJoin(days_df)
              .select(F.col("id").alias("ad_id"), (F.col("id") % 24).cast("int").alias("category_id"),
                      (F.col("id") % 6).cast("int").alias("parent_category_id"),
                      (F.col("id") % 500).cast("int").alias("brand_id"), (F.col("id") % 800).cast("int").alias("shop_id"),
                      F.round(F.exp(F.rand(SEED + 10) * 6), 2).alias("price"),
                      F.floor(F.pow(F.lit(1000.0), F.rand(SEED + 11))).cast("int").alias("review_count"),
                      F.transform(F.sequence(F.lit(1), F.lit(6)),
                                  lambda i: (F.abs(F.xxhash64(F.col("id"), i)) % 5_000).cast("int")).alias("title_words"),
                      F.concat(F.lit("images/"), F.col("id").cast("string"), F.lit(".png")).alias("image_uri"),
                      F.lit(first_day).alias("created_date"), "dt"))
    ads_df.write.format("delta").mode("overwrite").partitionBy("dt").save(paths.bronze_ads)


def machine() -> str:
    """CPU model, cores and memory of this machine (Linux /proc; platform names elsewhere)."""
    model, mem_gb = platform.processor() or platform.machine(), None
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
        with open("/proc/meminfo") as f:
            mem_gb = next((int(line.split()[1]) / 2**20 for line in f if line.startswith("MemTotal:")), None)
    except OSError:
        pass
    memory = f", {mem_gb:.0f} GiB RAM" if mem_gb else ""
    return f"{platform.machine()} {model}, {os.cpu_count()} cores{memory}"


def reset_peak_rss() -> None:
    """Restart this process's peak-RSS counter (Linux: VmHWM); a no-op where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_gb() -> float | None:
    """This process's peak resident memory since the last reset, GiB (the JVM not included)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 2**20, 2)
    except OSError:
        pass
    return None


def run_case(spark, base_cfg, work: str, impressions_per_day: int, window_days: int, keep: bool = False) -> dict:
    """Time the incremental and the full features run for RUN_DATE at one size (module docstring);
    with keep=True its warehouse stays under <work>/n<impressions_per_day> (bench/scale.py trains on it)."""
    root = os.path.join(work, f"n{impressions_per_day}")
    shutil.rmtree(root, ignore_errors=True)
    cfg = base_cfg.replace({"storage.root": root, "features.window_days": window_days})
    first_day = RUN_DATE - dt.timedelta(days=window_days + 1)
    t0 = time.perf_counter()
    write_synthetic_bronze(spark, cfg, first_day, window_days + 2, impressions_per_day)
    log.info("n=%d: bronze for %d days written in %.1f s", impressions_per_day, window_days + 2,
             time.perf_counter() - t0)

    build_window.run(cfg.replace({"features.incremental": True}), spark, RUN_DATE - dt.timedelta(days=1))
    reset_peak_rss()
    t0 = time.perf_counter()
    incremental = build_window.run(cfg.replace({"features.incremental": True}), spark, RUN_DATE)
    incremental_s = time.perf_counter() - t0
    incremental_rss = peak_rss_gb()
    reset_peak_rss()
    t0 = time.perf_counter()
    full = build_window.run(cfg.replace({"features.incremental": False}), spark, RUN_DATE)
    full_s = time.perf_counter() - t0
    full_rss = peak_rss_gb()
    differ = [k for k in ("vocab_sizes", "bin_edges", "rows", "groups", "label_rate", "oov_rate", "oov_rate_window")
              if full[k] != incremental[k]]
    if differ:
        raise RuntimeError(f"full rebuild and incremental run differ at n={impressions_per_day} in {differ}")
    case = {"impressions_per_day": impressions_per_day, "window_days": window_days,
            "checkout": checkout_version(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
            "measured_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "full_rebuild_s": round(full_s, 2), "incremental_s": round(incremental_s, 2),
            "incremental_over_full": round(incremental_s / full_s, 3),
            "incremental_counted_days": len(incremental["counted_days"]),
            "incremental_row_days_written": len(incremental["row_days_written"]),
            "incremental_examples_s": incremental["examples_seconds"], "full_examples_s": full["examples_seconds"],
            "driver_python_peak_rss_gb": {"incremental": incremental_rss, "full_rebuild": full_rss},
            "train_rows": full["rows"]["train"],
            "mean_impressions_per_group": round(full["mean_impressions_per_group"]["train"], 3)}
    log.info("case %s", case)
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
    return case


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,1000000", help="impressions per day, comma separated")
    ap.add_argument("--window-days", type=int, default=32)
    ap.add_argument("--largest-window-days", type=int, default=0,
                    help="window days for the largest size (default: --window-days)")
    ap.add_argument("--work", default="/tmp/cscnn-bench-features", help="scratch folder for the warehouses")
    ap.add_argument("--out", default=RESULTS)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    args = ap.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(",") if s.strip())
    if not sizes or min(sizes) < 1:
        raise SystemExit(f"bad --sizes {args.sizes!r}; expected positive integers, e.g. 10000,100000")
    cfg = load_config(overrides=parse_overrides(args.set))
    spark = get_spark(cfg.spark)

    cases = []
    for n in sizes:
        window = args.largest_window_days if (n == max(sizes) and n >= 1_000_000 and args.largest_window_days) \
            else args.window_days
        cases.append(run_case(spark, cfg, args.work, n, window))

    result = {"machine": f"{machine()}, spark.master={cfg.spark.master}, "
                           f"shuffle_partitions={cfg.spark.shuffle_partitions}, driver_memory={cfg.spark.driver_memory}",
              "window_days": args.window_days,
              "note": "cases may use fewer window days (their window_days field); synthetic bronze, see bench/features.py",
              "cases": cases}
    if os.path.exists(args.out):
        with open(args.out) as f:
            old = json.load(f)
        if old.get("window_days") == args.window_days:
            ran = {c["impressions_per_day"] for c in cases}
            result["cases"] = sorted([c for c in old.get("cases", []) if c["impressions_per_day"] not in ran] + cases,
                                     key=lambda c: c["impressions_per_day"])
    largest = max(result["cases"], key=lambda c: c["impressions_per_day"])
    result["target"] = {"incremental_over_full_at_most": TARGET_RATIO,
                        "largest_impressions_per_day": largest["impressions_per_day"],
                        "largest_incremental_over_full": largest["incremental_over_full"],
                        "met": largest["incremental_over_full"] <= TARGET_RATIO}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
