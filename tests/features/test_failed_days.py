"""Window days whose quality verdict failed: left out, named, and usable again once they pass.

Runs the features job on tiny inline bronze tables (window_days = 3) with verdicts written to
the ops/day_status table as check_bronze_quality writes them, incrementally and as full rebuilds.
"""

from __future__ import annotations

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from core.config import ConfigError
from core.paths import Paths
from features import tables
from spark_jobs import build_window
from spark_jobs.build_window import FailedDaysError
from spark_jobs.day_status import record_verdict
from tests.features.bronze_fixture import copy_id_registry, replace_bronze_day
from tests.features.test_run import DAYS, day_impressions, make_cfg, table, write_days

FAILED = DAYS[2]
REASON = "bronze_impressions: expect_column_mean_to_be_between(column=click, ...): observed 0.0"


def _verdict(spark, cfg, day, passed):
    record_verdict(spark, Paths.of(cfg), day, passed, "passed" if passed else REASON, None)


def _days_in_examples(spark, cfg, run_date) -> set[str]:
    """The %m%d prefixes of the impression ids in a run date's examples (one per bronze day)."""
    rows = (tables.read_examples(cfg, spark, run_date)
            .select(F.split("impression_id", "-")[0].alias("d")).distinct().collect())
    return {r["d"] for r in rows}


def _assert_same_as_full_rebuild(spark, cfg, meta, full_root, run_date, steps):
    """A full rebuild on a fresh root, after `steps(full_cfg)`, gives the incremental run's outputs."""
    full_cfg = make_cfg(full_root, **{"features.incremental": False})
    steps(full_cfg)
    copy_id_registry(cfg, full_cfg)
    full = build_window.run(full_cfg, spark, run_date)
    for name in (tables.VOCAB_TABLE, tables.BINS_TABLE, tables.AD_COUNTS_TABLE):
        assertDataFrameEqual(table(spark, full_cfg, name, run_date), table(spark, cfg, name, run_date))
    assertDataFrameEqual(tables.read_examples(full_cfg, spark, run_date),
                         tables.read_examples(cfg, spark, run_date))
    for key in ("window_days", "excluded_days", "feature_spec", "vocab_sizes", "bin_edges", "rows", "oov_rate"):
        assert full[key] == meta[key], key


def test_failed_day_is_excluded_then_included_again_after_it_passes(spark, tmp_path):
    cfg = make_cfg(tmp_path / "incremental")
    write_days(spark, cfg, range(5))
    _verdict(spark, cfg, DAYS[1], True)
    _verdict(spark, cfg, FAILED, True)
    _verdict(spark, cfg, FAILED, False)  # the latest verdict wins

    first = build_window.run(cfg, spark, DAYS[3])
    assert first["excluded_days"] == [{"date": FAILED.isoformat(), "reason": REASON}]
    assert first["window_days"] == [d.isoformat() for d in DAYS[0:2]] and first["missing_days"] == []
    assert first["short_window"] is True
    assert _days_in_examples(spark, cfg, DAYS[3]) == {f"{d:%m%d}" for d in (*DAYS[0:2], DAYS[3])}

    second = build_window.run(cfg, spark, DAYS[4])
    assert second["window_days"] == [DAYS[1].isoformat(), DAYS[3].isoformat()]
    assert FAILED.isoformat() not in second["counted_days"]

    def excluded_steps(full_cfg):
        write_days(spark, full_cfg, range(5))
        _verdict(spark, full_cfg, FAILED, False)

    _assert_same_as_full_rebuild(spark, cfg, second, tmp_path / "full_excluded", DAYS[4], excluded_steps)

    # Recovery: the corrected day is re-ingested and passes its check; the same run date again.
    corrected = day_impressions(2, salt=1)
    replace_bronze_day(spark, cfg, FAILED, corrected)
    _verdict(spark, cfg, FAILED, True)
    again = build_window.run(cfg, spark, DAYS[4])
    assert again["excluded_days"] == [] and again["short_window"] is False
    assert again["window_days"] == [d.isoformat() for d in DAYS[1:4]]
    assert again["counted_days"] == [FAILED.isoformat()]  # only the re-ingested day is recounted
    assert f"{FAILED:%m%d}" in _days_in_examples(spark, cfg, DAYS[4])

    def recovered_steps(full_cfg):
        write_days(spark, full_cfg, range(5))
        replace_bronze_day(spark, full_cfg, FAILED, corrected)

    _assert_same_as_full_rebuild(spark, cfg, again, tmp_path / "full_recovered", DAYS[4], recovered_steps)


def test_fail_policy_and_a_failed_holdout_stop_the_stage(spark, tmp_path):
    cfg = make_cfg(tmp_path / "policy", **{"features.failed_days": "fail"})
    write_days(spark, cfg, range(4))
    _verdict(spark, cfg, FAILED, False)
    with pytest.raises(FailedDaysError, match=f"{FAILED}: {REASON[:20]}.*features.failed_days=exclude"):
        build_window.run(cfg, spark, DAYS[3])
    with pytest.raises(FailedDaysError, match=f"holdout day {FAILED} failed its quality check"):
        build_window.run(cfg.replace({"features.failed_days": "exclude"}), spark, FAILED)


def test_failed_days_policy_is_validated(tmp_path):
    with pytest.raises(ConfigError, match="features.failed_days.*'skip'.*allowed: exclude, fail"):
        make_cfg(tmp_path, **{"features.failed_days": "skip"})
