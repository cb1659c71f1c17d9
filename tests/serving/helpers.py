"""A tiny trained model over synthetic examples plus an encoder under which raw values equal ids,
so raw contract requests and encoded examples describe the same impressions (no Spark needed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from core.config import load_config
from serving import registry
from features.encoder import VOCAB_FIELDS, FeatureEncoder
from features.spec import MULTI_FIELDS, NUMERIC_FIELDS, SINGLE_FIELDS
from models.synthetic import make_examples, make_spec

VOCAB = 13
SMALL = {"model.deep_dims": [16, 8], "model.head_dims": [8], "model.visual_dim": 6,
         "model.prior_channels": 3, "model.prior_spatial": 3, "model.attention_layers": 2,
         "train.batch_size": 64, "train.lr": 0.01, "train.device": "cpu", "train.max_steps": 6,
         "train.checkpoint_every": 0}


def small_cfg(root: Path, **overrides):
    return load_config(overrides={**SMALL, "storage.root": str(root), **overrides})


def synthetic_world(seed: int = 1, n_ads: int = 16, vocab: int = VOCAB,
                    impressions_per_ad: tuple[int, int] = (4, 10)):
    """(spec, examples, images, ad id -> encoded ad id) with f_ad_id consistent per ad."""
    spec = make_spec(n_categories=4, vocab=vocab)
    df, images = make_examples(spec, n_ads=n_ads, impressions_per_ad=impressions_per_ad, image_size=32, seed=seed)
    ads = np.unique(df["ad_id"].to_numpy())
    ad_code = {int(a): 1 + i % (vocab - 1) for i, a in enumerate(ads)}
    df["f_ad_id"] = df["ad_id"].map(ad_code).astype(np.int32)
    return spec, df, images, ad_code


def identity_encoder(ad_code: dict[int, int], vocab: int = VOCAB) -> FeatureEncoder:
    """Raw value v -> id v for 1 <= v < vocab (ad ids through ``ad_code``); numeric k -> bin k."""
    entries = {name: {v: v for v in range(1, vocab)} for name in VOCAB_FIELDS}
    entries["ad_id"] = dict(ad_code)
    edges = {name: [k + 0.5 for k in range(1, vocab - 1)] for name in NUMERIC_FIELDS}  # vocab = len + 2
    return FeatureEncoder.from_entries(entries, edges)


def requests_from_examples(df: pd.DataFrame) -> list[dict]:
    """Raw contract requests that the identity encoder maps back to the examples' ids."""
    out = []
    for row in df.to_dict("records"):
        req = {}
        for name in SINGLE_FIELDS:
            v = int(row[f"f_{name}"])
            if name == "ad_id":
                req[name] = int(row["ad_id"])
            elif name in NUMERIC_FIELDS:
                req[name] = None if v == 0 else float(v)
            else:
                req[name] = v
        for name in MULTI_FIELDS:
            req[name] = [int(x) for x in row[f"m_{name}"]]
        out.append(req)
    return out


ROOT = Path(__file__).resolve().parents[2]


def kill_at(cfg, step: str, argv: list[str], tmp_path: Path) -> None:
    """Run ``argv`` (with ``cfg`` as --config-json) in a new process group until it pauses at the
    registry's ``step`` (serving.registry's pause points), then SIGKILL the group."""
    name = step.replace(":", "-")
    ready = tmp_path / f"paused-{name}.pid"
    env = {**os.environ, "PYTHONPATH": str(ROOT), registry.PAUSE_AT_ENV: step,
           registry.PAUSE_READY_ENV: str(ready)}
    log = tmp_path / f"killed-{name}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, *argv, "--config-json", cfg.to_json()], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not ready.exists():
            assert proc.poll() is None, f"exited with {proc.returncode} before {step}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"never reached {step}:\n{log.read_text()[-3000:]}"
            time.sleep(0.2)
        assert int(ready.read_text()) == proc.pid
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
