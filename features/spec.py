"""The feature spec: the interface between the features stage (Spark), the models (PyTorch) and serving.

Encoded examples are rows of integer ids. Id conventions, for every categorical field:
  0          = out of vocabulary (rare, unseen or null value)
  1 .. V-1   = vocabulary entries (V = vocab size including the OOV id)
Multi-valued fields are arrays of such ids (possibly empty); numeric fields arrive as bin
ids (0 = null, 1..n_bins = quantile bins).

Encoded example columns (one Delta table per run date, `features/examples/<D>`, partitioned by
split; features/examples.py holds its schema, spark_jobs/example_assembly.py writes it):
  run_date date, split string ('train' | 'holdout'), row_idx bigint (training order: ad
  groups, shuffled deterministically), group_id bigint, impression_id string, ad_id bigint,
  category_idx int (= the encoded category_id, used by CSCNN to pick priors), label int,
  is_cold boolean (ad had < COLD_MAX_IMPRESSIONS impressions in the window),
  f_<name> int for each SINGLE_FIELDS entry, m_<name> array<int> for each MULTI_FIELDS entry.
The image of an example is the bronze image of its ad_id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

# Single-valued categorical fields (after binning numeric ones), in model input order.
SINGLE_FIELDS: tuple[str, ...] = (
    "user_id", "ad_id", "category_id", "parent_category_id", "brand_id", "shop_id",
    "price", "review_count", "user_location", "user_price_sensitivity", "weekday", "hour",
    "query_title_match",
)
# Multi-valued fields, pooled (mean) per field by the model.
MULTI_FIELDS: tuple[str, ...] = ("title_words", "query_words", "hist_categories", "hist_brands", "hist_shops")
# Numeric fields binned by quantiles fitted on the window.
NUMERIC_FIELDS: tuple[str, ...] = ("price", "review_count")
COLD_MAX_IMPRESSIONS = 5


@dataclass(frozen=True)


class FeatureSpec:
    """Vocabulary sizes (including the OOV id 0) per field of one run date's encoding."""

    single: dict[str, int] = field(default_factory=dict)
    multi: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, size in {**self.single, **self.multi}.items():
            if size < 1:
                raise ValueError(f"vocab size of field {name!r} must be >= 1, got {size}")

    @property
    def n_categories(self) -> int:
        """Number of category ids CSCNN keeps priors for (vocab of category_id incl. OOV)."""
        return self.single["category_id"]

    def to_json(self) -> str:
        return json.dumps({"single": self.single, "multi": self.multi}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "FeatureSpec":
        d = json.loads(text)
        unknown = set(d) - {"single", "multi"}
        if unknown:
            raise ValueError(f"unknown keys in feature spec: {sorted(unknown)}")
        return cls(single={k: int(v) for k, v in d["single"].items()},
                   multi={k: int(v) for k, v in d["multi"].items()})
