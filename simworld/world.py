"""The static parts of the simulated world: category tree, users and the ad population.

Everything here is a deterministic function of the WorldConfig:
- the category tree (leaf shares of the ads Zipf with exponent `zipf_categories`), per-category
  look (palette, texture) and taste (the one colour x quadrant conjunction that makes an image
  attractive in that category; with probability `sibling_share` a leaf takes its parent's, which
  its sharing siblings have too), title-word topics, price levels;
- each brand's attractive logo (colour x corner), drawn and clicked only with world.brand_logos;
- users (profile, interests) keyed by user id;
- ads keyed by ad id. Ad ids increase with birth day: ids 1..initial_ads form the initial catalog
  (born before day 0, all alive on day 0), then `new_ads_per_day` ids are born every day. An ad's
  attributes and lifetime come from the random stream of its id block, so the ads alive on day D
  are computed without simulating earlier days.

Latent visual properties (brightness, positional mark, category conjunction) live in AdTable
next to the contract fields; only the contract fields are ever written to landing.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np

from core.config import WorldConfig
from simworld.seeding import stream

AD_BLOCK = 4096  # ads per random-stream block (ids b*AD_BLOCK+1 .. (b+1)*AD_BLOCK)
TITLE_MAX = 10  # longest title, in words
TOPIC_WORDS = 30  # words in a category's title topic
INTERESTS = 3  # categories / brands / shops a user tends to click
NOISE_RES = 8  # side of the low-resolution per-ad noise image
COLD_AGE_DAYS = 2  # ads aged 0..COLD_AGE_DAYS days get exploration traffic

# Saturated colours of the category-specific conjunction blobs (RGB in [0, 1]); backgrounds are
# muted so that these stay distinct from every category palette.
BLOB_COLOURS = np.array([
    [0.95, 0.10, 0.10], [0.10, 0.85, 0.15], [0.15, 0.25, 0.95], [0.95, 0.90, 0.10],
    [0.90, 0.10, 0.85], [0.10, 0.90, 0.90], [1.00, 0.55, 0.05], [0.50, 0.10, 0.75],
], dtype=np.float32)
N_QUADRANTS = 4  # 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right

# How an ad's blob relates to its category's target conjunction (probabilities sum to 1).
BLOB_TARGET, BLOB_DECOY_COLOUR, BLOB_DECOY_REGION, BLOB_OTHER = 0, 1, 2, 3
BLOB_KIND_P = np.array([0.30, 0.25, 0.25, 0.20])
MARK_P = 0.5  # share of ads with the category-independent positional mark
N_CORNERS = 4  # brand logos: 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right


def zipf_probs(n: int, exponent: float) -> np.ndarray:
    """Finite Zipf: P(rank r) proportional to r^-exponent, r = 1..n; shape (n,)."""
    p = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    return p / p.sum()


def hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB for arrays of equal shape (...,); returns (..., 3) float32."""
    i = np.floor(h * 6.0).astype(np.int64) % 6
    f = h * 6.0 - np.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    choices = [np.stack(c, -1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))]
    out = np.zeros(h.shape + (3,), dtype=np.float64)
    for k, c in enumerate(choices):
        out[i == k] = c[i == k]
    return out.astype(np.float32)


@dataclass(frozen=True, eq=False)
class Categories:
    parent: np.ndarray  # (K,) int32 parent category of each leaf
    weight: np.ndarray  # (K,) float64 share of ads per leaf
    log_price_mu: np.ndarray  # (K,) mean log price
    palette: np.ndarray  # (K, 3) float32 muted background colour
    texture_angle: np.ndarray  # (K,) stripe orientation (radians)
    texture_freq: np.ndarray  # (K,) stripe cycles per image
    target_colour: np.ndarray  # (K,) int index into BLOB_COLOURS
    target_quadrant: np.ndarray  # (K,) int quadrant of the attractive blob
    topics: np.ndarray  # (K, TOPIC_WORDS) int32 title-word topic


