"""One day of impressions: who saw which ad when, with which query and history, and the clicks.

Traffic reaches an ad through three channels: global popularity (Zipf over ads), the user's
interest categories (popularity within the category), and exploration of ads born in the last
COLD_AGE_DAYS days (so cold ads get impressions on their first days). Volume follows the weekday,
time of day a diurnal curve. Every sub-step draws from its own (seed, day, purpose) stream.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

from core.config import WorldConfig
from simworld import clickmodel
from simworld.seeding import stream
from simworld.world import COLD_AGE_DAYS, INTERESTS, TOPIC_WORDS, AdTable, categories, users, zipf_probs

GLOBAL_SHARE = 0.69  # impressions chosen by global ad popularity
INTEREST_SHARE = 0.25  # ... by the user's interest categories; the rest explore cold ads
SEARCH_SHARE = 0.6  # impressions answering a search query (the rest are feeds, no query)
QUERY_MAX = 4  # longest query, in words
QUERY_FROM_TOPIC = 0.5  # share of query words taken from the shown ad's category topic
# Monday..Sunday volume factors.
WEEKDAY_VOLUME = np.array([1.00, 0.98, 0.97, 1.00, 1.04, 1.08, 1.03])
# Impressions by hour of day: a night trough, a midday bump and an evening peak.
_HOURS = np.arange(24)
HOUR_SHARE = 0.3 + np.exp(-(((_HOURS - 20) / 4.0) ** 2)) + 0.5 * np.exp(-(((_HOURS - 12) / 3.0) ** 2))
HOUR_SHARE = HOUR_SHARE / HOUR_SHARE.sum()
US_PER_HOUR = 3_600_000_000


@dataclass(frozen=True, eq=False)
class DayTraffic:
    """Column arrays of one day's impressions, ordered by event time (all of length n)."""

    event_ts_us: np.ndarray  # (n,) int64 microseconds since the Unix epoch, UTC
    user_id: np.ndarray  # (n,) int64
    ad_pos: np.ndarray  # (n,) int64 row of the shown ad in the day's AdTable
    ad_id: np.ndarray  # (n,) int64
    user_location: np.ndarray  # (n,) int32
    user_price_sensitivity: np.ndarray  # (n,) int32
    hour: np.ndarray  # (n,) int32
    query_words: np.ndarray  # (n, QUERY_MAX) int32, -1 padded
    query_len: np.ndarray  # (n,) int32
    query_title_match: np.ndarray  # (n,) int32
    hist_categories: np.ndarray  # (n, INTERESTS) int32; the first hist_len[:, 0] are used
    hist_brands: np.ndarray  # (n, INTERESTS) int32; the first hist_len[:, 1]
    hist_shops: np.ndarray  # (n, INTERESTS) int32; the first hist_len[:, 2]
    hist_len: np.ndarray  # (n, 3) int32
    p_click: np.ndarray  # (n,) float64 true click probability
    click: np.ndarray  # (n,) int32

    def __len__(self) -> int:
        return len(self.ad_id)


def day_volume(cfg: WorldConfig, day: dt.date) -> int:
    """Number of impressions on `day` (impressions_per_day times the weekday factor)."""
    return int(round(cfg.impressions_per_day * WEEKDAY_VOLUME[day.weekday()]))


def _pick_ads(cfg: WorldConfig, day_index: int, ads: AdTable, interest_cat: np.ndarray) -> np.ndarray:
    """Row in `ads` of the ad shown by each impression, shape (n,)."""
    rng = stream(cfg.seed, "pick_ads", day_index)
    n = len(interest_cat)
    channel = rng.random(n)
    u = rng.random(n)
    cdf = np.cumsum(ads.popularity)
    pos = np.minimum(np.searchsorted(cdf, u * cdf[-1], side="right"), len(ads) - 1)

    # Popularity within the user's interest category; a category without live ads falls back.
    order = np.argsort(ads.category, kind="stable")
    sorted_cat = ads.category[order]
    cw = np.cumsum(ads.popularity[order])
    lo = np.searchsorted(sorted_cat, interest_cat, side="left")
    hi = np.searchsorted(sorted_cat, interest_cat, side="right")
    by_interest = (channel >= GLOBAL_SHARE) & (channel < GLOBAL_SHARE + INTEREST_SHARE) & (hi > lo)
    base = np.where(lo > 0, cw[np.maximum(lo - 1, 0)], 0.0)
    top = cw[np.maximum(hi - 1, 0)]
    within = np.clip(np.searchsorted(cw, base + u * (top - base), side="right"), lo, np.maximum(hi - 1, lo))
    pos = np.where(by_interest, order[np.minimum(within, len(ads) - 1)], pos)

    cold = np.flatnonzero((ads.birth_day >= 0) & (day_index - ads.birth_day <= COLD_AGE_DAYS))
    if len(cold):
        explore = channel >= GLOBAL_SHARE + INTEREST_SHARE
        pos = np.where(explore, cold[np.minimum((u * len(cold)).astype(np.int64), len(cold) - 1)], pos)
    return pos.astype(np.int64)


