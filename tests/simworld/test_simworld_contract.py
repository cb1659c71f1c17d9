"""The landing drop follows core/contract.py: layout, exact types, required fields, labels."""

from __future__ import annotations

import datetime as dt
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from simworld_helpers import DAYS, read_day

from core.contract import AD_FIELDS, IMPRESSION_FIELDS, TRUTH_FIELDS, names, required
from core.paths import Paths, local_path
from simworld.generate import INJECTED_FILE

EXPECTED_ARROW = {
    "string": pa.string(), "bigint": pa.int64(), "int": pa.int32(), "double": pa.float64(),
    "date": pa.date32(), "timestamp": pa.timestamp("us", tz="UTC"), "array<int>": pa.list_(pa.int32()),
}


def _check_types(table: pa.Table, fields) -> None:
    assert table.schema.names == names(fields)
    for f in fields:
        got = table.schema.field(f.name).type
        want = EXPECTED_ARROW[f.type]
        if pa.types.is_list(want):
            assert pa.types.is_list(got) and got.value_type == pa.int32(), f"{f.name}: {got}"
        else:
            assert got == want, f"{f.name}: {got} != {want}"


def test_layout_and_success_marker(tiny_world):
    paths = Paths.of(tiny_world)
    for day in DAYS:
        for uri in (paths.landing_impressions(day), paths.landing_ads(day), paths.landing_success(day),
                    paths.truth_day(day)):
            assert os.path.isfile(local_path(uri)), uri
        assert not paths.truth_day(day).startswith(paths.landing + "/")
        success_time = os.path.getmtime(local_path(paths.landing_success(day)))
        assert success_time >= os.path.getmtime(local_path(paths.landing_impressions(day)))
        with open(os.path.join(local_path(paths.landing_day(day)), INJECTED_FILE)) as f:
            report = json.load(f)
        assert report["empty_day"] is False and report["duplicate_id"]["count"] == 0


def test_schemas_are_the_contract_types(tiny_world):
    tables = read_day(tiny_world, DAYS[0])
    _check_types(tables["impressions"], IMPRESSION_FIELDS)
    _check_types(tables["ads"], AD_FIELDS)
    _check_types(tables["truth"], TRUTH_FIELDS)


def test_clean_day_has_no_nulls_valid_labels_and_consistent_time_fields(tiny_world):
    for i, day in enumerate(DAYS):
        tables = read_day(tiny_world, day)
        imps, ads = tables["impressions"], tables["ads"]
        for name in required(IMPRESSION_FIELDS):
            assert imps.column(name).null_count == 0, name
        for name in required(AD_FIELDS):
            assert ads.column(name).null_count == 0, name
        assert set(pc.unique(imps.column("click")).to_pylist()) == {0, 1}
        assert pc.count_distinct(imps.column("impression_id")).as_py() == imps.num_rows
        ts = imps.column("event_ts").to_pandas()
        date = dt.date.fromisoformat(day)
        assert (ts.dt.date == date).all()
        assert (ts.dt.hour.to_numpy() == imps.column("hour").to_numpy()).all()
        assert set(imps.column("weekday").to_pylist()) == {date.weekday()}
        assert pc.min(ads.column("price")).as_py() >= 0
        assert pc.min(ads.column("review_count")).as_py() >= 0
        assert set(pc.is_in(imps.column("ad_id"), value_set=ads.column("ad_id")).to_pylist()) == {True}
        truth = tables["truth"]
        assert truth.column("impression_id").equals(imps.column("impression_id"))
        p = truth.column("p_click").to_numpy()
        assert ((p > 0) & (p < 1)).all()


def test_query_title_match_counts_query_words_in_the_title(tiny_world):
    tables = read_day(tiny_world, DAYS[1])
    imps = tables["impressions"].to_pandas()
    titles = dict(zip(tables["ads"].column("ad_id").to_pylist(), tables["ads"].column("title_words").to_pylist()))
    expected = [sum(w in set(titles[a]) for w in q) for a, q in zip(imps["ad_id"], imps["query_words"])]
    assert imps["query_title_match"].tolist() == expected
    assert imps["query_title_match"].max() >= 1  # queries do hit titles
    assert (imps["query_words"].map(len) == 0).any()  # feeds have no query


def test_mean_ctr_is_close_to_base_ctr(tiny_world):
    base = tiny_world.world.base_ctr
    clicks, truths = [], []
    for day in DAYS:
        tables = read_day(tiny_world, day)
        clicks.append(tables["impressions"].column("click").to_numpy())
        truths.append(tables["truth"].column("p_click").to_numpy())
    # The weekday effect moves a day's CTR by a few percent; 6000 Bernoulli draws by ~0.002.
    assert abs(np.concatenate(truths).mean() - base) < 0.1 * base
    assert abs(np.concatenate(clicks).mean() - base) < 0.35 * base