@dataclass(frozen=True, eq=False)
class Users:
    popularity_cdf: np.ndarray  # (U,) cumulative Zipf share over users (by user index)
    location: np.ndarray  # (U,) int32
    price_sensitivity: np.ndarray  # (U,) int32 in 0..4
    bias: np.ndarray  # (U,) float32 click propensity
    interest_categories: np.ndarray  # (U, INTERESTS) int32
    interest_brands: np.ndarray  # (U, INTERESTS) int32
    interest_shops: np.ndarray  # (U, INTERESTS) int32


@dataclass(frozen=True, eq=False)
class AdTable:
    """Column arrays of a set of ads (all of equal length n)."""

    ad_id: np.ndarray  # (n,) int64
    birth_day: np.ndarray  # (n,) int32 day index (< 0: initial catalog)
    death_day: np.ndarray  # (n,) int32 first day the ad is no longer alive
    category: np.ndarray  # (n,) int32 leaf category
    brand: np.ndarray  # (n,) int32
    shop: np.ndarray  # (n,) int32
    price: np.ndarray  # (n,) float64
    price_z: np.ndarray  # (n,) float32 log price standardised within the category
    review_count: np.ndarray  # (n,) int32
    title: np.ndarray  # (n, TITLE_MAX) int32 word ids, -1 padded
    title_len: np.ndarray  # (n,) int32
    quality: np.ndarray  # (n,) float32 latent non-visual quality
    popularity: np.ndarray  # (n,) float64 Zipf-distributed traffic weight
    brightness: np.ndarray  # (n,) float32 in [0, 1]: generic visual cue
    blob_kind: np.ndarray  # (n,) int8 BLOB_* relation to the category's target conjunction
    blob_colour: np.ndarray  # (n,) int8 index into BLOB_COLOURS
    blob_quadrant: np.ndarray  # (n,) int8
    blob_jitter: np.ndarray  # (n, 2) float32 blob centre offset inside its quadrant
    mark_present: np.ndarray  # (n,) bool
    mark_xy: np.ndarray  # (n, 2) float32 mark centre (x, y) in [0, 1]
    texture_phase: np.ndarray  # (n,) float32
    noise: np.ndarray  # (n, NOISE_RES, NOISE_RES, 3) float32 per-ad texture noise
    logo_kind: np.ndarray  # (n,) int8 BLOB_* relation to the brand's target logo (drawn with world.brand_logos)
    logo_colour: np.ndarray  # (n,) int8 index into BLOB_COLOURS
    logo_corner: np.ndarray  # (n,) int8

    def __len__(self) -> int:
        return len(self.ad_id)

    def take(self, idx: np.ndarray) -> "AdTable":
        """Rows `idx` (an index or boolean mask array)."""
        return AdTable(**{f.name: getattr(self, f.name)[idx] for f in dataclasses.fields(self)})

    @staticmethod
    def concat(tables: list["AdTable"]) -> "AdTable":
        return AdTable(**{f.name: np.concatenate([getattr(t, f.name) for t in tables])
                          for f in dataclasses.fields(AdTable)})

    # Latent visual components (what the click model uses; never written to landing) --------
    @property
    def visual_generic(self) -> np.ndarray:
        """Brightness cue in [-1, 1], shape (n,)."""
        return 2.0 * self.brightness - 1.0

    @property
    def visual_position(self) -> np.ndarray:
        """Positional mark: +1 in the top third, -1 in the bottom third, 0 elsewhere or absent; (n,)."""
        y = self.mark_xy[:, 1]
        effect = np.where(y < 1 / 3, 1.0, np.where(y > 2 / 3, -1.0, 0.0))
        return np.where(self.mark_present, effect, 0.0).astype(np.float32)

    @property
    def visual_category(self) -> np.ndarray:
        """1 where the ad shows its category's target colour x quadrant conjunction; (n,)."""
        return (self.blob_kind == BLOB_TARGET).astype(np.float32)

    @property
    def visual_brand(self) -> np.ndarray:
        """1 where the ad's logo is its brand's target colour x corner conjunction; (n,). Only
        meaningful in worlds that draw logos (world.brand_logos)."""
        return (self.logo_kind == BLOB_TARGET).astype(np.float32)


