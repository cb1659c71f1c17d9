"""The train_model stage: read the run date's snapshot, train, write the model and its manifest.

    python -m models.launch --nproc-per-node N -m spark_jobs.train_model --date 2026-02-02 --config FILE

Runs on CPU or on every visible GPU with the same code (models.launch sets RANK/WORLD_SIZE for
N > 1, around a store on 127.0.0.1; one process is `python -m spark_jobs.train_model ...`). Reads
the plain-parquet snapshot that export_training_snapshot wrote (spark_jobs/export_snapshot.py)
and streams the run date's examples table from its live parquet files, a chunk of whole ad groups
at a time (features.example_stream; train.chunk_rows), with the images kept as encoded bytes and
decoded per chunk, so that the stage's memory does not grow with the window. No Spark is needed
here: this stage lives with the other stage jobs but never imports pyspark.
Warm-starts from the live published model when `train.warm_start` (models.warm_start: embedding
and category-prior rows remapped by value through the live version's encoder and this run's, which
the snapshot carries; the manifest's `warm_start` counts the rows carried over, new and dropped).
Output: <artifacts>/runs/D/model/{model.pt, checkpoint.pt, manifest.json}. The manifest holds the
metrics of the validation split, a seeded sample of the window's training rows that alone picks the
best weights (features.examples.validation_mask, train.validation_fraction, at most
train.validation_max_rows rows); the run date's holdout is left to the validate stage, which
scores it once. torch (models.train) is imported in `run`, so that a bad argument is reported
without loading it (tests/test_cli_errors.py).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from core import storage
from core.cli import config_from_args, parse_date, run_cli, setup_logging, stage_parser, timing_record_path
from core.config import PipelineConfig
from core.files import sha256_file, write_json
from core.paths import Paths, is_local
from core.timing import phase, stage_timing
from features.encoder import ENCODER_FILE, FeatureEncoder, load_encoder_file
from features.example_stream import ExampleStream
from features.examples import read_example_files, validation_mask
from features.spec import FeatureSpec
from serving.lookup import IntegrityError
from serving.registry import live_model

log = logging.getLogger("train_model")


def decode_images(image_bytes: list[bytes], ad_ids: list[int]) -> dict[int, np.ndarray]:
    """PNG/JPEG bytes -> uint8 (H, W, 3) arrays keyed by ad id, all decoded now (the benchmarks'
    in-memory way; the stage keeps them encoded). The decoding is models.batching.EncodedImages'."""
    from models.batching import EncodedImages  # imports torch: only when images are decoded

    images = EncodedImages(np.asarray(ad_ids, np.int64), image_bytes)
    return {int(a): images[int(a)] for a in ad_ids}


def open_snapshot(cfg: PipelineConfig, run_date: dt.date) -> tuple[str, str, FeatureSpec, FeatureEncoder | None]:
    """(snapshot folder URI, examples table URI, feature spec, the run's encoder) of the run date's
    snapshot, on a local folder or object storage (core.storage); the encoder is None in a snapshot
    exported before snapshots carried it."""
    snap = Paths.of(cfg).snapshot(run_date)
    if not storage.exists(storage.join(snap, "_SUCCESS")):
        raise FileNotFoundError(f"no complete training snapshot for {run_date} at {snap}; "
                                f"run the build_window and export_training_snapshot stages for that date first")
    examples = storage.read_json(storage.join(snap, "_SUCCESS")).get("examples")
    if not examples:
        raise FileNotFoundError(f"the training snapshot at {snap} names no examples table; re-run the "
                                f"export_training_snapshot stage (spark_jobs/export_snapshot.py) for {run_date}")
    spec = FeatureSpec.from_json(storage.read_text(storage.join(snap, "feature_spec.json")))
    encoder_uri = storage.join(snap, ENCODER_FILE)
    encoder = load_encoder_file(io.BytesIO(storage.read_bytes(encoder_uri))) if storage.exists(encoder_uri) else None
    return snap, examples, spec, encoder


def read_snapshot_images(snap: str) -> pa.Table:
    """The snapshot's ad_id and image_bytes columns (its images/*.parquet, written by Spark)."""
    fs, path = storage.filesystem(storage.join(snap, "images"))
    return pq.read_table(path, columns=["ad_id", "image_bytes"], filesystem=fs)


def read_snapshot(cfg: PipelineConfig, run_date: dt.date, holdout: bool = True
                  ) -> tuple[FeatureSpec, Any, Any, dict[int, np.ndarray], FeatureEncoder | None]:
    """(feature spec, train examples, holdout examples, images by ad id, the run's encoder) of the run
    date's snapshot, all in memory (the benchmarks' way; the stage streams: `run`). With
    holdout=False the holdout split is not read and comes back as None."""
    snap, examples, spec, encoder = open_snapshot(cfg, run_date)
    train = read_example_files(examples, "train")
    holdout_tbl = read_example_files(examples, "holdout") if holdout else None
    img = read_snapshot_images(snap)
    images = decode_images(img.column("image_bytes").to_pylist(), img.column("ad_id").to_pylist())
    return spec, train, holdout_tbl, images, encoder


