"""The command line every pipeline stage shares (spark-submit, torchrun or python -m).

    python spark_jobs/ingest.py --date 2026-02-02 --config conf/run.json --set spark.master=local[2]

`--config` is a .toml/.json file (the DAG writes the run's resolved config to one per run),
`--config-json` the same inline, `--set key=value` dotted overrides applied last.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys

from core.config import ConfigError, PipelineConfig, build, load_config, parse_overrides


def stage_parser(description: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--date", required=True, help="logical run date YYYY-MM-DD")
    ap.add_argument("--config", help="config file (.toml or .json)")
    ap.add_argument("--config-json", help="the whole config as JSON (overrides --config)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="dotted override, e.g. features.window_days=8 (repeatable)")
    return ap


def parse_date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"bad date {value!r}; expected YYYY-MM-DD") from None


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    import json

    if args.config_json:
        cfg = build(PipelineConfig, json.loads(args.config_json), "")
        return cfg.replace(parse_overrides(args.set)) if args.set else cfg
    return load_config(args.config, parse_overrides(args.set))


def setup_logging() -> None:
    logging.basicConfig(level=os.environ.get("CSCNN_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
