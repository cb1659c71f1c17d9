"""Benchmark of the pipeline's memory and time as the window grows: features and training.

    python -m bench.scale                                   # 10k, 30k and 100k impressions per day
    python -m bench.scale --sizes 100000,1000000,3000000    # the sizes of the scale-out goal
    python -m bench.scale --sizes 10000 --cscnn-steps 20    # a quick look

For each size (impressions per day, over a 32-day window) it

  1. builds the window with bench/features.py's synthetic bronze tables: the incremental and the
     full features run for the run date (wall times), the features process's peak Python RSS
     (the Spark client: the "driver" of the stages) and the Spark JVM's peak RSS, sampled with its
     Python workers (with spark.master local[*] that JVM is the driver and the executors);
  2. writes a training snapshot beside the examples table (the feature spec, one synthetic PNG per
     ad, the table's location), as export_training_snapshot would;
  3. trains in a fresh process per run, and records the process's peak RSS (the kernel's
     ru_maxrss of the child) and the training loop's impressions per second:
       * `streamed`: the train_model stage itself (features.example_stream: chunks of whole ad
         groups read from the table's live files, images kept encoded);
       * `in_memory`: the same training with the whole window and all decoded images loaded first
         (spark_jobs.train_model.read_snapshot), the loader the stage used before streaming;
       * `before` (with --before COMMIT): the in-memory training of that commit's code, in a git
         worktree: the loader as it was, which encoded the whole window once before the loop;
     each for `dcn` over one whole epoch (the memory of reading every row), and for `cscnn` over
     --cscnn-steps steps (throughput with the visual tower; a whole epoch would take hours on CPU).
     impressions/s is the training loop's from its first batch on; the wait for that first batch
     (a streamed run reads and encodes its first chunk then) is `first_batch_s`, and the process's
     whole time, loading included, `wall_s`.

Results go to bench/results/scale.json, with the machine; sizes not run this time are kept from an
earlier file. Nothing here is asserted: the goals (trainer and driver peak RSS flat and bounded,
streamed throughput within 10% of in-memory) are computed and stated beside the figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from bench import features as bench_features
from bench.common import PeakRss, checkout_version, machine
from core.cli import config_from_args, parse_date, setup_logging, stage_parser
from core.config import load_config, parse_overrides
from core.files import write_json
from core.paths import Paths, local_path
from features.tables import examples_uri, load_feature_spec

log = logging.getLogger("bench.scale")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results", "scale.json")
RUN_DATE = bench_features.RUN_DATE
GOALS = {"driver_peak_rss_gb_at_most": 2.0, "trainer_peak_rss_gb_at_most": 4.0,
         "streamed_over_in_memory_impressions_per_s_at_least": 0.9}


def write_snapshot(spark, cfg, run_date: dt.date) -> int:
    """The run date's training snapshot (feature spec, an image per ad, the examples' location), as
    export_training_snapshot writes it, with synthetic images; returns the number of ads."""
    uri = examples_uri(cfg, run_date)
    ads = sorted(r.ad_id for r in spark.read.format("delta").load(uri).select("ad_id").distinct().collect())
    snap = local_path(Paths.of(cfg).snapshot(run_date))
    shutil.rmtree(snap, ignore_errors=True)
    os.makedirs(snap)
    size = cfg.world.image_size
    rng = np.random.default_rng(0)
    pngs = []
    for _ in ads:
        pixels = np.clip(rng.normal(rng.uniform(40, 215, 3), 25, (size, size, 3)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    pq.write_table(pa.table({"ad_id": pa.array(ads, pa.int64()), "image_bytes": pa.array(pngs, pa.binary())}),
                   os.path.join(snap, "images"))
    with open(os.path.join(snap, "feature_spec.json"), "w") as f:
        f.write(load_feature_spec(cfg, spark, run_date).to_json())
    write_json(os.path.join(snap, "_SUCCESS"), {"examples": uri})
    return len(ads)


def train_in_memory(cfg, run_date: dt.date) -> dict:
    """The training of the train_model stage, its window and images loaded whole first."""
    from features.examples import validation_split
    from models.train import train
    from spark_jobs.train_model import read_snapshot, validation_fraction

    spec, window, _, images, encoder = read_snapshot(cfg, run_date, holdout=False)
    fit, valid = validation_split(window, validation_fraction(cfg, window.num_rows), cfg.train.seed)
    del window
    out_dir = local_path(Paths.of(cfg).run_model_dir(run_date))
    return train(cfg, spec, fit, valid, images, out_dir, resume=False, encoder=encoder)


# The in-memory training of an earlier checkout (--before): its own read_snapshot, validation_split
# and train, from the same snapshot; the config without the sections and keys that checkout does
# not know (its PipelineConfig's defaults name them).
_BEFORE = """
import datetime as dt, json, sys
from core.config import PipelineConfig, build
from features.examples import validation_split
from models.train import train
from spark_jobs.train_model import read_snapshot
known, data = PipelineConfig().to_dict(), json.loads(sys.argv[2])
data = {s: {k: v for k, v in sec.items() if k in known[s]} if isinstance(known[s], dict) else sec
        for s, sec in data.items() if s in known}
