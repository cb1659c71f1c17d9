"""Warm start against cold start over a sequence of daily runs on the simulated world.

    python -m bench.warm_start [--days 8] [--window-days 3] [--impressions-per-day 40000] [--seed 1]

One world (the ablation's knobs, bench/ablation.py, with its quick sizes of ads and users): the
window's history is generated and ingested, then for each of --days run dates D the simulator
writes day D, it is ingested, the features stage builds run date D (window [D-W, D-1], holdout
D) and the snapshot is exported, exactly as the daily DAG's stages do. Two models are trained on
every snapshot with the same settings and budget (one epoch, same seed and batch order):

* cold: from scratch;
* warm: from the warm arm's model of the day before, through models.warm_start with the two run
  dates' encoders (rows of every embedding table and of the CSCNN priors remapped by value).

Day 1 has nothing to warm-start from, so both arms start cold there. Per day the result records
holdout AUC and cold-ad AUC of both arms, and the rows of each id-keyed table the warm start
carried over, started new and dropped. Results go to bench/results/warm_start.json after every day.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import shutil
import sys
import time
from typing import Any

import numpy as np
import torch

from bench.ablation import QUICK_KNOBS, TRAIN_KNOBS, WORLD_KNOBS
from bench.common import machine, write_result
from core.cli import setup_logging
from core.config import load_config, parse_overrides
from core.spark import get_spark
from features.examples import validation_split
from models.train import score_model, train
from simworld.generate import generate_day
from spark_jobs import build_window, ingest
from spark_jobs.export_snapshot import export_training_snapshot
from spark_jobs.train_model import read_snapshot

log = logging.getLogger("bench.warm_start")

ARMS = ("cold", "warm")


def _tables(summary: dict[str, Any] | None) -> dict[str, dict[str, int]]:
    """The warm start's row counts per field (the priors named once: they share the category map)."""
    out: dict[str, dict[str, int]] = {}
    for name, counts in ((summary or {}).get("tables") or {}).items():
        label = name.split(".")[2] if name.startswith("embedding.") else "category priors"
        out.setdefault(label, counts)
    return out


def _r(x: float) -> float | None:
    return None if x is None or np.isnan(x) else round(float(x), 5)


