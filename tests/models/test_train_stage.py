"""The train stage picks its weights on a validation split of the window, never on the run date,
and a stage killed by SIGKILL resumes its streamed epoch from its checkpoint.

A snapshot is written by hand (the layout spark_jobs/export_snapshot.py writes) with a train split
and no holdout split at all, so a stage that read day D could not run.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from core.config import load_config
from core.paths import Paths, local_path
from features.examples import FILE_COLUMNS, FILE_SCHEMA, validation_split
from models.synthetic import make_examples, make_spec
from spark_jobs.example_assembly import write_examples
from models.train import score_model
from spark_jobs import train_model

from test_train import SMALL

RUN_DATE = dt.date(2026, 1, 5)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def snapshot(spark, tmp_path):
    """(cfg, the window's examples): a snapshot of RUN_DATE with a train split only, its examples
    a Delta table written as build_window writes one."""
    cfg = load_config(overrides={**SMALL, "storage.root": str(tmp_path / "var"), "model.variant": "cscnn",
                                 "train.epochs": 3, "train.validation_fraction": 0.2, "train.seed": 5})
    spec = make_spec(n_categories=4, vocab=13)
    window, images = make_examples(spec, n_ads=16, impressions_per_ad=(6, 14), image_size=32, seed=1)
    table = pa.Table.from_pandas(window, preserve_index=False)
    examples = tmp_path / "examples"
    n = table.num_rows
    stored = (table.append_column("run_date", pa.repeat(pa.scalar(RUN_DATE), n)).select(list(FILE_COLUMNS))
              .cast(FILE_SCHEMA).append_column("split", pa.repeat(pa.scalar("train"), n)))
    write_examples(spark.createDataFrame(stored), str(examples))
    snap = local_path(Paths.of(cfg).snapshot(RUN_DATE))
    os.makedirs(snap)
    pq.write_table(pa.table({"ad_id": list(images), "image_bytes": [_png(p) for p in images.values()]}),
                   os.path.join(snap, "images"))
    with open(os.path.join(snap, "feature_spec.json"), "w") as f:
        f.write(spec.to_json())
    with open(os.path.join(snap, "_SUCCESS"), "w") as f:
        json.dump({"examples": str(examples)}, f)
    return cfg, table, images


def test_the_stage_trains_without_the_holdout_and_reports_its_validation_rows(snapshot):
    cfg, window, images = snapshot
    metrics = train_model.run(cfg, RUN_DATE)
    fit, valid = validation_split(window, 0.2, seed=5)
    assert 0 < valid.num_rows < window.num_rows
    assert metrics["train_impressions"] == 3 * fit.num_rows  # three epochs over the rows left to fit
    assert metrics["validation_impressions"] == valid.num_rows
    # The metrics the manifest records are those of the validation rows, scored with the kept weights.
    manifest = json.load(open(local_path(Paths.of(cfg).model_manifest(RUN_DATE))))
    again = score_model(metrics["model_path"], valid, images)
    for key in ("auc", "logloss"):
        assert manifest["metrics"][key] == pytest.approx(again[key], rel=1e-5)
    assert 1 <= metrics["best_step"] <= metrics["steps"]


def test_no_validation_split_keeps_the_last_weights(snapshot):
    cfg, window, _ = snapshot
    metrics = train_model.run(cfg.replace({"train.validation_fraction": 0.0}), RUN_DATE)
    assert metrics["train_impressions"] == 3 * window.num_rows and "auc" not in metrics
    assert metrics["best_step"] == -1 and not metrics["early_stopped"]


def test_a_large_window_gets_at_most_validation_max_rows_validation_rows(snapshot, caplog):
    cfg, window, _ = snapshot
    cap = 12  # the window has about 160 rows: 0.2 of them would be about 32
    capped = cfg.replace({"train.validation_max_rows": cap, "train.chunk_rows": 16, "train.epochs": 1})
    with caplog.at_level("INFO", logger="train_model"):
        metrics = train_model.run(capped, RUN_DATE)
    fit, valid = validation_split(window, cap / window.num_rows, seed=5)  # the same hash, a lower threshold
    assert valid.num_rows < validation_split(window, 0.2, seed=5)[1].num_rows
    assert metrics["validation_impressions"] == valid.num_rows
    assert metrics["train_impressions"] == fit.num_rows
    assert f"at most {cap} of the window's {window.num_rows} rows" in caplog.text


def _stage(cfg, **popen):
    return subprocess.Popen([sys.executable, "-m", "spark_jobs.train_model", "--date", RUN_DATE.isoformat(),
                             "--config-json", json.dumps(cfg.to_dict())], cwd=ROOT, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True,
                            env={**os.environ, "CSCNN_LOG_LEVEL": "INFO"},  # the test reads the resume line
                            **popen)


def test_a_stage_killed_by_sigkill_resumes_its_stream_and_trains_the_same_weights(snapshot):
    cfg, _, _ = snapshot
    cfg = cfg.replace({"train.epochs": 40, "train.checkpoint_every": 5, "train.chunk_rows": 16,
                       "train.early_stopping_patience": 1000, "train.device": "cpu"})
    model_dir = local_path(Paths.of(cfg).run_model_dir(RUN_DATE))
    whole = _stage(cfg)
    _, err = whole.communicate(timeout=600)
    assert whole.returncode == 0, err[-3000:]
    expected = torch.load(os.path.join(model_dir, "model.pt"), weights_only=True)["state_dict"]
    shutil.rmtree(model_dir)

    killed = _stage(cfg)
    checkpoint = os.path.join(model_dir, "checkpoint.pt")
    deadline = time.monotonic() + 300
    while not os.path.exists(checkpoint):
        assert killed.poll() is None, "the run ended before its first checkpoint: " + killed.stderr.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(timeout=30) == -signal.SIGKILL
    assert not os.path.exists(os.path.join(model_dir, "model.pt"))
    step = torch.load(checkpoint, weights_only=True)["step"]

    resumed = _stage(cfg)
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    assert f"resumed from {checkpoint} at step {step}" in err
    got = torch.load(os.path.join(model_dir, "model.pt"), weights_only=True)["state_dict"]
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
