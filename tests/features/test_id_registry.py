"""Stable ids through two consecutive run dates of the features job, and the warm start between them.

Window of 2 days, min_count 2. Run date DAYS[2] reads days 0-1, run date DAYS[3] days 1-2:

  * users: 100 leads days 0-1 and 101 leads day 2, so their frequency ranks (the run's ids) swap;
    102 appears on day 0 only (retired: inactive on DAYS[3]); 103 is new on day 2;
  * categories (through the ads): category 11 (odd ads) leads days 0-1, category 10 (even ads)
    day 2; category 12 (ad 5) is new on day 2; category 13 (ad 7) appears on day 0 only.
"""

from __future__ import annotations

import datetime as dt
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from pyspark.sql import functions as F

from core.config import load_config
from core.paths import Paths
from features import tables
from features.encoder import VOCAB_FIELDS
from features.spec import MULTI_FIELDS, SINGLE_FIELDS, FeatureSpec
from models.ctr import CTRModel
from models.train import save_model
from models.warm_start import id_keyed_tensors, warm_start
from spark_jobs import build_window, id_registry
from tests.features.bronze_fixture import D0, JOINED_DDL, ad, as_tuples, impression, joined, write_bronze

DAYS = [D0 + dt.timedelta(days=k) for k in range(4)]
SMALL_MODEL = {"model.variant": "cscnn", "model.deep_dims": [8], "model.head_dims": [4], "model.visual_dim": 4,
               "model.prior_channels": 2, "model.prior_spatial": 2, "model.attention_layers": 1}
# (user, ad) of each impression per day
PLAN = {
    0: [(100, 1)] * 5 + [(101, 2)] * 2 + [(102, 7)] * 2,
    1: [(100, 3)] * 5 + [(101, 4)] * 2,
    2: [(101, 2)] * 9 + [(100, 1)] * 2 + [(103, 5)] * 3,
    3: [(101, 2)] * 3 + [(104, 6)] * 2,
}
CATEGORY = {1: 11, 2: 10, 3: 11, 4: 10, 5: 12, 6: 10, 7: 13}


def day_rows(k: int) -> tuple[list[dict], list[dict]]:
    day = DAYS[k]
    imps = [impression(i, day, ad_id=a, user_id=u, click=int(i % 3 == 0)) for i, (u, a) in enumerate(PLAN[k])]
    ads = [ad(a, day, category_id=CATEGORY[a]) for a in sorted({a for _, a in PLAN[k]})]
    return imps, ads


@pytest.fixture(scope="module")
def runs(spark, tmp_path_factory):
    cfg = load_config(overrides={"storage.root": str(tmp_path_factory.mktemp("stable_ids")),
                                 "features.window_days": 2, "features.min_count": 2, "features.group_size": 4,
                                 "spark.shuffle_partitions": 1})
    rows = [day_rows(k) for k in range(4)]
    write_bronze(spark, cfg, [r for imps, _ in rows for r in imps], [r for _, ads in rows for r in ads])
    registry_uri = Paths.of(cfg).table(tables.ID_REGISTRY_TABLE)
    first = build_window.run(cfg, spark, DAYS[2])
    registry1 = spark.read.format("delta").load(registry_uri).toPandas()
    second = build_window.run(cfg, spark, DAYS[3])
    registry2 = spark.read.format("delta").load(registry_uri).toPandas()
    encoders = [tables.load_encoder(cfg, spark, d) for d in (DAYS[2], DAYS[3])]
    return cfg, first, second, registry1, registry2, encoders


def _ids(registry, field: str) -> dict[int, int]:
    part = registry[registry["field"] == field]
    return dict(zip(part["value"].tolist(), part["id"].tolist()))


def _run_id(encoder, field: str, value: int) -> int:
    return int(encoder.encode_single(field, value))


def test_a_value_keeps_its_id_and_new_values_get_the_next_ones(runs):
    _cfg, first, second, registry1, registry2, _ = runs
    users1, users2 = _ids(registry1, "user_id"), _ids(registry2, "user_id")
    assert users1 == {100: 1, 101: 2, 102: 3, 103: 4}  # days 0-2 stored by the first run: by (first day, value)
    assert users2 == {**users1, 104: 5}  # the second run stored day 3 only, and kept every id
    assert _ids(registry2, "category_id") == {10: 1, 11: 2, 13: 3, 12: 4}
    assert first["row_days_written"] == [d.isoformat() for d in DAYS[0:3]]
    assert second["row_days_written"] == [DAYS[3].isoformat()]  # day 2 was encoded once, as run 1's holdout
    assert not registry2.duplicated(["field", "value"]).any() and not registry2.duplicated(["field", "id"]).any()
    for field in VOCAB_FIELDS:  # ids 1..n per field, none skipped
        assert set(registry2[registry2["field"] == field]["id"]) == set(range(1, len(_ids(registry2, field)) + 1))


