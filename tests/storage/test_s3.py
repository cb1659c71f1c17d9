"""Object storage outside Spark, against a real S3-compatible server (moto's, tests/s3_server.py).

The whole day on an S3 warehouse, through s3a, runs in tests/cluster/test_standalone.py. Here:
the readers that are not Spark (the trainer's) find a Delta table's live files and read the
examples from the bucket with pyarrow, and a credential in the config file is refused.
"""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from core.config import ConfigError, load_config
from core.delta_log import live_files
from features.examples import FILE_SCHEMA, read_example_files
from spark_jobs.example_assembly import write_examples
from tests import s3_server
from tests.s3_server import s3_endpoint  # noqa: F401 (a fixture)


def test_examples_are_read_from_the_bucket_by_their_live_files(spark, s3_endpoint, tmp_path, monkeypatch):  # noqa: F811
    """A Spark-written examples table, overwritten once (so its folder holds dead files), uploaded
    to the bucket: pyarrow reads the same live files and rows there as locally."""
    local = str(tmp_path / "examples")
    n = 40
    values = {"run_date": [dt.date(2026, 1, 1)] * n, "row_idx": list(range(n)), "group_id": [k // 2 for k in range(n)],
              "impression_id": [f"imp-{k}" for k in range(n)], "is_cold": [k % 7 == 0 for k in range(n)]}
    lists, ints = [[k % 3] * (k % 4) for k in range(n)], [k % 5 for k in range(n)]
    columns = [pa.array(values.get(f.name, lists if pa.types.is_list(f.type) else ints), f.type)
               for f in FILE_SCHEMA]
    table = pa.Table.from_arrays(columns, schema=FILE_SCHEMA)
    split = pa.array(["train" if k < 30 else "holdout" for k in range(n)])
    df = spark.createDataFrame(table.append_column("split", split))
    write_examples(df.where("row_idx >= 5"), local)
    write_examples(df.repartition(3), local)
    assert s3_server.upload_folder(s3_endpoint, local, "t/examples") > len(live_files(local))
    for k, v in s3_server.env(s3_endpoint).items():
        monkeypatch.setenv(k, v)
    remote = f"s3a://{s3_server.BUCKET}/t/examples"
    assert [f.path.split("/examples/")[1] for f in live_files(remote)] == \
        [f.path.split("/examples/")[1] for f in live_files(local)]
    for split, n in (("train", 30), ("holdout", 10)):
        got = read_example_files(remote, split)
        assert got.equals(read_example_files(local, split)) and got.num_rows == n
        assert got.column("row_idx").to_pylist() == sorted(got.column("row_idx").to_pylist())
    assert read_example_files(remote, "train", columns=["ad_id"]).column_names == ["ad_id"]


def test_a_credential_in_the_config_file_is_refused():
    for key in ("spark.hadoop.fs.s3a.access.key", "spark.hadoop.fs.s3a.secret.key",
                "spark.hadoop.fs.s3a.bucket.b.session.token"):
        with pytest.raises(ConfigError, match=f"'spark.extra_conf': '{key}'.*from the environment"):
            load_config(overrides={"spark.extra_conf": {key: "x"}})
