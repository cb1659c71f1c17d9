"""Publish and rollback under SIGKILL, and the published lookup table (Spark).

A real subprocess (spark_jobs/publish.py or `python -m serving.registry rollback`) is stopped at
each step of its transaction through serving.registry's pause points and killed with SIGKILL
(its whole process group, the Spark JVM included). Then the version `current` names must load
and be the previous or the new one, and after a restart (`registry doctor`, or the next
publish) `current` and the registry agree, no staging folder is left, and the published lookup
table holds the live versions' rows only.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from core.paths import Paths
from serving import registry
from serving.predictor import Predictor
from spark_jobs import build_lookup, publish, validate
from tests.serving.helpers import kill_at, small_cfg
from tests.serving.spark_world import D
from tests.serving.test_pipeline import GATES, base, fresh_cfg, train_blocked_model, world  # noqa: F401  (fixtures)

PUBLISH_STEPS = [s for s in registry.PAUSE_STEPS if s.startswith("publish:")]
ROLLBACK_STEPS = [s for s in registry.PAUSE_STEPS if s.startswith("rollback:")]
FLOAT16 = {"inference.reduction": "float16"}


def legacy_lookup_table(spark, cfg) -> None:
    """The lookup table as earlier code wrote it from build_lookup, before the gates (no version)."""
    (spark.createDataFrame([(D, 1, 1, 1, [0.5, 0.5])], "run_date date, ad_id bigint, category_id int, "
                                                       "category_idx int, embedding array<float>")
     .write.format("delta").mode("overwrite").partitionBy("run_date").save(Paths.of(cfg).lookup_table))


@pytest.fixture(scope="module")
def v1_live(spark, base, tmp_path_factory):  # noqa: F811
    """v1 (float32 table) live; D's run folder rebuilt as float16 and validated: v2 ready to publish."""
    tmp = tmp_path_factory.mktemp("crash_v1")
    cfg = fresh_cfg(base, tmp)
    legacy_lookup_table(spark, cfg)
    build_lookup.run(cfg, spark, D)
    validate.run(cfg, spark, D)
    assert publish.run(cfg, spark, D)["version"] == 1
    cfg16 = cfg.replace(FLOAT16)
    build_lookup.run(cfg16, spark, D)
    assert validate.run(cfg16, spark, D)["passed"]
    return tmp / "var"


@pytest.fixture(scope="module")
def v2_live(spark, v1_live, tmp_path_factory):
    """v1 and v2 published, v2 live."""
    root = tmp_path_factory.mktemp("crash_v2") / "var"
    shutil.copytree(v1_live, root)
    assert publish.run(small_cfg(root, **{**GATES, **FLOAT16}), spark, D)["version"] == 2
    return root


def copy_of(state: Path, tmp_path: Path):
    root = tmp_path / "var"
    shutil.copytree(state, root)
    return small_cfg(root, **{**GATES, **FLOAT16})


def published_versions(spark, cfg) -> set[int]:
    rows = spark.read.format("delta").load(Paths.of(cfg).lookup_table).select("version").distinct().collect()
    return {r["version"] for r in rows}


def assert_consistent(spark, cfg, live_version: int) -> None:
    """After recovery: pointer and registry agree on ``live_version``, which serves; nothing abandoned
    is left (staging folders, unrecorded folders, table rows of versions never made live)."""
    rows = registry.read_registry(spark, cfg)
    current = registry.read_current(cfg)
    assert registry.agrees(current, rows), (current, [(r["version"], r["action"], r["state"]) for r in rows])
    assert current["version"] == registry.registry_live(rows)["version"] == live_version
    root = registry.published_root(cfg)
    assert not list(root.glob(".staging-*"))
    made_live = {r["version"] for r in rows if r["state"] == registry.LIVE}
    assert {v for v, _, _ in registry.list_version_dirs(cfg)} == made_live
    assert published_versions(spark, cfg) == made_live
    predictor = Predictor.from_current(cfg)
    assert predictor.version["version"] == live_version and predictor.version["txn"] == current["txn"]


