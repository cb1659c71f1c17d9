"""Hand-built Delta tables of one run date, shaped like the ingest and features outputs, for the
Spark-side serving tests (the full simulated pipeline takes minutes; this takes seconds).

Raw values equal encoded ids (tests.serving.helpers.identity_encoder), so the bronze rows, the
encoded examples and the stored vocabularies/bins describe the same impressions. Each ad has its
own click rate, learnable from its ad id (every ad has a distinct id), so a trained model beats
chance on the holdout rows while a model trained on shuffled labels cannot. Images are noise
unrelated to the click rate: an untrained tower would otherwise rank ads by brightness by chance.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json

import numpy as np
import pandas as pd
import pyarrow as pa
from PIL import Image

from core.paths import Paths
from features import tables
from features.examples import FILE_COLUMNS, FILE_SCHEMA
from features.spec import MULTI_FIELDS, NUMERIC_FIELDS
from spark_jobs import example_assembly
from tests.serving.helpers import identity_encoder, requests_from_examples, synthetic_world

D = dt.date(2026, 3, 2)
AD_FIELDS = ("category_id", "parent_category_id", "brand_id", "shop_id", "price", "review_count", "title_words")

VOCAB = 64  # > n_ads: every ad gets its own ad-id embedding


def make_world(seed: int = 3, n_ads: int = 40):
    """(spec, train_df, holdout_df, images, ad_code): each ad's own click rate drives its labels."""
    spec, df, images, ad_code = synthetic_world(seed=seed, n_ads=n_ads, vocab=VOCAB, impressions_per_ad=(20, 40))
    rng = np.random.default_rng(seed)
    ads = np.unique(df["ad_id"].to_numpy())
    level = dict(zip(ads.tolist(), rng.permutation(np.arange(len(ads)) % 2)))  # half the ads click-prone
    # Catalog fields are constant per ad (first row), as a catalog join would make them.
    first = df.groupby("ad_id").head(1).set_index("ad_id")
    for name in AD_FIELDS:
        col = f"f_{name}" if name not in MULTI_FIELDS else f"m_{name}"
        df[col] = df["ad_id"].map(first[col])
    p = 0.05 + 0.6 * df["ad_id"].map(level).to_numpy()  # click rate 0.05 or 0.65
    df["label"] = (rng.random(len(df)) < p).astype(np.int32)
    df["impression_id"] = [f"imp-{i}" for i in range(len(df))]
    pos = df.groupby("ad_id").cumcount().to_numpy()
    size = df.groupby("ad_id")["ad_id"].transform("size").to_numpy()
    is_hold = pos >= np.ceil(size * 0.6)
    train_df = df[~is_hold].reset_index(drop=True)
    hold_df = df[is_hold].reset_index(drop=True)
    for part in (train_df, hold_df):
        part["row_idx"] = np.arange(len(part), dtype=np.int64)
    return spec, train_df, hold_df, images, ad_code


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def write_tables(spark, cfg, world, run_date: dt.date = D) -> None:
    """Write bronze images/ads/impressions and the features tables of ``run_date``."""
    spec, train_df, hold_df, images, ad_code = world
    paths = Paths.of(cfg)
    img_rows = [(a, _png(img), 32, 32, hashlib.sha256(_png(img)).hexdigest(), f"images/{a}.png", run_date)
                for a, img in images.items()]
    spark.createDataFrame(img_rows, "ad_id bigint, image_bytes binary, width int, height int, sha256 string, "
                                    "image_uri string, first_seen_dt date") \
        .write.format("delta").mode("overwrite").save(paths.bronze_images)

    hold_raw = pd.DataFrame(requests_from_examples(hold_df))
    ads = hold_raw.groupby("ad_id").head(1).reset_index(drop=True)
    ads_pdf = ads[["ad_id", *AD_FIELDS]].assign(dt=run_date)
    ads_pdf["review_count"] = ads_pdf["review_count"].astype("Int64")
    spark.createDataFrame(ads_pdf, "ad_id bigint, category_id int, parent_category_id int, brand_id int, "
                                   "shop_id int, price double, review_count int, title_words array<int>, dt date") \
        .write.format("delta").mode("overwrite").save(paths.bronze_ads)
    imp = hold_raw.drop(columns=list(AD_FIELDS)).assign(
        impression_id=hold_df["impression_id"], click=hold_df["label"], dt=run_date,
        event_ts=pd.Timestamp(run_date) + pd.Timedelta(hours=12))
    spark.createDataFrame(imp, "user_id bigint, ad_id bigint, user_location int, user_price_sensitivity int, "
                               "weekday int, hour int, query_title_match int, query_words array<int>, "
                               "hist_categories array<int>, hist_brands array<int>, hist_shops array<int>, "
                               "impression_id string, click int, dt date, event_ts timestamp") \
        .write.format("delta").mode("overwrite").save(paths.bronze_impressions)

    split_tables = []
    for split, df in (("train", train_df), ("holdout", hold_df)):
        df = df.assign(run_date=run_date)
        for name in MULTI_FIELDS:
            df[f"m_{name}"] = df[f"m_{name}"].map(lambda v: [int(x) for x in v])
        table = pa.Table.from_pandas(df[list(FILE_COLUMNS)], preserve_index=False).cast(FILE_SCHEMA)
        split_tables.append(table.append_column("split", pa.repeat(pa.scalar(split), table.num_rows)))
    example_assembly.write_examples(spark.createDataFrame(pa.concat_tables(split_tables)),
                                    tables.examples_uri(cfg, run_date))

    enc = identity_encoder(ad_code, VOCAB)
    vocab_rows = [(run_date, name, int(v), int(i), 10) for name, (vals, ids) in enc.vocab.items()
                  for v, i in zip(vals.tolist(), ids.tolist())]
    spark.createDataFrame(vocab_rows, "run_date date, field string, value bigint, id int, count bigint") \
        .write.format("delta").mode("overwrite").save(paths.table(tables.VOCAB_TABLE))
    spark.createDataFrame([(run_date, n, enc.bin_edges[n].tolist()) for n in NUMERIC_FIELDS],
                          "run_date date, field string, edges array<double>") \
        .write.format("delta").mode("overwrite").save(paths.table(tables.BINS_TABLE))
    counts = train_df.groupby("ad_id").size()
    spark.createDataFrame([(run_date, int(a), int(c)) for a, c in counts.items()],
                          "run_date date, ad_id bigint, impressions bigint") \
        .write.format("delta").mode("overwrite").save(paths.table(tables.AD_COUNTS_TABLE))
    meta = {"run_date": run_date.isoformat(), "bronze_versions": {"impressions": 0, "ads": 0}}
    spark.createDataFrame([(run_date, spec.to_json(), json.dumps(meta))],
                          "run_date date, feature_spec string, metadata string") \
        .write.format("delta").mode("overwrite").save(paths.table(tables.RUNS_TABLE))
