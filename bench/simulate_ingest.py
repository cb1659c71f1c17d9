"""Benchmark: simulate one landing day and ingest it into bronze, at several sizes.

    python -m bench.simulate_ingest [--sizes 100000,1000000] [--out bench/results/simulate_ingest.json]

Each case uses a fresh world root in a temporary folder: its first day draws and ingests every
active ad's image (a cold start, reported as `first_day`), the next day only the new ads'
images (a normal daily run, reported as `daily` and as the case's headline rates). Generation
and ingest are timed separately; peak RSS covers this process and its children (the Spark JVM).
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
from core.spark import get_spark
from simworld.generate import generate_day
from spark_jobs import ingest


def run_case(n: int, spark_master: str) -> dict:
    """Day D on a fresh world (draws and ingests every active ad's image), then the steady-state
    day D+1 (only that day's new ads have new images): both timed, D+1 is the headline."""
    root = tempfile.mkdtemp(prefix=f"bench-sim-{n}-")
    try:
        cfg = load_config(overrides={"storage.root": root, "world.impressions_per_day": n,
                                     "spark.master": spark_master})
        first = dt.date.fromisoformat(cfg.world.epoch) + dt.timedelta(days=10)
        spark = get_spark(cfg.spark)
        timings = {}
        peak = 0.0
        for label, day in (("first_day", first), ("daily", first + dt.timedelta(days=1))):
            with PeakRss() as gen_rss:
                t0 = time.perf_counter()
                gen = generate_day(cfg, day)
                gen_s = time.perf_counter() - t0
            with PeakRss() as ing_rss:
                t0 = time.perf_counter()
                record = ingest.run(cfg, spark, day)
                ing_s = time.perf_counter() - t0
            peak = max(peak, gen_rss.peak_mb, ing_rss.peak_mb)
            timings[label] = {"rows": gen["impressions"], "images_drawn": gen["new_images"],
                              "images_ingested": record["new_images"],
                              "generate_s": round(gen_s, 2), "generate_rows_per_s": round(gen["impressions"] / gen_s),
                              "ingest_s": round(ing_s, 2),
                              "ingest_rows_per_s": round(record["landing_impressions"] / ing_s),
                              "generate_peak_rss_mb": gen_rss.peak_mb,
                              "ingest_peak_rss_mb_incl_jvm": ing_rss.peak_mb}
        daily = timings["daily"]
        case = {"impressions_per_day": n, "generate_rows_per_s": daily["generate_rows_per_s"],
                "ingest_rows_per_s": daily["ingest_rows_per_s"], "peak_rss_mb": peak, **timings}
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
        "note": "headline rates are the steady-state daily run (day D+1: only new ads' images drawn and "
                "decoded); first_day is the cold start of a fresh world (every active ad's image); "
                "ingest includes the Delta commits of bronze, quarantine, images and the run record",
        "cases": cases})


if __name__ == "__main__":
    main()