@pytest.mark.parametrize("step", PUBLISH_STEPS)
def test_publish_killed_at_each_step_recovers(spark, v1_live, tmp_path, step):
    cfg = copy_of(v1_live, tmp_path)
    kill_at(cfg, step, ["spark_jobs/publish.py", "--date", D.isoformat()], tmp_path)
    moved = step == "publish:pointer"
    # Before any restart a reader gets the previous or the new version, complete and verified.
    assert Predictor.from_current(cfg).version["version"] == (2 if moved else 1)
    if step == "publish:copy":
        assert list(registry.published_root(cfg).glob(".staging-v2-*"))
    report = registry.doctor(spark, cfg)
    assert report["problems"] == [] and report["live"] == ("v2-" if moved else "v1-") + D.isoformat()
    assert_consistent(spark, cfg, 2 if moved else 1)
    recorded = step not in ("publish:copy", "publish:staged")  # the pending row was written
    expected = [(1, "publish", "live")] + ([(2, "publish", "live" if moved else "abandoned")] if recorded else [])
    assert [(r["version"], r["action"], r["state"]) for r in registry.read_registry(spark, cfg)] == expected
    # the next publish works and never reuses a recorded number
    entry = publish.run(cfg, spark, D)
    assert entry["version"] == (3 if recorded else 2)
    assert_consistent(spark, cfg, entry["version"])


def test_the_next_publish_recovers_without_doctor(spark, v1_live, tmp_path):
    cfg = copy_of(v1_live, tmp_path)
    kill_at(cfg, "publish:pointer", ["spark_jobs/publish.py", "--date", D.isoformat()], tmp_path)
    kill_at(cfg, "publish:copy", ["spark_jobs/publish.py", "--date", D.isoformat()], tmp_path)
    assert publish.run(cfg, spark, D)["version"] == 3
    assert_consistent(spark, cfg, 3)
    rows = registry.read_registry(spark, cfg)
    assert [(r["version"], r["state"]) for r in rows] == [(1, "live"), (2, "live"), (3, "live")]


@pytest.mark.parametrize("step", ROLLBACK_STEPS)
def test_rollback_killed_at_each_step_recovers(spark, v2_live, tmp_path, step):
    cfg = copy_of(v2_live, tmp_path)
    kill_at(cfg, step, ["-m", "serving.registry", "rollback", "--to-version", "1"], tmp_path)
    moved = step == "rollback:pointer"
    assert Predictor.from_current(cfg).version["version"] == (1 if moved else 2)
    assert registry.main(["doctor", "--config-json", cfg.to_json()]) == 0
    assert_consistent(spark, cfg, 1 if moved else 2)
    actions = [(r["version"], r["action"], r["state"]) for r in registry.read_registry(spark, cfg)]
    assert actions[-1] == (1, "rollback", "live" if moved else "abandoned")
    # a rollback after the recovery completes
    registry.rollback(spark, cfg, 2 if moved else 1)
    assert_consistent(spark, cfg, 2 if moved else 1)


def test_a_blocked_model_is_never_visible_in_the_published_lookup_table(spark, v1_live, world, tmp_path):  # noqa: F811
    cfg = copy_of(v1_live, tmp_path)
    # the earlier layout (rows before the gates) was replaced by published rows at the first publish
    assert published_versions(spark, cfg) == {1}
    v1_rows = registry.published_lookup(spark, cfg).toPandas()
    v1 = Predictor.from_current(cfg).table
    assert sorted(v1_rows["ad_id"]) == sorted(np.asarray(v1.ad_ids).tolist())
    got = np.stack(v1_rows.sort_values("ad_id")["embedding"].to_numpy())
    np.testing.assert_array_equal(got, np.asarray(v1.stored, dtype=np.float32))

    train_blocked_model(spark, cfg, world)
    # the blocked model's rows exist only in the candidates table, never in the published one
    blocked = spark.read.format("delta").load(build_lookup.candidates_uri(cfg)).where(f"run_date = '{D}'").toPandas()
    assert len(blocked) > 0
    published = spark.read.format("delta").load(Paths.of(cfg).lookup_table).toPandas()
    assert set(published["version"]) == {1}
    blocked_rows = {(a, tuple(np.round(e, 6))) for a, e in zip(blocked["ad_id"], blocked["embedding"])}
    published_rows = {(a, tuple(np.round(e, 6))) for a, e in zip(published["ad_id"], published["embedding"])}
    assert blocked_rows and not blocked_rows & published_rows
