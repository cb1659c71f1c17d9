"""Run by test_train.py under models.launch (1 or 2 processes): trains the shared tiny setup."""

from __future__ import annotations

import json
import os
import sys

from core.config import load_config
from models.synthetic import make_examples, make_spec
from models.train import train

DDP_OVERRIDES = {"model.variant": "dcn", "model.deep_dims": [16, 8, 4], "model.head_dims": [8],
                 "train.batch_size": 40, "train.max_steps": 4, "train.checkpoint_every": 0,
                 "train.lr": 0.01, "train.device": "cpu"}


def ddp_data():
    """Groups of 3..6 impressions, so every 40-row batch has >= 2 groups to shard; a holdout."""
    spec = make_spec(n_categories=4, vocab=13)
    df, images = make_examples(spec, n_ads=40, impressions_per_ad=(3, 6), image_size=32, seed=5)
    holdout, _ = make_examples(spec, n_ads=10, impressions_per_ad=(3, 6), image_size=32, seed=6)
    return spec, df, holdout, images


if __name__ == "__main__":
    out_dir = sys.argv[1]
    spec, df, holdout, images = ddp_data()
    cfg = load_config(overrides=DDP_OVERRIDES)
    metrics = train(cfg, spec, df, holdout, images, out_dir, resume=False)
    if int(os.environ.get("RANK", "0")) == 0:
        with open(os.path.join(out_dir, "metrics.json"), "w") as f:
            json.dump(metrics, f)
