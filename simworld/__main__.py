"""Command line: write the simulated world's landing drops for a date range.

    python -m simworld --start 2026-01-01 --end 2026-02-02 [--impressions-per-day 20000] [--seed 7]
                       [--config FILE] [--set world.category_specificity=0.8 ...] [--root var]

--seed, --impressions-per-day and --root are shortcuts for world.seed, world.impressions_per_day
and storage.root; they win over the same keys given with --set or in the config file.
"""

from __future__ import annotations

import sys
from typing import Any

from core.cli import CliParser, date_arg, report_user_error, run_cli
from core.config import ConfigError, load_config, parse_overrides
from simworld.generate import generate_range


def build_parser() -> CliParser:
    ap = CliParser(prog="python -m simworld", description=__doc__.splitlines()[0])
    ap.add_argument("--start", required=True, type=date_arg, help="first day YYYY-MM-DD")
    ap.add_argument("--end", required=True, type=date_arg, help="last day YYYY-MM-DD (inclusive)")
    ap.add_argument("--impressions-per-day", type=int, help="shortcut for world.impressions_per_day")
    ap.add_argument("--seed", type=int, help="shortcut for world.seed")
    ap.add_argument("--root", help="shortcut for storage.root")
    ap.add_argument("--config", help="config file (.toml or .json)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="dotted override, e.g. world.category_specificity=0.8 (repeatable)")
    return ap


def _print_progress(summary: dict[str, Any]) -> None:
    print(f"{summary['date']}: {summary['impressions']} impressions, {summary['ads']} ads "
          f"({summary['new_ads']} new, {summary['new_images']} images written), ctr {summary['ctr']:.4f}, "
          f"{summary['seconds']:.2f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        overrides = parse_overrides(args.set)
        for key, value in (("world.impressions_per_day", args.impressions_per_day), ("world.seed", args.seed),
                           ("storage.root", args.root)):
            if value is not None:
                overrides[key] = value
        cfg = load_config(args.config, overrides)
        days = generate_range(cfg, args.start, args.end, progress=_print_progress)
    except (ConfigError, ValueError) as e:
        return report_user_error(e, args.debug)
    total = sum(d["impressions"] for d in days)
    seconds = sum(d["seconds"] for d in days)
    print(f"done: {len(days)} days, {total} impressions in {seconds:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
