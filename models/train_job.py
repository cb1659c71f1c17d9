"""The train stage: read the run date's snapshot, train, write the model and its manifest.

    python -m models.launch --nproc-per-node N -m models.train_job --date 2026-02-02 --config FILE

Runs on CPU or on every visible GPU with the same code (models.launch sets RANK/WORLD_SIZE for
N > 1, around a store on 127.0.0.1; one process is `python -m models.train_job ...`). Reads the plain-parquet snapshot that
the features stage exported (spark_jobs/export_snapshot.py) and the parquet files of the run
date's examples table, so no Spark is needed here.
Warm-starts from the live published model when `train.warm_start` and shapes match.
Output: <artifacts>/runs/D/model/{model.pt, checkpoint.pt, metrics.json, manifest.json}.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import os
import sys
import time
from typing import Any

import numpy as np

from core.cli import config_from_args, parse_date, run_cli, setup_logging, stage_parser
from core.config import PipelineConfig
from core.feature_spec import FeatureSpec
from core.files import sha256_file
from core.paths import Paths, local_path

log = logging.getLogger("train_job")


def decode_images(image_bytes: list[bytes], ad_ids: list[int]) -> dict[int, np.ndarray]:
    """PNG/JPEG bytes -> uint8 (H, W, 3) arrays keyed by ad id (the one preprocessing entry)."""
    from PIL import Image

    out = {}
    for ad_id, data in zip(ad_ids, image_bytes):
        with Image.open(io.BytesIO(data)) as im:
            out[int(ad_id)] = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return out


def read_snapshot(cfg: PipelineConfig, run_date: dt.date) -> tuple[FeatureSpec, Any, Any, dict[int, np.ndarray]]:
    import pyarrow.parquet as pq

    from spark_jobs.examples import read_example_files

    snap = local_path(Paths.of(cfg).snapshot(run_date))
    if not os.path.exists(os.path.join(snap, "_SUCCESS")):
        raise FileNotFoundError(f"no complete training snapshot for {run_date} at {snap}; "
                                f"run the build_window stage (spark_jobs/features.py) for that date first")
    with open(os.path.join(snap, "_SUCCESS")) as f:
        examples = json.load(f).get("examples")
    if not examples:
        raise FileNotFoundError(f"the training snapshot at {snap} names no examples table; re-run the "
                                f"build_window stage (spark_jobs/features.py) for {run_date}")
    with open(os.path.join(snap, "feature_spec.json")) as f:
        spec = FeatureSpec.from_json(f.read())
    train = read_example_files(examples, "train")
    holdout = read_example_files(examples, "holdout")
    img = pq.read_table(os.path.join(snap, "images"))
    images = decode_images(img.column("image_bytes").to_pylist(), img.column("ad_id").to_pylist())
    return spec, train, holdout, images


def live_model_path(cfg: PipelineConfig) -> tuple[str, str] | None:
    """(model.pt, its published sha256) of the version live now (the registry's `current` pointer,
    its chain of checksums verified: serving.registry.live_model), if any."""
    from serving.registry import live_model

    live = live_model(cfg)
    return None if live is None else (str(live[0]), live[1])


def run(cfg: PipelineConfig, run_date: dt.date) -> dict[str, Any]:
    from models.train import train

    t0 = time.time()
    spec, train_tbl, holdout_tbl, images = read_snapshot(cfg, run_date)
    out_dir = local_path(Paths.of(cfg).run_model_dir(run_date))
    os.makedirs(out_dir, exist_ok=True)
    init_from, init_sha256 = (live_model_path(cfg) if cfg.train.warm_start else None) or (None, None)
    log.info("training %s on %d examples (%d holdout, %d images), warm start from %s", cfg.model.variant,
             train_tbl.num_rows, holdout_tbl.num_rows, len(images), init_from or "scratch")
    metrics = train(cfg, spec, train_tbl, holdout_tbl, images, out_dir, resume=True, init_from=init_from,
                    init_sha256=init_sha256)
    if int(os.environ.get("RANK", "0")) == 0:
        model_path = os.path.join(out_dir, "model.pt")
        manifest = {"run_date": run_date.isoformat(), "variant": cfg.model.variant,
                    "feature_spec": json.loads(spec.to_json()), "model_config": cfg.to_dict()["model"],
                    "files": {"model.pt": sha256_file(model_path)}, "warm_start_from": init_from,
                    "config_hash": cfg.config_hash(), "metrics": metrics, "seconds": round(time.time() - t0, 1)}
        with open(os.path.join(out_dir, "manifest.json.tmp"), "w") as f:
            json.dump(manifest, f, indent=2, default=float)
        os.replace(os.path.join(out_dir, "manifest.json.tmp"), os.path.join(out_dir, "manifest.json"))
        print(json.dumps({"run_date": run_date.isoformat(), "metrics": metrics}, default=float))
    return metrics


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = stage_parser("Train the CTR model of one run date from its snapshot.").parse_args(argv)
    run(config_from_args(args), parse_date(args.date))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