def validation_fraction(cfg: PipelineConfig, window_rows: int) -> float:
    """`train.validation_fraction`, lowered so that about `train.validation_max_rows` of the
    window's `window_rows` rows are validation rows at most."""
    tc = cfg.train
    if tc.validation_max_rows and window_rows * tc.validation_fraction > tc.validation_max_rows:
        fraction = tc.validation_max_rows / window_rows
        log.info("validation fraction %.4f instead of %.4f: at most %d of the window's %d rows",
                 fraction, tc.validation_fraction, tc.validation_max_rows, window_rows)
        return fraction
    return tc.validation_fraction


def validation_rows(cfg: PipelineConfig, examples: str) -> tuple[ExampleStream, pa.Table | None]:
    """(the window's rows to fit, as a stream; its validation rows, in memory, or None).

    The validation rows are `train.validation_fraction` of the window by the hash of
    features.examples.validation_mask, the fraction lowered so that about
    `train.validation_max_rows` at most are kept; collected by one streamed pass."""
    tc = cfg.train
    window = ExampleStream(examples, "train", chunk_rows=tc.chunk_rows)
    fraction = validation_fraction(cfg, window.num_rows)
    if fraction <= 0:
        return window, None
    parts = list(window.filtered(lambda t: validation_mask(t, fraction, tc.seed)))
    if not parts:
        return window, None
    return window.filtered(lambda t: ~validation_mask(t, fraction, tc.seed)), pa.concat_tables(parts)


def live_model_path(cfg: PipelineConfig) -> tuple[str, str] | None:
    """(model.pt, its published sha256) of the version live now (the registry's `current` pointer,
    its chain of checksums verified: serving.registry.live_model), if any."""
    live = live_model(cfg)
    return None if live is None else (str(live.model), live.model_sha256)


def load_checked_encoder(path: str | os.PathLike, sha256: str | None) -> FeatureEncoder:
    """The encoder at ``path``; with ``sha256``, the very bytes checked are the ones loaded."""
    data = Path(path).read_bytes()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise IntegrityError(f"{path}: sha256 {hashlib.sha256(data).hexdigest()[:16]}... differs from the "
                             f"{sha256[:16]}... its published version records; refusing to warm-start from it")
    return load_encoder_file(io.BytesIO(data))


def run(cfg: PipelineConfig, run_date: dt.date) -> dict[str, Any]:
    """Train the run date's model from its snapshot; rank 0 writes the manifest. Returns the metrics."""
    with phase("imports"):
        from models.batching import EncodedImages
        from models.train import train

    t0 = time.time()
    snap, examples, spec, encoder = open_snapshot(cfg, run_date)
    train_rows, valid_tbl = validation_rows(cfg, examples)
    img = read_snapshot_images(snap)
    images = EncodedImages(img.column("ad_id"), img.column("image_bytes"), cfg.train.image_cache_mb << 20)
    del img
    live = live_model(cfg) if cfg.train.warm_start else None
    init_from = None if live is None else str(live.model)
    init_encoder = None if live is None or live.encoder is None else load_checked_encoder(live.encoder,
                                                                                           live.encoder_sha256)
    n_valid = 0 if valid_tbl is None else valid_tbl.num_rows
    log.info("training %s on the window's %d examples less %d validation rows, streamed in chunks of %d rows "
             "(%d images), warm start from %s", cfg.model.variant, train_rows.num_rows, n_valid,
             cfg.train.chunk_rows, len(images), init_from or "scratch")
    rank0 = int(os.environ.get("RANK", "0")) == 0
    model_dir = Paths.of(cfg).run_model_dir(run_date)
    with storage.writing_folder(model_dir, fresh=False, upload_after=rank0) as out_dir:
        def copy_checkpoint(path: Path) -> None:  # a retry on another machine resumes from it
            storage.write_bytes(storage.join(model_dir, path.name), path.read_bytes())

        metrics = train(cfg, spec, train_rows, valid_tbl, images, out_dir, resume=True, init_from=init_from,
                        init_sha256=None if live is None else live.model_sha256, init_encoder=init_encoder,
                        encoder=encoder, on_checkpoint=None if is_local(model_dir) else copy_checkpoint)
        warm = metrics.pop("warm_start", None)
        metrics["validation_impressions"] = n_valid
        if rank0:
            manifest = {"run_date": run_date.isoformat(), "variant": cfg.model.variant,
                        "feature_spec": json.loads(spec.to_json()), "model_config": cfg.to_dict()["model"],
                        "files": {"model.pt": sha256_file(out_dir / "model.pt")}, "warm_start_from": init_from,
                        "warm_start": warm, "config_hash": cfg.config_hash(), "metrics": metrics,
                        "seconds": round(time.time() - t0, 1)}
            write_json(out_dir / "manifest.json", manifest, sort_keys=False, default=float)
    if rank0:
        print(json.dumps({"run_date": run_date.isoformat(), "metrics": metrics}, default=float))
    return metrics


def main(argv: list[str] | None = None) -> int:
    # Not core.cli.run_stage: only rank 0 prints the summary (run() does), and no stage here
    # reports bad data.
    setup_logging()
    args = stage_parser("Train the CTR model of one run date from its snapshot.").parse_args(argv)
    cfg, run_date = config_from_args(args), parse_date(args.date)
    record = timing_record_path(cfg, run_date, "train_model") if int(os.environ.get("RANK", "0")) == 0 else None
    with stage_timing(record, "train_model", run_date.isoformat()):
        run(cfg, run_date)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