def test_the_ranks_swap_and_the_retired_values_become_inactive(runs):
    *_, registry2, (e1, e2) = runs
    assert (_run_id(e1, "user_id", 100), _run_id(e1, "user_id", 101)) == (1, 2)
    assert (_run_id(e2, "user_id", 100), _run_id(e2, "user_id", 101)) == (2, 1)
    assert _run_id(e1, "user_id", 102) == 3 and _run_id(e2, "user_id", 102) == 0  # inactive: OOV
    assert _run_id(e1, "user_id", 103) == 0 and _run_id(e2, "user_id", 103) == 3
    for encoder in (e1, e2):  # every active value names its registry id
        for field in VOCAB_FIELDS:
            values, _ = encoder.vocab[field]
            assert encoder.stable_ids[field].tolist() == [_ids(registry2, field)[v] for v in values.tolist()]


def test_each_examples_table_holds_its_runs_ids(spark, runs):
    """Day 2 is stored once; run 1 (holdout) and run 2 (train) read it with their own ids."""
    cfg, *_, (e1, e2) = runs
    for run_date, encoder, split in ((DAYS[2], e1, "holdout"), (DAYS[3], e2, "train")):
        got = (tables.read_examples(cfg, spark, run_date).where(F.col("split") == split)
               .where(F.col("impression_id").startswith(f"{DAYS[2]:%m%d}-"))
               .select("impression_id", "f_user_id", "category_idx").toPandas().set_index("impression_id"))
        assert len(got) == len(PLAN[2])
        for i, (user, ad_id) in enumerate(PLAN[2]):
            row = got.loc[f"{DAYS[2]:%m%d}-{i}"]
            assert row["f_user_id"] == _run_id(encoder, "user_id", user)
            assert row["category_idx"] == _run_id(encoder, "category_id", CATEGORY[ad_id])


def _spec(encoder) -> FeatureSpec:
    return FeatureSpec(single={n: encoder.vocab_size(n) for n in SINGLE_FIELDS},
                       multi={n: encoder.vocab_size(n) for n in MULTI_FIELDS})


def test_warm_start_between_the_two_run_dates_follows_the_values(runs, tmp_path):
    """Before any training step of run 2: each surviving value's embedding row and category prior
    equal run 1's row of that value, new values keep their fresh rows, nothing is copied by position."""
    *_, (e1, e2) = runs
    model_cfg = load_config(overrides=SMALL_MODEL).model
    torch.manual_seed(1)
    day1 = CTRModel(_spec(e1), model_cfg)
    with torch.no_grad():
        for p in day1.parameters():
            p.normal_()
    save_model(day1, tmp_path / "model.pt")
    torch.manual_seed(2)
    day2 = CTRModel(_spec(e2), model_cfg)
    fresh = {k: v.clone() for k, v in day2.state_dict().items()}
    result = warm_start(day2, tmp_path / "model.pt", old_encoder=e1, new_encoder=e2)
    old, new = day1.state_dict(), day2.state_dict()
    keyed = id_keyed_tensors(day2)
    assert any(n.endswith("channel_prior.weight") for n in keyed) and any(n.endswith("spatial_prior.weight")
                                                                          for n in keyed)
    checked_moved = 0
    for tensor, field in keyed.items():
        if field not in VOCAB_FIELDS:
            continue
        values1 = set(e1.vocab[field][0].tolist())
        for value in e2.vocab[field][0].tolist():
            id2 = _run_id(e2, field, value)
            if value in values1:
                id1 = _run_id(e1, field, value)
                assert torch.equal(new[tensor][id2], old[tensor][id1]), (tensor, value)
                if id1 != id2 and id2 < old[tensor].shape[0]:
                    assert not torch.equal(new[tensor][id2], old[tensor][id2]), (tensor, value)  # not by position
                    checked_moved += 1
            else:
                assert torch.equal(new[tensor][id2], fresh[tensor][id2]), (tensor, value)
    assert checked_moved >= 4  # users 100/101 and categories 10/11 swapped ranks
    users = result.tables["embedding.single.user_id.weight"]
    assert users == {"carried": 3, "new": 1, "dropped": 1}  # OOV, 100, 101 carried; 103 new; 102 dropped


def test_runs_registering_at_once_never_share_an_id(spark, tmp_path):
    """Four registrations of overlapping value sets on four threads (one Spark session): every
    value gets exactly one id and ids stay 1..n; a MERGE that lost the race is retried."""
    paths = Paths.of(load_config(overrides={"storage.root": str(tmp_path)}))
    seed = [impression(0, D0, ad_id=1, user_id=1)]
    id_registry.register(spark, paths, spark.createDataFrame(as_tuples(joined(seed), JOINED_DDL), JOINED_DDL))

    def rows(k: int):
        users = range(10 * k, 10 * k + 15)  # each set overlaps the next one by 5 users
        return spark.createDataFrame(as_tuples(joined([impression(i, D0, ad_id=1, user_id=u)
                                                       for i, u in enumerate(users)]), JOINED_DDL), JOINED_DDL)

    frames = [rows(k) for k in range(4)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda df: id_registry.register(spark, paths, df), frames))
    users = _ids(id_registry.read_registry(spark, paths).toPandas(), "user_id")
    assert set(users) == {1, *range(0, 45)}
    assert sorted(users.values()) == list(range(1, len(users) + 1))
