"""CSCNN options beyond the paper, judged like the ablation: hierarchical category priors
(cscnn_parent, model.prior_hierarchy "parent") and brand priors (cscnn_brand, model.prior_fields
["category", "brand"]) against plain cscnn, paired within each seed.

    python -m bench.beyond [--seeds 21,22,23]          # both worlds, then bench/results/beyond.json
    python -m bench.beyond --compose                   # only rebuild beyond.json from the two world files

Two worlds per seed, the same but for the cues the options are for (WORLDS):
* ``cues``: a category tree whose leaves all take their parent's attractive conjunction
  (world.sibling_share 1) and brand logos worth world.w_brand in the click model;
* ``no_cues``: siblings share nothing (sibling_share 0) and the logos are drawn but carry no
  click signal (w_brand 0): the control world, where neither option has anything to find.
Each world is one bench.ablation run (variants cscnn, cscnn_parent, cscnn_brand) written to
bench/results/beyond_<world>.json; its test rows of rare categories (fewer than RARE_IMPRESSIONS
training impressions) are scored separately (auc_rare).

Claims (the ablation's rule: the gain is positive in every seed and its mean exceeds its std):
* cscnn_parent beats cscnn on rare categories in the cues world (all categories reported too);
* cscnn_brand beats cscnn in the cues world;
* controls, in the no_cues world: mean cscnn_brand - cscnn <= CONTROL_MAX, and mean
  cscnn_parent - cscnn on rare categories <= CONTROL_MAX.
The world knobs and sizes were fixed on probe seeds before the reported run (docs/ABLATION.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from bench import ablation
from bench.common import RESULTS, machine, write_result

VARIANTS = ("cscnn", "cscnn_parent", "cscnn_brand")
RARE_IMPRESSIONS = 1000  # a category is rare with fewer training impressions than this
TEST_IMPRESSIONS = 200_000  # test-day impressions: enough rows of the rare categories to score them
CONTROL_MAX = 0.001  # largest mean gain an option may show where its cue is absent
# The ablation's world (bench.ablation.WORLD_KNOBS) with a long-tailed category tree: 120 leaves
# under 8 parents with Zipf(1.0) shares of the ads (about 40 leaves below RARE_IMPRESSIONS
# training impressions at 100k impressions a day over 4 days, 8% of the rows), and 200 brands
# whose logos are drawn.
COMMON_KNOBS: dict[str, Any] = {"world.n_categories": 120, "world.n_top_categories": 8,
                                "world.zipf_categories": 1.0, "world.n_brands": 200, "world.brand_logos": True}
WORLDS: dict[str, dict[str, Any]] = {
    "cues": {**COMMON_KNOBS, "world.sibling_share": 1.0, "world.w_brand": 1.5},
    "no_cues": {**COMMON_KNOBS, "world.sibling_share": 0.0, "world.w_brand": 0.0},
}
# Training settings of every variant: the prior tables learn at 10x the base rate (on the probe
# seed, plain cscnn gained from it too, and the options' priors otherwise barely moved in one epoch).
TRAIN_SETTINGS: dict[str, Any] = {"train.prior_lr_scale": 10.0}


def world_file(world: str) -> str:
    return f"beyond_{world}.json"


def run_world(world: str, seeds: list[int], work: str) -> None:
    """One bench.ablation run of ``world`` for ``seeds`` (its result file: world_file(world))."""
    argv = ["--seeds", ",".join(map(str, seeds)), "--variants", ",".join(VARIANTS),
            "--rare-impressions", str(RARE_IMPRESSIONS), "--test-impressions", str(TEST_IMPRESSIONS),
            "--out", world_file(world), "--work", os.path.join(work, world)]
    for key, value in {**WORLDS[world], **TRAIN_SETTINGS}.items():
        argv += ["--set", f"{key}={json.dumps(value)}"]
    if ablation.main(argv) != 0:
        raise SystemExit(f"the ablation run of world {world!r} failed")


def _holds(gain: dict[str, Any]) -> bool:
    return bool(gain["all_positive"] and gain["mean_gt_std"])


def compose(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """beyond.json from the two worlds' ablation results ({world: result})."""
    cues, control = results["cues"], results["no_cues"]
    if cues["seeds"] != control["seeds"]:
        raise SystemExit(f"the worlds ran different seeds ({cues['seeds']} vs {control['seeds']}); "
                         "claims are paired by seed")
    missing = [f"{w}: {v}" for w, r in results.items() for v in VARIANTS if v not in r["variants"]]
    if missing or any("paired_gains_rare" not in r for r in results.values()):
        raise SystemExit(f"a world file lacks variants or rare-category scores ({missing or 'auc_rare'}); "
                         "rerun it with python -m bench.beyond")
    parent, brand = "cscnn_parent-cscnn", "cscnn_brand-cscnn"
    claims = {
        "cscnn_parent>cscnn on rare categories (cues world)": _holds(cues["paired_gains_rare"][parent]),
        "cscnn_brand>cscnn (cues world)": _holds(cues["paired_gains"][brand]),
        f"control: cscnn_brand-cscnn <= {CONTROL_MAX} (no_cues world)":
            control["paired_gains"][brand]["mean"] <= CONTROL_MAX,
        f"control: cscnn_parent-cscnn <= {CONTROL_MAX} on rare categories (no_cues world)":
            control["paired_gains_rare"][parent]["mean"] <= CONTROL_MAX,
    }
    reported = {"cscnn_parent>cscnn on all categories (cues world)": _holds(cues["paired_gains"][parent])}
    gains = {world: {name: {"all": r["paired_gains"][name], "cold": r["paired_gains_cold"][name],
                            "rare": r["paired_gains_rare"][name]} for name in (parent, brand)}
             for world, r in results.items()}
    aucs = {world: {v: {k: r["variants"][v][k] for k in ("auc_by_seed", "auc_cold_by_seed", "auc_rare_by_seed",
                                                          "auc_mean", "seconds_by_seed")} for v in VARIANTS}
            for world, r in results.items()}
    return {
        "machine": machine(),
        "seeds": cues["seeds"],
        "complete": bool(cues["complete"] and control["complete"]),
        "worlds": {w: {k.split(".", 1)[1]: v for k, v in knobs.items()} for w, knobs in WORLDS.items()},
        "train_settings": TRAIN_SETTINGS,
        "world_files": {w: world_file(w) for w in WORLDS},
        "settings": cues["settings"],
        "rare_impressions": RARE_IMPRESSIONS,
        "test_rare_impressions": {w: r["test_rare_impressions"] for w, r in results.items()},
        "test_rare_categories": {w: r["test_rare_categories"] for w, r in results.items()},
        "oracle_auc_by_seed": {w: r["oracle_auc_by_seed"] for w, r in results.items()},
        "auc": aucs,
        "paired_gains": gains,
        "claims": claims,
        "all_claims_hold": all(claims.values()),
        "reported_not_required": reported,
        "claim_rule": "gain positive in every seed and mean gain > sample std of the per-seed gains; "
                      f"controls: mean gain <= {CONTROL_MAX}",
    }