def summarize(days: list[dict[str, Any]], settings: dict[str, Any]) -> dict[str, Any]:
    later = days[1:]
    gains = [d["warm"]["auc"] - d["cold"]["auc"] for d in later]
    gains_cold = [d["warm"]["auc_cold"] - d["cold"]["auc_cold"] for d in later
                  if d["warm"]["auc_cold"] is not None and d["cold"]["auc_cold"] is not None]
    return {
        "machine": machine(), "settings": settings, "days_finished": len(days),
        "complete": len(days) == settings["days"],
        "days": days,
        "warm_minus_cold_auc": [_r(g) for g in gains],
        "warm_minus_cold_auc_cold": [_r(g) for g in gains_cold],
        "warm_ge_cold_every_later_day": bool(later) and all(g >= 0 for g in gains),
        "mean_gain_auc": _r(float(np.mean(gains))) if gains else None,
        "mean_gain_auc_cold": _r(float(np.mean(gains_cold))) if gains_cold else None,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, default=8, help="run dates in the sequence (>= 2; default 8)")
    ap.add_argument("--window-days", type=int, default=3, help="training window W (default 3)")
    ap.add_argument("--impressions-per-day", type=int, default=40_000, help="impressions of each day (default 40000)")
    ap.add_argument("--seed", type=int, default=1, help="world and training seed (default 1)")
    ap.add_argument("--work", default="", help="scratch folder of the world (default var/warm_start)")
    ap.add_argument("--out", default="warm_start.json", help="result file under bench/results/")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = parse_args(argv)
    if args.days < 2 or args.window_days < 1 or args.impressions_per_day < 1:
        raise SystemExit(f"bad sizes: --days {args.days} (>= 2), --window-days {args.window_days} (>= 1), "
                         f"--impressions-per-day {args.impressions_per_day} (>= 1)")
    work = os.path.abspath(args.work or os.path.join("var", "warm_start"))
    shutil.rmtree(work, ignore_errors=True)
    torch.set_num_threads(2)
    # TRAIN_KNOBS switch the warm start off (the ablation trains each variant from scratch); here
    # the warm arm needs it on, and the cold arm passes no model to start from.
    overrides = {**WORLD_KNOBS, **QUICK_KNOBS, **TRAIN_KNOBS, "train.warm_start": True, "model.variant": "cscnn",
                 "world.impressions_per_day": args.impressions_per_day, "features.window_days": args.window_days,
                 "storage.root": work, "world.seed": args.seed, "features.seed": args.seed,
                 "train.seed": args.seed, **parse_overrides(args.set)}
    cfg = load_config(overrides=overrides)
    epoch = dt.date.fromisoformat(cfg.world.epoch)
    first = epoch + dt.timedelta(days=args.window_days)
    settings = {"days": args.days, "window_days": args.window_days, "impressions_per_day": args.impressions_per_day,
                "seed": args.seed, "first_run_date": first.isoformat(),
                "world": {k.split(".", 1)[1]: v for k, v in overrides.items() if k.startswith("world.")},
                "model": cfg.to_dict()["model"], "train": cfg.to_dict()["train"],
                "budget": "one epoch over the window's examples, same seed and batch order for both arms"}
    spark = get_spark(cfg.spark)
    for i in range(args.window_days):
        day = epoch + dt.timedelta(days=i)
        generate_day(cfg, day)
        ingest.run(cfg, spark, day)
    days: list[dict[str, Any]] = []
    previous: dict[str, Any] | None = None  # the day before: its encoder and the warm arm's model
    for k in range(args.days):
        run_date = first + dt.timedelta(days=k)
        t0 = time.perf_counter()
        generate_day(cfg, run_date)
        ingest.run(cfg, spark, run_date)
        build_window.run(cfg, spark, run_date)
        export_training_snapshot(cfg, spark, run_date)
        spec, window_tbl, holdout_tbl, images, encoder = read_snapshot(cfg, run_date)
        train_tbl, valid_tbl = validation_split(window_tbl, cfg.train.validation_fraction, cfg.train.seed)
        data_s = time.perf_counter() - t0
        record: dict[str, Any] = {"run_date": run_date.isoformat(), "train_impressions": train_tbl.num_rows,
                                  "holdout_impressions": holdout_tbl.num_rows,
                                  "holdout_cold_impressions": int(np.asarray(holdout_tbl.column("is_cold")).sum()),
                                  "data_seconds": round(data_s, 1)}
        for arm in ARMS:
            out_dir = os.path.join(work, "models", arm, run_date.isoformat())
            init = {} if arm == "cold" or previous is None else {
                "init_from": previous["model"], "init_encoder": previous["encoder"], "encoder": encoder}
            t1 = time.perf_counter()
            trained = train(cfg, spec, train_tbl, valid_tbl, images, out_dir, resume=False, **init)
            metrics = {**trained, **score_model(trained["model_path"], holdout_tbl, images)}  # day D, scored once
            record[arm] = {"auc": _r(metrics["auc"]), "auc_cold": _r(metrics.get("auc_cold", float("nan"))),
                           "logloss": _r(metrics["logloss"]), "steps": metrics["steps"],
                           "seconds": round(time.perf_counter() - t1, 1)}
            if arm == "warm":
                if previous is not None and not metrics.get("warm_start"):
                    raise RuntimeError(f"{run_date}: the warm arm did not warm-start from {previous['model']}")
                record["warm_start_rows"] = _tables(metrics.get("warm_start"))
                previous = {"model": os.path.join(out_dir, "model.pt"), "encoder": encoder}
        log.info("%s: cold auc %.4f (cold ads %s), warm auc %.4f (cold ads %s)", run_date, record["cold"]["auc"],
                 record["cold"]["auc_cold"], record["warm"]["auc"], record["warm"]["auc_cold"])
        days.append(record)
        write_result(args.out, summarize(days, settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
