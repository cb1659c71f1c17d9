"""The command line every pipeline stage shares (spark-submit, torchrun or python -m).

    python spark_jobs/ingest.py --date 2026-02-02 --config conf/run.json --set spark.master=local[2]

`--config` is a .toml/.json file (the DAG writes the run's resolved config to one per run),
`--config-json` the same inline, `--set key=value` dotted overrides applied last.

A mistake the user can fix (a bad date, an unknown config key, a bad value, an unknown option)
prints one line, `error: ...`, naming the value and what is allowed, and exits with
`core.exit_codes.USAGE` (2); `--debug` (or CSCNN_DEBUG=1) prints its traceback as well. Every
command's `__main__` is `sys.exit(run_cli(main))`; a stage's `main` is one `run_stage` call. Any other exception still ends the process
with Python's traceback and exit code 1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
import traceback
from typing import Any, Callable, NoReturn, Sequence

from core import exit_codes
from core.config import ConfigError, PipelineConfig, build, load_config, parse_overrides
from core.paths import Paths
from core.timing import stage_timing


class UsageError(ValueError):
    """A command-line argument is wrong; the message names it and what is allowed."""


# The user errors run_cli turns into one line and exit code USAGE.
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, UsageError)


class CliParser(argparse.ArgumentParser):
    """argparse with one-line errors (exit code USAGE) and the shared `--debug` flag."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true",
                          help="on a bad argument or config, print the traceback too")

    def error(self, message: str) -> NoReturn:
        self.exit(exit_codes.USAGE, f"error: {message} (see {self.prog} --help)\n")


def date_arg(value: str) -> str:
    """argparse `type=` for a YYYY-MM-DD option: rejects a bad date at parse time, keeps the string."""
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad date {value!r}; expected YYYY-MM-DD") from None
    return value


def stage_parser(description: str) -> CliParser:
    ap = CliParser(description=description)
    ap.add_argument("--date", required=True, type=date_arg, help="logical run date YYYY-MM-DD")
    ap.add_argument("--config", help="config file (.toml or .json)")
    ap.add_argument("--config-json", help="the whole config as JSON (overrides --config)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="dotted override, e.g. features.window_days=8 (repeatable)")
    return ap


def parse_date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise UsageError(f"bad date {value!r}; expected YYYY-MM-DD") from None


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    if args.config_json:
        try:
            data = json.loads(args.config_json)
        except json.JSONDecodeError as e:
            raise UsageError(f"bad --config-json: not valid JSON ({e})") from None
        cfg = build(PipelineConfig, data, "")
        return cfg.replace(parse_overrides(args.set)) if args.set else cfg
    return load_config(args.config, parse_overrides(args.set))


def run_cli(main: Callable[[list[str]], int | None], argv: Sequence[str] | None = None) -> int:
    """Run `main(argv)` and return its exit code; a user error becomes one line and USAGE.

    User errors are USER_ERRORS (config and argument errors): see `report_user_error`. Other
    exceptions propagate unchanged (traceback, exit code 1).
    """
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        return main(args) or 0
    except USER_ERRORS as e:
        return report_user_error(e, "--debug" in args)


def report_user_error(error: BaseException, debug: bool = False) -> int:
    """Print `error: <message>` as one line on stderr and return USAGE.

    The traceback is printed first only when `debug` (the `--debug` flag) or CSCNN_DEBUG=1.
    """
    if debug or os.environ.get("CSCNN_DEBUG", "") not in ("", "0"):
        traceback.print_exception(error)
    print("error: " + " ".join(str(error).split()), file=sys.stderr, flush=True)
    return exit_codes.USAGE


# Libraries that log every request or credential lookup at INFO: their warnings still show.
QUIET_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3")


def setup_logging() -> None:
    logging.basicConfig(level=os.environ.get("CSCNN_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def timing_record_path(cfg: PipelineConfig, run_date: dt.date, task: str) -> str:
    """Where `task`'s core.timing record of `run_date` goes (a local path or a URI, core.storage)."""
    return Paths.of(cfg).timing_record(run_date, task)


def run_stage(description: str, job: Callable[[PipelineConfig, dt.date, argparse.Namespace], Any],
              argv: Sequence[str] | None = None,
              add_arguments: Callable[[CliParser], Any] | None = None, log_name: str = "stage",
              task: str | None = None) -> int:
    """The `main` of a pipeline stage: parse the shared stage CLI, run `job`, print its summary.

    `job(cfg, run_date, args)` returns a small JSON-able summary, printed as one line on stdout.
    Bad input data (core.exit_codes.BadDataError) is logged and exits with BAD_DATA, which the
    DAG does not retry (logged on the `log_name` logger); `add_arguments(parser)` adds a stage's
    own options. `task` (the DAG's task id) names the stage's core.timing record of the run date.
    """
    setup_logging()
    ap = stage_parser(description)
    if add_arguments is not None:
        add_arguments(ap)
    args = ap.parse_args(argv)
    cfg = config_from_args(args)
    run_date = parse_date(args.date)
    record = timing_record_path(cfg, run_date, task) if task else None
    try:
        with stage_timing(record, task or log_name, run_date.isoformat()):
            summary = job(cfg, run_date, args)
    except exit_codes.BadDataError as err:
        logging.getLogger(log_name).error("%s", err)
        return exit_codes.BAD_DATA
    print(json.dumps(summary, default=str))
    return 0
