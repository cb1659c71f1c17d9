"""Long tails, new and retiring ads, and an ad population that is a function of the ad id."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from simworld_helpers import DAYS, read_day, tiny_cfg

from simworld.generate import generate_day
from simworld.world import active_ads, ads_by_id


def test_ad_traffic_is_long_tailed(tiny_world):
    tables = read_day(tiny_world, DAYS[1])
    counts = np.sort(np.unique(tables["impressions"].column("ad_id").to_numpy(), return_counts=True)[1])[::-1]
    top = max(1, tables["ads"].num_rows // 100)
    # Uniform traffic would give the top 1% of ads about 1% of impressions.
    assert counts[:top].sum() / counts.sum() > 0.10
    users = np.sort(np.unique(tables["impressions"].column("user_id").to_numpy(), return_counts=True)[1])[::-1]
    assert users[:5].sum() / users.sum() > 0.05  # 500 users: uniform would give 1%


def test_new_ads_are_born_every_day_and_shown_while_cold(tiny_world):
    per_day = tiny_world.world.new_ads_per_day
    for day in DAYS:
        tables = read_day(tiny_world, day)
        born = pc.equal(tables["ads"].column("created_date"), dt.date.fromisoformat(day))
        new_ids = tables["ads"].filter(born).column("ad_id").to_numpy()
        assert len(new_ids) == per_day
        shown = np.isin(new_ids, tables["impressions"].column("ad_id").to_numpy())
        assert shown.mean() >= 0.5, f"{day}: only {shown.sum()} of {len(new_ids)} new ads shown"


def test_ad_ids_grow_with_birth_day_and_ads_retire(tiny_world):
    first, last = read_day(tiny_world, DAYS[0])["ads"], read_day(tiny_world, DAYS[-1])["ads"]
    created = first.column("created_date").to_numpy()
    ids = first.column("ad_id").to_numpy()
    assert (np.diff(created[np.argsort(ids)]).astype(int) >= 0).all()
    assert (created < np.datetime64(DAYS[0])).sum() <= tiny_world.world.initial_ads
    retired = set(ids) - set(last.column("ad_id").to_pylist())
    assert retired, "no ad retired in three days with a 10-day mean lifetime"


def test_an_ad_is_the_same_on_every_day_it_lives(tiny_world):
    first, last = read_day(tiny_world, DAYS[0])["ads"], read_day(tiny_world, DAYS[-1])["ads"]
    both = np.intersect1d(first.column("ad_id").to_numpy(), last.column("ad_id").to_numpy())
    assert len(both) > 100
    a = first.filter(pc.is_in(first.column("ad_id"), value_set=pa.array(both)))
    b = last.filter(pc.is_in(last.column("ad_id"), value_set=pa.array(both)))
    assert a.equals(b)


def test_active_ads_of_a_late_day_need_no_earlier_days():
    cfg = tiny_cfg("unused").world
    late = active_ads(cfg, 400)
    assert len(late) > 0 and late.birth_day.max() == 400
    again = ads_by_id(cfg, late.ad_id[::-1])
    assert (again.ad_id == late.ad_id[::-1]).all()
    assert (again.price == late.price[::-1]).all() and (again.noise == late.noise[::-1]).all()


def test_paper_sized_category_tree_runs(tmp_path):
    cfg = tiny_cfg(tmp_path, world__n_categories=3310, world__n_top_categories=40,
                   world__impressions_per_day=500)
    summary = generate_day(cfg, DAYS[0])
    ads = read_day(cfg, DAYS[0])["ads"]
    assert summary["impressions"] == 500
    assert pc.max(ads.column("category_id")).as_py() < 3310
    assert pc.count_distinct(ads.column("category_id")).as_py() > 200
    assert pc.max(ads.column("parent_category_id")).as_py() < 40