def simulate_day(cfg: WorldConfig, day: dt.date, day_index: int, ads: AdTable) -> DayTraffic:
    """The day's impressions over the live ads `ads` (clean: no injected defects)."""
    n = day_volume(cfg, day) if len(ads) else 0
    cats = categories(cfg)
    people = users(cfg)

    rng = stream(cfg.seed, "users_of_day", day_index)
    user_idx = np.minimum(np.searchsorted(people.popularity_cdf, rng.random(n) * people.popularity_cdf[-1],
                                          side="right"), cfg.n_users - 1)
    interest_cat = people.interest_categories[user_idx, rng.integers(0, INTERESTS, size=n)]
    ad_pos = _pick_ads(cfg, day_index, ads, interest_cat) if n else np.zeros(0, dtype=np.int64)
    ad_cat = ads.category[ad_pos]

    rng = stream(cfg.seed, "time", day_index)
    hour = rng.choice(24, size=n, p=HOUR_SHARE).astype(np.int32)
    day_start_us = int((dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc)
                        - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)).total_seconds()) * 1_000_000
    ts = day_start_us + hour.astype(np.int64) * US_PER_HOUR + (rng.random(n) * US_PER_HOUR).astype(np.int64)

    rng = stream(cfg.seed, "queries", day_index)
    query_len = np.where(rng.random(n) < SEARCH_SHARE, rng.integers(1, QUERY_MAX + 1, size=n), 0).astype(np.int32)
    topic_word = cats.topics[ad_cat[:, None], rng.integers(0, TOPIC_WORDS, size=(n, QUERY_MAX))]
    general = rng.choice(cfg.query_vocab, size=(n, QUERY_MAX), p=zipf_probs(cfg.query_vocab, cfg.zipf_queries))
    use_topic = (rng.random((n, QUERY_MAX)) < QUERY_FROM_TOPIC) & (topic_word < cfg.query_vocab)
    query = np.where(use_topic, topic_word, general).astype(np.int32)
    query[np.arange(QUERY_MAX)[None, :] >= query_len[:, None]] = -1
    title = ads.title[ad_pos]  # (n, TITLE_MAX), -1 padded
    in_title = (title[:, None, :] == query[:, :, None]) & (query[:, :, None] >= 0)  # (n, QUERY_MAX, TITLE_MAX)
    match = in_title.any(axis=2).sum(axis=1).astype(np.int32)

    rng = stream(cfg.seed, "history", day_index)
    hist_len = rng.integers(0, INTERESTS + 1, size=(n, 3)).astype(np.int32)
    hist_cats = people.interest_categories[user_idx]  # (n, INTERESTS)
    used = np.arange(INTERESTS)[None, :] < hist_len[:, :1]  # (n, INTERESTS)
    hist_match = ((hist_cats == ad_cat[:, None]) & used).any(axis=1)

    sensitivity = people.price_sensitivity[user_idx]
    z = (people.bias[user_idx] + ads.quality[ad_pos]
         - clickmodel.PRICE_SENSITIVITY_WEIGHT * (sensitivity - 2) * ads.price_z[ad_pos]
         + clickmodel.QUERY_MATCH_WEIGHT * np.minimum(match, clickmodel.QUERY_MATCH_CAP)
         + clickmodel.HISTORY_MATCH_WEIGHT * hist_match
         + clickmodel.HOUR_CTR[hour]
         + clickmodel.visual_logit(cfg, ads)[ad_pos]).astype(np.float64)
    intercept = clickmodel.calibrate_intercept(z, cfg.base_ctr)
    p_click = clickmodel.sigmoid(intercept + z + clickmodel.WEEKDAY_CTR[day.weekday()])
    click = (stream(cfg.seed, "clicks", day_index).random(n) < p_click).astype(np.int32)

    order = np.argsort(ts, kind="stable")
    return DayTraffic(
        event_ts_us=ts[order], user_id=(user_idx[order] + 1).astype(np.int64), ad_pos=ad_pos[order],
        ad_id=ads.ad_id[ad_pos[order]], user_location=people.location[user_idx[order]],
        user_price_sensitivity=sensitivity[order], hour=hour[order], query_words=query[order],
        query_len=query_len[order], query_title_match=match[order], hist_categories=hist_cats[order],
        hist_brands=people.interest_brands[user_idx[order]], hist_shops=people.interest_shops[user_idx[order]],
        hist_len=hist_len[order], p_click=p_click[order], click=click[order],
    )