def ad_id_range(cfg: WorldConfig, day_index: int) -> int:
    """Largest ad id born on or before `day_index` (ids are 1..that)."""
    return cfg.initial_ads + (day_index + 1) * cfg.new_ads_per_day


def birth_days(cfg: WorldConfig, ad_id: np.ndarray) -> np.ndarray:
    """Birth day index of each ad id: new ads are born `new_ads_per_day` a day from day 0; the
    initial catalog was born at the same rate before day 0 (oldest id first); (n,) int32."""
    rate = max(cfg.new_ads_per_day, 1)
    initial = ad_id <= cfg.initial_ads
    before = -1 - (cfg.initial_ads - ad_id) // rate
    after = (ad_id - cfg.initial_ads - 1) // rate
    return np.where(initial, before, after).astype(np.int32)


@functools.lru_cache(maxsize=8)
def categories(cfg: WorldConfig) -> Categories:
    """The category tree and each category's look and taste."""
    rng = stream(cfg.seed, "categories")
    k, top = cfg.n_categories, cfg.n_top_categories
    parent = np.concatenate([np.arange(top), rng.integers(0, top, size=k - top)]).astype(np.int32)
    weight = rng.permutation(zipf_probs(k, cfg.zipf_categories))
    log_price_mu = rng.normal(3.5, 0.9, size=k)
    # Siblings share a hue family; leaves differ in hue offset, saturation and value.
    hue = (parent / top + rng.uniform(-0.08, 0.08, size=k)) % 1.0
    palette = hsv_to_rgb(hue, rng.uniform(0.25, 0.45, size=k), rng.uniform(0.45, 0.70, size=k))
    texture_angle = (parent * np.pi / top + rng.uniform(-0.3, 0.3, size=k)).astype(np.float32)
    texture_freq = rng.uniform(1.5, 6.0, size=k).astype(np.float32)
    target = rng.integers(0, len(BLOB_COLOURS) * N_QUADRANTS, size=k)
    # Siblings that share take their parent's conjunction (a stream of its own, so that worlds
    # with sibling_share 0 are the worlds of before the knob).
    tree = stream(cfg.seed, "category-tree")
    parent_target = tree.integers(0, len(BLOB_COLOURS) * N_QUADRANTS, size=top)
    target = np.where(tree.random(k) < cfg.sibling_share, parent_target[parent], target)
    # Topic words favour low (frequent) ids so that many of them are also query words.
    topics = np.floor(cfg.title_vocab * rng.random((k, TOPIC_WORDS)) ** 2).astype(np.int32)
    return Categories(parent=parent, weight=weight, log_price_mu=log_price_mu, palette=palette,
                      texture_angle=texture_angle, texture_freq=texture_freq,
                      target_colour=(target // N_QUADRANTS).astype(np.int8),
                      target_quadrant=(target % N_QUADRANTS).astype(np.int8), topics=topics)


@functools.lru_cache(maxsize=8)
def brand_targets(cfg: WorldConfig) -> tuple[np.ndarray, np.ndarray]:
    """Each brand's attractive logo: (colour index into BLOB_COLOURS, corner), each (n_brands,) int8."""
    rng = stream(cfg.seed, "brand-logos")
    target = rng.integers(0, len(BLOB_COLOURS) * N_CORNERS, size=cfg.n_brands)
    return (target // N_CORNERS).astype(np.int8), (target % N_CORNERS).astype(np.int8)


@functools.lru_cache(maxsize=8)
def users(cfg: WorldConfig) -> Users:
    """Every user's profile; user id = index + 1."""
    rng = stream(cfg.seed, "users")
    cats = categories(cfg)
    n = cfg.n_users
    share = np.empty(n)
    share[rng.permutation(n)] = zipf_probs(n, cfg.zipf_users)  # rank -> a random user index
    location = rng.permutation(cfg.n_locations)[rng.choice(cfg.n_locations, size=n,
                                                            p=zipf_probs(cfg.n_locations, 0.8))]
    sensitivity = rng.choice(5, size=n, p=[0.15, 0.25, 0.30, 0.20, 0.10])
    return Users(
        popularity_cdf=np.cumsum(share),
        location=location.astype(np.int32),
        price_sensitivity=sensitivity.astype(np.int32),
        bias=rng.normal(0.0, 0.4, size=n).astype(np.float32),
        interest_categories=rng.choice(cfg.n_categories, size=(n, INTERESTS), p=cats.weight).astype(np.int32),
        interest_brands=rng.choice(cfg.n_brands, size=(n, INTERESTS),
                                   p=zipf_probs(cfg.n_brands, 1.0)).astype(np.int32),
        interest_shops=rng.choice(cfg.n_shops, size=(n, INTERESTS),
                                  p=zipf_probs(cfg.n_shops, 1.0)).astype(np.int32),
    )


@functools.lru_cache(maxsize=32)
def ad_block(cfg: WorldConfig, block: int) -> AdTable:
    """All ads of id block `block` (ids block*AD_BLOCK+1 .. (block+1)*AD_BLOCK), alive or not."""
    rng = stream(cfg.seed, "ads", block)
    cats = categories(cfg)
    n = AD_BLOCK
    ad_id = np.arange(block * n + 1, (block + 1) * n + 1, dtype=np.int64)
    birth = birth_days(cfg, ad_id)
    # Exponential lifetime; the initial catalog's residual lifetime from day 0 (memoryless).
    life = 1 + np.floor(rng.exponential(cfg.mean_ad_lifetime_days, size=n)).astype(np.int32)
    death = np.where(birth < 0, 0, birth) + life

    category = rng.choice(cfg.n_categories, size=n, p=cats.weight).astype(np.int32)
    brand = ((cats.parent[category].astype(np.int64) * 7919
              + rng.choice(cfg.n_brands, size=n, p=zipf_probs(cfg.n_brands, 1.0))) % cfg.n_brands)
    shop = rng.choice(cfg.n_shops, size=n, p=zipf_probs(cfg.n_shops, 1.0))
    price_z = rng.normal(0.0, 1.0, size=n)
    price = np.round(np.exp(cats.log_price_mu[category] + 0.6 * price_z), 2)
    quality = rng.normal(0.0, 0.5, size=n)
    review_count = np.maximum(np.floor(np.exp(rng.normal(2.0 + 0.8 * quality, 1.2))) - 1, 0)
    title_len = rng.integers(5, TITLE_MAX + 1, size=n)
    from_topic = rng.random((n, TITLE_MAX)) < 0.7
    topic_pick = cats.topics[category[:, None], rng.integers(0, TOPIC_WORDS, size=(n, TITLE_MAX))]
    general = rng.choice(cfg.title_vocab, size=(n, TITLE_MAX), p=zipf_probs(cfg.title_vocab, 1.0))
    title = np.where(from_topic, topic_pick, general)
    title[np.arange(TITLE_MAX)[None, :] >= title_len[:, None]] = -1
    # Popularity u^-s gives rank-r weights ~ (r/n)^-s: Zipf with exponent zipf_ads; the floor
    # on u keeps one freak draw from taking a whole day's traffic.
    u = np.maximum(rng.random(n), 0.25 / (cfg.initial_ads + cfg.new_ads_per_day * cfg.mean_ad_lifetime_days))
    popularity = u ** -cfg.zipf_ads

    brightness = rng.random(n)
    blob_kind = rng.choice(4, size=n, p=BLOB_KIND_P).astype(np.int8)
    n_col, n_quad = len(BLOB_COLOURS), N_QUADRANTS
    # Decoys share exactly one half of the conjunction; "other" shares neither.
    other_colour = (cats.target_colour[category] + rng.integers(1, n_col, size=n)) % n_col
    other_quadrant = (cats.target_quadrant[category] + rng.integers(1, n_quad, size=n)) % n_quad
    keeps_colour = np.isin(blob_kind, (BLOB_TARGET, BLOB_DECOY_COLOUR))
    keeps_quadrant = np.isin(blob_kind, (BLOB_TARGET, BLOB_DECOY_REGION))
    blob_colour = np.where(keeps_colour, cats.target_colour[category], other_colour).astype(np.int8)
    blob_quadrant = np.where(keeps_quadrant, cats.target_quadrant[category], other_quadrant).astype(np.int8)
    # Brand logos relate to the brand's target as blobs to the category's (a stream of their own,
    # so that worlds without logos are the worlds of before the knob).
    logos = stream(cfg.seed, "logos", block)
    brand_colour, brand_corner = brand_targets(cfg)
    logo_kind = logos.choice(4, size=n, p=BLOB_KIND_P).astype(np.int8)
    other_logo_colour = (brand_colour[brand] + logos.integers(1, n_col, size=n)) % n_col
    other_corner = (brand_corner[brand] + logos.integers(1, N_CORNERS, size=n)) % N_CORNERS
    logo_colour = np.where(np.isin(logo_kind, (BLOB_TARGET, BLOB_DECOY_COLOUR)), brand_colour[brand], other_logo_colour)
    logo_corner = np.where(np.isin(logo_kind, (BLOB_TARGET, BLOB_DECOY_REGION)), brand_corner[brand], other_corner)

    return AdTable(
        ad_id=ad_id, birth_day=birth, death_day=death.astype(np.int32), category=category,
        brand=brand.astype(np.int32), shop=shop.astype(np.int32), price=price,
        price_z=price_z.astype(np.float32), review_count=review_count.astype(np.int32),
        title=title.astype(np.int32), title_len=title_len.astype(np.int32),
        quality=quality.astype(np.float32), popularity=popularity,
        brightness=brightness.astype(np.float32), blob_kind=blob_kind,
        blob_colour=blob_colour, blob_quadrant=blob_quadrant,
        blob_jitter=rng.uniform(-0.08, 0.08, size=(n, 2)).astype(np.float32),
        mark_present=rng.random(n) < MARK_P,
        mark_xy=rng.uniform(0.1, 0.9, size=(n, 2)).astype(np.float32),
        texture_phase=rng.uniform(0, 2 * np.pi, size=n).astype(np.float32),
        noise=rng.normal(0.0, 1.0, size=(n, NOISE_RES, NOISE_RES, 3)).astype(np.float32),
        logo_kind=logo_kind, logo_colour=logo_colour.astype(np.int8), logo_corner=logo_corner.astype(np.int8),
    )


def ads_by_id(cfg: WorldConfig, ad_ids: np.ndarray) -> AdTable:
    """The ads with the given ids (each >= 1), in the given order."""
    ad_ids = np.asarray(ad_ids, dtype=np.int64)
    if len(ad_ids) and ad_ids.min() < 1:
        raise ValueError(f"ad ids start at 1; got {int(ad_ids.min())}")
    blocks = (ad_ids - 1) // AD_BLOCK
    uniq = np.unique(blocks)
    table = AdTable.concat([ad_block(cfg, int(b)) for b in uniq]) if len(uniq) else ad_block(cfg, 0).take(
        np.zeros(0, dtype=np.int64))
    offset = np.searchsorted(uniq, blocks) * AD_BLOCK + (ad_ids - 1) % AD_BLOCK
    return table.take(offset)


def active_ads(cfg: WorldConfig, day_index: int) -> AdTable:
    """Ads alive on day `day_index` (birth <= day < death), ordered by ad id."""
    if day_index < 0:
        raise ValueError(f"day index {day_index} is before world.epoch; only days >= 0 are simulated")
    max_id = ad_id_range(cfg, day_index)
    n_blocks = (max_id - 1) // AD_BLOCK + 1
    table = AdTable.concat([ad_block(cfg, b) for b in range(n_blocks)])
    alive = (table.ad_id <= max_id) & (table.birth_day <= day_index) & (day_index < table.death_day)
    return table.take(alive)
