"""build_lookup -> validate -> publish -> predictor -> rollback on hand-built Delta tables (Spark)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from core.paths import Paths
from models.train import train
from serving import registry
from serving.lookup import IntegrityError
from serving.predictor import Predictor
from spark_jobs import build_lookup, publish, validate
from tests.serving.helpers import requests_from_examples, small_cfg
from tests.serving.spark_world import D, make_world, write_tables

GATES = {"gates.auc_floor": 0.6, "train.max_steps": 60, "train.batch_size": 64,
         "inference.reduction": "none"}


@pytest.fixture(scope="module")
def world():
    return make_world()


@pytest.fixture(scope="module")
def base(spark, world, tmp_path_factory):
    """The Delta tables and a model trained on the world's labels (copied into each test's root)."""
    root = tmp_path_factory.mktemp("serving_base") / "var"
    cfg = small_cfg(root, **GATES)
    write_tables(spark, cfg, world)
    spec, train_df, hold_df, images, _ = world
    train(cfg, spec, train_df, None, images, root / "good_model")
    return root


def fresh_cfg(base: Path, tmp_path: Path, **overrides):
    """A config whose storage is a private copy of the base tables plus the good model of D."""
    root = tmp_path / "var"
    shutil.copytree(base, root)
    cfg = small_cfg(root, **{**GATES, **overrides})
    model_dir = Path(Paths.of(cfg).run_model_dir(D))
    model_dir.mkdir(parents=True)
    shutil.copy(root / "good_model" / "model.pt", model_dir / "model.pt")
    return cfg


def live(cfg):
    current = registry.read_current(cfg)
    return None if current is None else current["version"]


def test_publish_crash_keeps_previous_version_and_rollback_restores(spark, base, world, tmp_path, monkeypatch):
    cfg = fresh_cfg(base, tmp_path)
    build_lookup.run(cfg, spark, D)
    record = validate.run(cfg, spark, D)
    gates = {g["name"]: g for g in record["gates"]}
    assert record["passed"] and gates["score_match"]["value"] <= 1e-4
    assert "nothing is live" in gates["auc_vs_live"]["note"]
    bf16 = record["precision_check"]["bf16"]
    assert 0 < bf16["max_abs_score_diff"] <= bf16["tolerance"] == 1e-3 and bf16["passed"]
    assert record["serving_precisions"] == ["fp32", "bf16"]
    assert publish.run(cfg, spark, D)["version"] == 1 and live(cfg) == 1
    # the published version is served in what its record allows: bf16 on request, fp32 always
    assert Predictor.from_current(cfg, precision="bf16").precision == "bf16"

    # v2: the same model with a float16 table, validated against the live v1
    cfg16 = cfg.replace({"inference.reduction": "float16"})
    build_lookup.run(cfg16, spark, D)
    record = validate.run(cfg16, spark, D)
    assert {g["name"]: g for g in record["gates"]}["auc_vs_live"]["threshold"] is not None
    publish.run(cfg16, spark, D)
    assert live(cfg) == 2

    # an exception after the v3 folder and its pending row are written, before `current` moves:
    # v3 is undone (row abandoned, folder removed), v2 stays live and readable
    def crash(*_args, **_kwargs):
        raise KeyboardInterrupt("injected crash before switching current")

    monkeypatch.setattr(registry, "switch_current", crash)
    with pytest.raises(KeyboardInterrupt):
        publish.run(cfg16, spark, D)
    monkeypatch.undo()
    assert [v for v, _, _ in registry.list_version_dirs(cfg)] == [1, 2] and live(cfg) == 2
    predictor = Predictor.from_current(cfg)
    assert predictor.version["version"] == 2 and predictor.table.reduction.method == "float16"
    hold_df = world[2]
    assert np.isfinite(predictor.score_records(requests_from_examples(hold_df.head(5))).scores).all()

    registry.rollback(spark, cfg, 1)
    assert live(cfg) == 1 and Predictor.from_current(cfg).table.reduction.method == "none"
    rows = registry.read_registry(spark, cfg)
    assert [(r["action"], r["version"], r["state"]) for r in rows] == [
        ("publish", 1, "live"), ("publish", 2, "live"), ("publish", 3, "abandoned"), ("rollback", 1, "live")]
    assert rows[0]["config_hash"] == cfg.config_hash() and json.loads(rows[0]["input_versions"]) == \
        {"impressions": 0, "ads": 0}
    with pytest.raises(registry.PublishError, match="no published version 7"):
        registry.rollback(spark, cfg, 7)
    with pytest.raises(registry.PublishError, match="no published version 3"):  # abandoned
        registry.rollback(spark, cfg, 3)

    # a tampered published file is refused, naming it
    emb = Path(registry.version_dir(cfg, registry.read_current(cfg))) / "lookup" / "embeddings.npy"
    data = np.load(emb)
    data[0, 0] += 1.0
    np.save(emb, data)
    with pytest.raises(IntegrityError, match="embeddings.npy"):
        Predictor.from_current(cfg)
    assert registry.rollback(spark, cfg, 2)["version"] == 2
    with pytest.raises(registry.PublishError, match="refusing to roll back to version 1: lookup/embeddings.npy"):
        registry.rollback(spark, cfg, 1)


def train_blocked_model(spark, cfg, world) -> None:
    """D's model trained on shuffled labels, its lookup table built; validate and publish refuse it."""
    spec, train_df, _, images, _ = world
    shuffled = train_df.assign(label=np.random.default_rng(0).permutation(train_df["label"].to_numpy()))
    train(cfg, spec, shuffled, None, images, Paths.of(cfg).run_model_dir(D))
    build_lookup.run(cfg, spark, D)
    with pytest.raises(validate.GateFailed, match="auc_floor"):
        validate.run(cfg, spark, D)
    record = json.loads(Path(Paths.of(cfg).validation_record(D)).read_text())
    assert not {g["name"]: g for g in record["gates"]}["auc_floor"]["passed"]
    with pytest.raises(registry.PublishError, match="auc_floor"):
        publish.run(cfg, spark, D)


def test_model_trained_on_shuffled_labels_is_blocked(spark, base, world, tmp_path):
    cfg = fresh_cfg(base, tmp_path)
    train_blocked_model(spark, cfg, world)
    assert registry.list_version_dirs(cfg) == [] and live(cfg) is None
    # its lookup rows exist only before the gates: the published table was never written
    assert spark.read.format("delta").load(build_lookup.candidates_uri(cfg)).count() > 0
    assert not os.path.exists(Paths.of(cfg).lookup_table)


def test_table_under_the_coverage_threshold_is_blocked(spark, base, tmp_path):
    cfg = fresh_cfg(base, tmp_path, **{"inference.budget_ads": 5})
    meta = build_lookup.run(cfg, spark, D)
    assert meta["rows"] == 5
    with pytest.raises(validate.GateFailed, match="coverage"):
        validate.run(cfg, spark, D)
    record = json.loads(Path(Paths.of(cfg).validation_record(D)).read_text())
    verdicts = {g["name"]: g for g in record["gates"]}
    assert not verdicts["coverage"]["passed"] and verdicts["coverage"]["value"] < 0.9
    assert verdicts["score_match"]["passed"] and verdicts["lookup_quality"]["passed"]
    with pytest.raises(registry.PublishError):
        publish.run(cfg, spark, D)
