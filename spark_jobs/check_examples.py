"""Check run date D's encoded examples (the DAG's `check_examples_quality` stage), with GX Data Docs.

    python spark_jobs/check_examples.py --date 2026-02-02 [--config FILE] [--set k=v]

Runs after build_window and before anything trains on its output. Validates both splits of the
run date's examples (expectations/examples.py: ids within their vocabularies, no nulls, label
rate within bounds, holdout not empty), each through a GX checkpoint that updates Data Docs,
and writes the summary to <reports>/quality/<D>-examples.json. A failed critical expectation
raises DataQualityError naming it and its Data Docs page; the command then exits with
core.exit_codes.BAD_DATA, which the DAG does not retry.

Great Expectations (expectations.*, ~6 s of imports) is imported by `check_examples`, so that a
bad argument is reported without loading it (tests/test_cli_errors.py).
"""

from __future__ import annotations

import datetime as dt
import sys
from typing import Any

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from core.cli import run_cli
from core.config import PipelineConfig
from core.timing import phase
from features.examples import SPLITS
from features.tables import load_feature_spec, read_examples
from spark_jobs.check_quality import run_check_stage, summary_entry, write_summary


def check_examples(cfg: PipelineConfig, spark: SparkSession, run_date: dt.date) -> dict[str, Any]:
    """GX on the run date's encoded examples (both splits): ids within vocabularies, no nulls,
    label rate within bounds, holdout not empty. Raises DataQualityError on critical failures,
    after writing the summary to <reports>/quality/<D>-examples.json."""
    with phase("imports"):
        from expectations.examples import build_examples_suite, project_examples
        from expectations.runner import raise_on_critical, validate
    spec = load_feature_spec(cfg, spark, run_date)
    examples_df = read_examples(cfg, spark, run_date)
    results = []
    for split in SPLITS:
        split_df = project_examples(examples_df.where(F.col("split") == split), spec)
        results.append(validate(cfg, split_df, build_examples_suite(spec, cfg, split), f"examples_{split}",
                                run_date.isoformat()))
    summary = {"date": run_date.isoformat(), "success": all(r.success for r in results),
               "suites": {r.suite_name: summary_entry(r) for r in results}}
    summary["summary_path"] = write_summary(cfg, run_date, summary, suffix="-examples")
    raise_on_critical(*results)
    return summary


def main(argv: list[str] | None = None) -> int:
    return run_check_stage(check_examples, "Check one run date's encoded examples with Great Expectations.", argv,
                           task="check_examples_quality")


if __name__ == "__main__":
    sys.exit(run_cli(main))
