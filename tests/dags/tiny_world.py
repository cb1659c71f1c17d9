"""The tiny simulated world and pipeline settings the whole-DAG tests run on."""

from __future__ import annotations

import datetime as dt

EPOCH = dt.date(2026, 1, 1)

# Format with root=<storage root>. Two window days, a few thousand impressions a day. The AUC
# gates are opened (floor 0, live tolerance 1): a holdout of 2,500 impressions makes the AUC of
# consecutive days noisy, and these tests are about the DAG's mechanics; tests/serving covers
# the gates blocking a bad model.
CONFIG = """
[storage]
root = "{root}"
[spark]
master = "local[2]"
shuffle_partitions = 2
[world]
impressions_per_day = 2500
n_users = 600
initial_ads = 300
new_ads_per_day = 30
n_categories = 6
n_top_categories = 2
image_size = 32
[features]
window_days = 2
min_count = 2
[train]
batch_size = 256
[gates]
auc_floor = 0.0
live_tolerance = 1.0
"""
