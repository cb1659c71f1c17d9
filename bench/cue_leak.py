"""Does knowing an ad's category help read its category-independent visual cues? The diagnosis
behind the ablation's category_specificity=0 control (docs/ABLATION.md, "Controls").

    python -m bench.cue_leak [--seeds 1,2,3,4,5] [--out cue_leak.json]

For each seed, the ads alive on the ablation's run date in the ablation's world (WORLD_KNOBS of
bench/ablation.py) are rendered, and two questions are measured:

* Latent leak: the share of each cue's variance that lies between categories (eta squared of
  brightness and of the positional mark cue, grouped by category), next to the share a cue drawn
  independently of the category shows by chance, (K - 1) / (n - 1).
* Pixel leak: how well the brightness cue is read back from an image's background colour (the
  per-channel median of its pixels) by a readout that does not know the category (linear, and a
  cubic polynomial of the three channels) and by one fitted per category (linear). The readouts are
  fitted on half of the ads and scored (R squared) on the other half.

The click model's brightness term is ``w_generic * (2 * brightness - 1)``; its share of the visual
logit's variance at category_specificity 0 is reported too, as is the variance of that term the
best category-blind readout leaves unexplained but the per-category one explains.
Writes bench/results/<out>.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import logging
import sys
from typing import Any

import numpy as np

from bench.ablation import WORLD_KNOBS
from bench.common import machine, write_result
from core.cli import setup_logging
from core.config import load_config
from simworld.clickmodel import visual_logit
from simworld.images import render
from simworld.world import active_ads

log = logging.getLogger("bench.cue_leak")

WINDOW_DAYS = 4  # the ablation's run date is world.epoch + window days


def eta_squared(values: np.ndarray, groups: np.ndarray) -> float:
    """Between-group share of the variance of ``values`` (n,) grouped by ``groups`` (n,)."""
    total = float(((values - values.mean()) ** 2).sum())
    if total == 0:
        return 0.0
    between = sum(len(v) * (v.mean() - values.mean()) ** 2
                  for v in (values[groups == g] for g in np.unique(groups)))
    return float(between / total)


def poly_features(x: np.ndarray, degree: int) -> np.ndarray:
    """All monomials of the columns of ``x`` (n, d) up to ``degree``, with the constant; (n, m)."""
    cols = [np.ones(len(x))]
    for deg in range(1, degree + 1):
        for combo in itertools.combinations_with_replacement(range(x.shape[1]), deg):
            cols.append(np.prod(x[:, combo], axis=1))
    return np.stack(cols, axis=1)


def r_squared(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(1.0 - ((y_true - y_pred) ** 2).sum() / ((y_true - y_true.mean()) ** 2).sum())


def readout_r2(features: np.ndarray, target: np.ndarray, fit: np.ndarray, groups: np.ndarray | None = None) -> float:
    """Held-out R squared of a least-squares readout of ``target`` from ``features``: fitted on the
    rows where ``fit`` is true, scored on the others; one readout per group when ``groups`` is set."""
    pred = np.zeros(len(target))
    for g in (np.unique(groups) if groups is not None else [None]):
        rows = np.ones(len(target), bool) if g is None else groups == g
        coef, *_ = np.linalg.lstsq(features[rows & fit], target[rows & fit], rcond=None)
        pred[rows] = features[rows] @ coef
    return r_squared(target[~fit], pred[~fit])


def measure(seed: int) -> dict[str, Any]:
    cfg = load_config(overrides={**WORLD_KNOBS, "world.seed": seed})
    world = cfg.world
    ads = active_ads(world, WINDOW_DAYS)
    n, k = len(ads), int(world.n_categories)
    pixels = render(world, ads).astype(np.float32) / 255.0  # (n, S, S, 3)
    background = np.median(pixels.reshape(n, -1, 3), axis=1)  # (n, 3)
    fit = np.random.default_rng([seed, 7]).random(n) < 0.5
    b = ads.brightness.astype(np.float64)
    blind_linear = readout_r2(poly_features(background, 1), b, fit)
    blind_cubic = readout_r2(poly_features(background, 3), b, fit)
    aware_linear = readout_r2(poly_features(background, 1), b, fit, ads.category)
    # The visual logit at category_specificity 0 and the brightness term's share of its variance.
    spec0 = visual_logit(load_config(overrides={**WORLD_KNOBS, "world.seed": seed,
                                                "world.category_specificity": 0.0}).world, ads)
    generic = world.w_generic * ads.visual_generic.astype(np.float64)
    best_blind = max(blind_linear, blind_cubic)
    return {"seed": seed, "ads": n, "categories": k,
            "eta2_brightness": round(eta_squared(b, ads.category), 5),
            "eta2_mark": round(eta_squared(ads.visual_position.astype(np.float64), ads.category), 5),
            "eta2_by_chance": round((k - 1) / (n - 1), 5),
            "r2_blind_linear": round(blind_linear, 4), "r2_blind_cubic": round(blind_cubic, 4),
            "r2_per_category_linear": round(aware_linear, 4),
            "generic_share_of_visual_variance_spec0": round(float(generic.var() / spec0.var()), 4),
            "generic_variance_only_category_reads": round(float(generic.var() * max(0.0, aware_linear - best_blind)),
                                                          4)}


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="1,2,3,4,5", help="world seeds, comma separated")
    ap.add_argument("--out", default="cue_leak.json", help="file name under bench/results/")
    args = ap.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"bad --seeds {args.seeds!r}; expected integers, e.g. 1,2,3") from None
    if not seeds:
        raise SystemExit(f"bad --seeds {args.seeds!r}; expected at least one integer")
    per_seed = []
    for seed in seeds:
        row = measure(seed)
        log.info("seed %d: %s", seed, row)
        per_seed.append(row)
    keys = [k for k in per_seed[0] if k not in ("seed", "ads", "categories")]
    write_result(args.out, {"machine": machine(), "measured": dt.date.today().isoformat(), "world": WORLD_KNOBS,
                            "window_days": WINDOW_DAYS, "per_seed": per_seed,
                            "mean": {k: round(float(np.mean([r[k] for r in per_seed])), 4) for k in keys}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
