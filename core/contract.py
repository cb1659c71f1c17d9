"""The raw data contract: what upstream systems drop into the landing area every day.

In the spirit of the paper's Table 7 (ad, user, time, text and history fields plus the
click label). Users bring their own logs in this contract; the simulated world writes it.
The tables here are the single source of truth: docs/CONTRACT.md is generated from them
(`python -m core.contract --markdown`), the simulator writes them, ingest enforces them.

Landing layout for day D (all paths relative to the landing root):

    D/impressions.parquet      one row per ad impression shown on day D
    D/ads.parquet              the ad catalog as of day D (every ad that may be shown)
    D/_SUCCESS                 written last: the drop is complete
    images/<shard>/<ad_id>.png ad images, referenced by ads.image_uri (relative URI)

Types are Spark SQL types; arrays hold integer ids (words, categories, ...).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass


@dataclass(frozen=True)
class Field:
    name: str
    type: str  # Spark SQL type
    required: bool
    group: str  # Table 7 group: ad, user, time, text, history, label, id
    meaning: str
    numeric: bool = False  # binned by quantiles in the features stage
    multi: bool = False  # multi-valued (array) categorical field


IMPRESSION_FIELDS: tuple[Field, ...] = (
    Field("impression_id", "string", True, "id", "unique id of the impression (the dedup key)"),
    Field("event_ts", "timestamp", True, "time", "when the ad was shown (UTC); must fall on the drop's day"),
    Field("user_id", "bigint", True, "user", "pseudonymous user id"),
    Field("ad_id", "bigint", True, "ad", "the ad shown; must exist in the day's ad catalog"),
    Field("user_location", "int", False, "user", "coarse location (region id)"),
    Field("user_price_sensitivity", "int", False, "user", "price-sensitivity level 0-4 from the user profile"),
    Field("weekday", "int", True, "time", "day of week of event_ts, 0 = Monday"),
    Field("hour", "int", True, "time", "hour of day of event_ts, 0-23"),
    Field("query_words", "array<int>", False, "text", "word ids of the search query (empty for feeds)", multi=True),
    Field("query_title_match", "int", False, "text", "number of query words that also occur in the ad title"),
    Field("hist_categories", "array<int>", False, "history", "categories the user clicked recently", multi=True),
    Field("hist_brands", "array<int>", False, "history", "brands the user clicked recently", multi=True),
    Field("hist_shops", "array<int>", False, "history", "shops the user clicked recently", multi=True),
    Field("click", "int", True, "label", "1 if the impression was clicked, else 0"),
)

AD_FIELDS: tuple[Field, ...] = (
    Field("ad_id", "bigint", True, "ad", "ad id (unique within a day's catalog)"),
    Field("category_id", "int", True, "ad", "leaf category id (drives category-specific attention)"),
    Field("parent_category_id", "int", False, "ad", "parent category in the category tree"),
    Field("brand_id", "int", False, "ad", "brand id"),
    Field("shop_id", "int", False, "ad", "shop id"),
    Field("price", "double", False, "ad", "price in the shop's currency, >= 0", numeric=True),
    Field("review_count", "int", False, "ad", "number of reviews, >= 0", numeric=True),
    Field("title_words", "array<int>", False, "ad", "word ids of the ad title", multi=True),
    Field("image_uri", "string", True, "ad",
          "image file relative to the landing root (no '..', no absolute path, no scheme)"),
    Field("created_date", "date", False, "ad", "day the ad went live (cold ads are recent)"),
)

# Bronze image table written by ingest (decoded and checked, not part of the landing drop).
IMAGE_FIELDS: tuple[Field, ...] = (
    Field("ad_id", "bigint", True, "ad", "ad id"),
    Field("image_bytes", "binary", True, "ad", "the PNG/JPEG file's bytes, verified decodable"),
    Field("width", "int", True, "ad", "decoded width in pixels"),
    Field("height", "int", True, "ad", "decoded height in pixels"),
    Field("sha256", "string", True, "ad", "hex digest of image_bytes"),
)

TRUTH_FIELDS: tuple[Field, ...] = (
    Field("impression_id", "string", True, "id", "impression id"),
    Field("p_click", "double", True, "label", "the simulator's true click probability (never a feature)"),
)

# Quarantine reason codes (ingest); one row per violation with the raw record as JSON.
REASONS: dict[str, str] = {
    "bad_type": "a value does not convert to its field's type; the record keeps the raw landing row",
    "null_required": "a required field is null",
    "unknown_ad": "ad_id is not in the day's ad catalog",
    "bad_label": "click is not 0 or 1",
    "negative_price": "price < 0",
    "review_count_negative": "review_count < 0",
    "ts_outside_day": "event_ts does not fall on the drop's day",
    "bad_time_fields": "weekday/hour out of range",
    "duplicate_id": "impression_id seen earlier in the day (first one kept)",
    "image_missing": "image_uri points at no file",
    "image_corrupt": "image file cannot be decoded",
    "image_uri_escapes": "image_uri leaves the landing area (absolute, '..', a scheme, or a symlink on its path)",
    "ad_of_bad_catalog_row": "the impression's ad was quarantined from the catalog",
}


def spark_ddl(fields: tuple[Field, ...]) -> str:
    """`name type, ...` for spark.createDataFrame / read.schema."""
    return ", ".join(f"{f.name} {f.type}" for f in fields)


def required(fields: tuple[Field, ...]) -> list[str]:
    return [f.name for f in fields if f.required]


def names(fields: tuple[Field, ...]) -> list[str]:
    return [f.name for f in fields]


def markdown() -> str:
    out = ["# The raw data contract", "",
           "Generated from `core/contract.py` (`python -m core.contract --markdown`); do not edit by hand.", ""]
    doc = (__doc__ or "").split("\n\n", 1)[1]
    out += [doc.strip(), ""]
    for title, fields in (("Impressions (`D/impressions.parquet`)", IMPRESSION_FIELDS),
                          ("Ad catalog (`D/ads.parquet`)", AD_FIELDS),
                          ("Bronze images (written by ingest)", IMAGE_FIELDS),
                          ("Truth (simulator only, outside the landing area)", TRUTH_FIELDS)):
        out += [f"## {title}", "", "| field | type | required | group | meaning |", "|---|---|---|---|---|"]
        out += [f"| `{f.name}` | `{f.type}` | {'yes' if f.required else 'no'} | {f.group} | {f.meaning} |"
                for f in fields]
        out.append("")
    out += ["## Quarantine reason codes", "", "| code | meaning |", "|---|---|"]
    out += [f"| `{k}` | {v} |" for k, v in REASONS.items()]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--markdown", action="store_true", help="print the contract as Markdown")
    ap.parse_args()
    print(markdown(), end="")