date, cfg = dt.date.fromisoformat(sys.argv[1]), build(PipelineConfig, data, "")
spec, window, _, images, encoder = read_snapshot(cfg, date, holdout=False)
fit, valid = validation_split(window, cfg.train.validation_fraction, cfg.train.seed)
del window
metrics = train(cfg, spec, fit, valid, images, sys.argv[3], resume=False, encoder=encoder)
print(json.dumps({"metrics": metrics}, default=float))
"""


def run_trainer(mode: str, cfg, run_date: dt.date, before: str | None = None) -> dict:
    """Train in a fresh process; (its metrics, wall seconds, peak RSS in GiB by the kernel).

    mode: streamed (the stage), in_memory (train_in_memory), before (_BEFORE in `before`)."""
    out_dir = local_path(Paths.of(cfg).run_model_dir(run_date))
    shutil.rmtree(out_dir, ignore_errors=True)
    config = json.dumps(cfg.to_dict())
    cwd, env = ROOT, dict(os.environ)
    if mode == "streamed":
        cmd = [sys.executable, "-m", "spark_jobs.train_model", "--date", run_date.isoformat(), "--config-json", config]
    elif mode == "in_memory":
        cmd = [sys.executable, "-m", "bench.scale", "--in-memory-trainer", "--date", run_date.isoformat(),
               "--config-json", config]
    else:
        os.makedirs(out_dir, exist_ok=True)
        cmd = [sys.executable, "-c", _BEFORE, run_date.isoformat(), config, out_dir]
        cwd, env["PYTHONPATH"] = before, before
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} trainer failed with status {proc.returncode}: {' '.join(cmd[:4])} ...")
    metrics = json.loads(out.strip().splitlines()[-1])["metrics"]
    return {"impressions_per_s": round(metrics["impressions_per_s"], 1), "first_batch_s": metrics.get("first_batch_s"),
            "steps": metrics["steps"],
            "train_impressions": metrics["train_impressions"], "wall_s": round(wall, 1),
            "peak_rss_gb": round(usage.ru_maxrss / 2**20, 3)}  # ru_maxrss is in KiB on Linux


def run_size(spark, server_pid: int | None, base_cfg, work: str, n: int, window_days: int, cscnn_steps: int,
             before: str | None) -> dict:
    jvm = PeakRss(server_pid) if server_pid else None
    if jvm:
        jvm.__enter__()
    try:
        case = bench_features.run_case(spark, base_cfg, work, n, window_days, keep=True)
    finally:
        if jvm:
            jvm.__exit__(None, None, None)
    cfg = base_cfg.replace({"storage.root": os.path.join(work, f"n{n}"), "features.window_days": window_days})
    ads = write_snapshot(spark, cfg, RUN_DATE)
    training = {}
    plain = {"train.device": "cpu", "train.warm_start": False, "train.epochs": 1}
    runs = {"dcn_epoch": {**plain, "model.variant": "dcn"},
            "cscnn_steps": {**plain, "model.variant": "cscnn", "train.max_steps": cscnn_steps,
                            "train.validation_fraction": 0.0}}
    modes = ("streamed", "in_memory", *(["before"] if before else []))
    for name, overrides in runs.items():
        training[name] = {mode: run_trainer(mode, cfg.replace(overrides), RUN_DATE, before) for mode in modes}
        for mode in modes[1:]:
            training[name][f"streamed_over_{mode}_impressions_per_s"] = round(
                training[name]["streamed"]["impressions_per_s"] / training[name][mode]["impressions_per_s"], 3)
        log.info("n=%d %s: %s", n, name, training[name])
    shutil.rmtree(os.path.join(work, f"n{n}"), ignore_errors=True)
    return {"impressions_per_day": n, "window_days": window_days, "checkout": case["checkout"],
            "measured_at": case["measured_at"], "train_rows": case["train_rows"], "ads": ads,
            "features": {k: case[k] for k in ("full_rebuild_s", "incremental_s", "incremental_over_full",
                                              "incremental_examples_s", "full_examples_s")},
            "driver_python_peak_rss_gb": case["driver_python_peak_rss_gb"],
            "spark_jvm_peak_rss_gb": round(jvm.peak_bytes / 2**30, 2) if jvm else None,
            "training": training}


def summary(cases: list[dict]) -> dict:
    """The goals, judged on the cases measured."""
    driver = max(max(v for v in c["driver_python_peak_rss_gb"].values() if v is not None) for c in cases)
    trainer = max(r["streamed"]["peak_rss_gb"] for c in cases for r in c["training"].values())
    # today's in-memory loader: the --before checkout's when measured, else this checkout's in_memory mode
    ratios = [c["training"]["cscnn_steps"].get("streamed_over_before_impressions_per_s",
                                               c["training"]["cscnn_steps"]["streamed_over_in_memory_impressions_per_s"])
              for c in cases]
    ratio = min(ratios)
    largest = max(cases, key=lambda c: c["impressions_per_day"])
    return {**GOALS, "driver_peak_rss_gb": driver, "streamed_trainer_peak_rss_gb": trainer,
            "worst_cscnn_streamed_over_in_memory_loader": ratio,
            "largest_impressions_per_day": largest["impressions_per_day"],
            "largest_incremental_over_full": largest["features"]["incremental_over_full"],
            "met": {"driver": driver <= GOALS["driver_peak_rss_gb_at_most"],
                    "trainer": trainer <= GOALS["trainer_peak_rss_gb_at_most"],
                    "throughput": ratio >= GOALS["streamed_over_in_memory_impressions_per_s_at_least"]}}


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    if argv is None:
        argv = sys.argv[1:]
    if "--in-memory-trainer" in argv:  # the child process of run_trainer("in_memory", ...)
        child = stage_parser("Train as the train_model stage does, with the window loaded whole.")
        child.add_argument("--in-memory-trainer", action="store_true")
        args = child.parse_args(argv)
        run_date = parse_date(args.date)
        metrics = train_in_memory(config_from_args(args), run_date)
        print(json.dumps({"run_date": run_date.isoformat(), "metrics": metrics}, default=float))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,30000,100000", help="impressions per day, comma separated")
    ap.add_argument("--window-days", type=int, default=32)
    ap.add_argument("--cscnn-steps", type=int, default=150, help="steps of the cscnn throughput runs")
    ap.add_argument("--work", default="/tmp/cscnn-bench-scale", help="scratch folder for the warehouses")
    ap.add_argument("--before", metavar="COMMIT",
                    help="also train in memory with the code of this commit (a git worktree under --work)")
    ap.add_argument("--out", default=RESULTS)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    args = ap.parse_args(argv)
    try:
        sizes = sorted(int(s) for s in args.sizes.split(",") if s.strip())
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise SystemExit(f"bad --sizes {args.sizes!r}; expected positive integers, e.g. 10000,100000")
    if args.cscnn_steps < 1:
        raise SystemExit(f"bad --cscnn-steps {args.cscnn_steps}; expected an integer >= 1")
    cfg = load_config(overrides=parse_overrides(args.set))
    from core.spark import get_spark
    from core.spark_server import ensure_server
    spark = get_spark(cfg.spark)
    server_pid = ensure_server(cfg.spark).pid if cfg.spark.remote else None
    before = None
    if args.before:
        before = os.path.join(args.work, "before")
        shutil.rmtree(before, ignore_errors=True)
        subprocess.run(["git", "-C", ROOT, "worktree", "prune"], check=True)
        subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", before, args.before], check=True,
                       capture_output=True)
        before_version = checkout_version(before)
    try:
        cases = [run_size(spark, server_pid, cfg, args.work, n, args.window_days, args.cscnn_steps, before)
                 for n in sizes]
    finally:
        if before:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", before], capture_output=True)
    if before:
        for case in cases:
            case["before_checkout"] = before_version
    result = {"machine": f"{machine()}, spark.master={cfg.spark.master}, driver_memory={cfg.spark.driver_memory}, "
                         f"torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}",
              "window_days": args.window_days, "cscnn_steps": args.cscnn_steps, "cases": cases}
    if os.path.exists(args.out):
        with open(args.out) as f:
            old = json.load(f)
        ran = {c["impressions_per_day"] for c in cases}
        result["cases"] = sorted([c for c in old.get("cases", []) if c["impressions_per_day"] not in ran] + cases,
                                 key=lambda c: c["impressions_per_day"])
    result["goals"] = summary(result["cases"])
    write_json(args.out, result, sort_keys=False)
    print(json.dumps(result["goals"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
