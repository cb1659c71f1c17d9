"""The tiny simulated world most tests run on (a few thousand impressions a day, 32x32 images)."""

from __future__ import annotations

TINY_WORLD = {
    "world.impressions_per_day": 2000,
    "world.n_users": 500,
    "world.initial_ads": 300,
    "world.new_ads_per_day": 30,
    "world.n_categories": 8,
    "world.n_top_categories": 3,
    "world.image_size": 32,
}
