"""Benchmark: simulate one landing day and ingest it into bronze, at several sizes.

    python -m bench.simulate_ingest [--sizes 100000,1000000] [--out bench/results/simulate_ingest.json]

Each case uses a fresh world root in a temporary folder, so the first day also draws and
ingests every active ad's image (the worst case of a daily run). Generation and ingest are
timed separately; peak RSS covers this process and its children (the Spark JVM).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import tempfile
import time

from bench.common import PeakRss, machine, write_result
from core.config import load_config


def run_case(n: int, spark_master: str) -> dict:
    from core.spark import get_spark
    from simworld.generate import generate_day
    from spark_jobs import ingest

    root = tempfile.mkdtemp(prefix=f"bench-sim-{n}-")
    try:
        cfg = load_config(overrides={"storage.root": root, "world.impressions_per_day": n,
                                     "spark.master": spark_master})
        day = dt.date.fromisoformat(cfg.world.epoch) + dt.timedelta(days=10)
        with PeakRss() as gen_rss:
            t0 = time.perf_counter()
            gen = generate_day(cfg, day)
            gen_s = time.perf_counter() - t0
        spark = get_spark(cfg.spark)
        with PeakRss() as ing_rss:
            t0 = time.perf_counter()
            record = ingest.run(cfg, spark, day)
            ing_s = time.perf_counter() - t0
        case = {"impressions_per_day": n, "rows_generated": gen["impressions"], "images_drawn": gen["new_images"],
                "generate_s": round(gen_s, 2), "generate_rows_per_s": round(gen["impressions"] / gen_s),
                "ingest_s": round(ing_s, 2), "ingest_rows_per_s": round(record["landing_impressions"] / ing_s),
                "peak_rss_mb": max(gen_rss.peak_mb, ing_rss.peak_mb),
                "generate_peak_rss_mb": gen_rss.peak_mb, "ingest_peak_rss_mb_incl_jvm": ing_rss.peak_mb}
        print(case, flush=True)
        return case
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--spark-master", default="local[*]")
    ap.add_argument("--out", default="simulate_ingest.json")
    args = ap.parse_args()
    cases = [run_case(int(s), args.spark_master) for s in args.sizes.split(",")]
    write_result(os.path.basename(args.out), {
        "machine": machine(), "spark_master": args.spark_master,
        "note": "one day per case on a fresh world (first ingest also decodes every active ad's image); "
                "generate includes PNG drawing of every ad image not yet on disk",
        "cases": cases})


if __name__ == "__main__":
    main()