def markdown(result: dict[str, Any]) -> str:
    """beyond.json as Markdown tables (as in docs/ABLATION.md)."""
    def fmt(values: list[float | None], signed: bool = True) -> str:
        return ", ".join("-" if v is None else f"{v:+.4f}" if signed else f"{v:.4f}" for v in values)

    lines = [f"Seeds {result['seeds']}; rare categories: fewer than {result['rare_impressions']} training "
             f"impressions (test rows {result['test_rare_impressions']}, categories "
             f"{result['test_rare_categories']}).", "",
             "| world | variant | AUC by seed | mean | rare-category AUC by seed | cold-ad AUC by seed |",
             "|---|---|---|---|---|---|"]
    for world, by_variant in result["auc"].items():
        for v, r in by_variant.items():
            lines.append(f"| {world} | {v} | {fmt(r['auc_by_seed'], False)} | {r['auc_mean']:.4f} | "
                         f"{fmt(r['auc_rare_by_seed'], False)} | {fmt(r['auc_cold_by_seed'], False)} |")
    lines += ["", "| world | paired gain | rows | by seed | mean | std | positive in every seed | mean > std |",
              "|---|---|---|---|---|---|---|---|"]
    for world, by_pair in result["paired_gains"].items():
        for name, parts in by_pair.items():
            for rows, g in parts.items():
                std = "-" if g["std"] is None else f"{g['std']:.4f}"
                lines.append(f"| {world} | {name} | {rows} | {fmt(g['by_seed'])} | {g['mean']:+.4f} | {std} | "
                             f"{'yes' if g['all_positive'] else 'no'} | {'yes' if g['mean_gt_std'] else 'no'} |")
    lines += ["", "Claims: " + "; ".join(f"{k}: {'holds' if v else 'does not hold'}"
                                         for k, v in result["claims"].items()) + ".",
              "Reported, not required: " + "; ".join(f"{k}: {'holds' if v else 'does not hold'}"
                                                     for k, v in result["reported_not_required"].items()) + "."]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="21,22,23", help="world/training seeds, comma separated")
    ap.add_argument("--worlds", default=",".join(WORLDS), help=f"worlds to run, from {', '.join(WORLDS)}")
    ap.add_argument("--compose", action="store_true", help="only rebuild beyond.json from the world files")
    ap.add_argument("--markdown", default="", metavar="RESULT_JSON", help="only print a beyond.json as Markdown")
    ap.add_argument("--work", default=os.path.join("var", "beyond"), help="scratch folder of the worlds")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.markdown:
        with open(args.markdown) as f:
            print(markdown(json.load(f)))
        return 0
    if not args.compose:
        try:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            raise SystemExit(f"bad --seeds {args.seeds!r}; expected integers, e.g. 11,12,13") from None
        worlds = [w.strip() for w in args.worlds.split(",") if w.strip()]
        unknown = [w for w in worlds if w not in WORLDS]
        if not seeds or not worlds or unknown:
            raise SystemExit(f"bad --seeds {args.seeds!r} or --worlds {args.worlds!r}; worlds: {', '.join(WORLDS)}")
        for world in worlds:
            run_world(world, seeds, os.path.abspath(args.work))
    results = {}
    for world in WORLDS:
        path = os.path.join(RESULTS, world_file(world))
        if not os.path.isfile(path):
            raise SystemExit(f"no result of world {world!r} at {path}; run python -m bench.beyond --worlds {world}")
        with open(path) as f:
            results[world] = json.load(f)
    write_result("beyond.json", compose(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
