"""Where CSCNN's missing visual headroom goes: epochs, the priors' learning rate, tower capacity
and data, each changed alone (and the two that helped, together) on one seed of the ablation's world.

    python -m bench.headroom [--seed 1]      # bench/results/headroom.json (about 20 min here)

The ablation reports visual_headroom_closed = (cscnn - dcn) / (oracle_visual - dcn): the share of
the AUC that the simulator's true visual logit adds to the DCN which CSCNN's tower recovers. This
benchmark trains dcn, cscnn and oracle_visual under each setting of CONFIGS (one bench.ablation
run each; the runs that keep the data sizes train on the same kept world and snapshot,
``--reuse-data``) and reports each setting's share beside the base one, overall and on cold ads.
A setting whose share rises names a place the rest of the headroom went.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from bench import ablation
from bench.common import RESULTS, machine, write_result

VARIANTS = ("dcn", "cscnn", "oracle_visual")
IMPRESSIONS_PER_DAY = 100_000  # the base size (bench.ablation's default); "data_2x" doubles it
# name -> (config overrides, impressions per day)
CONFIGS: dict[str, tuple[dict[str, Any], int]] = {
    "base": ({}, IMPRESSIONS_PER_DAY),
    "epochs_3": ({"train.epochs": 3}, IMPRESSIONS_PER_DAY),
    "prior_lr_x10": ({"train.prior_lr_scale": 10.0}, IMPRESSIONS_PER_DAY),
    "resnet18": ({"model.backbone": "resnet18"}, IMPRESSIONS_PER_DAY),
    "data_2x": ({}, 2 * IMPRESSIONS_PER_DAY),
    "resnet18_prior_lr_x10": ({"model.backbone": "resnet18", "train.prior_lr_scale": 10.0}, IMPRESSIONS_PER_DAY),
}


def config_file(name: str) -> str:
    return f"headroom_{name}.json"


def run_config(name: str, seed: int, work: str) -> None:
    overrides, per_day = CONFIGS[name]
    argv = ["--seeds", str(seed), "--variants", ",".join(VARIANTS), "--impressions-per-day", str(per_day),
            "--reuse-data", "--work", os.path.join(work, f"per_day{per_day}"), "--out", config_file(name)]
    for key, value in overrides.items():
        argv += ["--set", f"{key}={json.dumps(value)}"]
    if ablation.main(argv) != 0:
        raise SystemExit(f"the ablation run of setting {name!r} failed")


def compose(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """headroom.json from the settings' ablation results ({name: result}, one seed each)."""
    rows = {}
    for name, r in results.items():
        v = r["variants"]
        row = {f"{m}_auc": v[m]["auc_by_seed"][0] for m in VARIANTS}
        row.update({f"{m}_auc_cold": v[m]["auc_cold_by_seed"][0] for m in VARIANTS})
        head = r.get("visual_headroom_closed", {}).get("cscnn", {})
        row.update({"closed": head.get("overall"), "closed_cold": head.get("cold"),
                    "cscnn_train_seconds": v["cscnn"]["seconds_by_seed"][0],
                    "train_impressions": r["train_impressions"][0]})
        rows[name] = row
    base = rows.get("base", {})
    for row in rows.values():
        for key in ("closed", "closed_cold"):
            row[f"{key}_vs_base"] = (None if row[key] is None or base.get(key) is None
                                     else round(row[key] - base[key], 4))
    first = next(iter(results.values()))
    return {"machine": machine(), "seed": first["seeds"][0], "world": first["world"],
            "settings": {n: {"overrides": o, "impressions_per_day": p} for n, (o, p) in CONFIGS.items() if n in rows},
            "results": rows,
            "config_files": {n: config_file(n) for n in rows}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1, help="world/training seed")
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"settings to run, from {', '.join(CONFIGS)}")
    ap.add_argument("--compose", action="store_true", help="only rebuild headroom.json from the settings' files")
    ap.add_argument("--work", default=os.path.join("var", "headroom"), help="scratch folder of the worlds")
    args = ap.parse_args(argv)
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in names if c not in CONFIGS]
    if not names or unknown:
        raise SystemExit(f"bad --configs {args.configs!r}; expected names from {', '.join(CONFIGS)}")
    if not args.compose:
        for name in names:
            run_config(name, args.seed, os.path.abspath(args.work))
    results = {}
    for name in CONFIGS:
        path = os.path.join(RESULTS, config_file(name))
        if os.path.isfile(path):
            with open(path) as f:
                results[name] = json.load(f)
    if not results:
        raise SystemExit("no setting has a result file yet; run python -m bench.headroom")
    write_result("headroom.json", compose(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
