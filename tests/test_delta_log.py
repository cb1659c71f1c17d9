"""core/delta_log.py: the live files of real Delta tables written by Spark, against Spark's own answer."""

from __future__ import annotations

import json
import os

import pytest

from core.delta import latest_version
from core.delta_log import DeltaLogError, filesystem, live_files, partition_rows


def _spark_files(spark, uri: str) -> list[str]:
    return sorted(f.removeprefix("file:") for f in spark.read.format("delta").load(uri).inputFiles())


def test_live_files_follow_overwrites_and_checkpoints(spark, tmp_path):
    uri = str(tmp_path / "t")
    df = spark.range(40).selectExpr("id", "IF(id % 2 = 0, 'a', 'b') AS part")
    df.write.format("delta").partitionBy("part").option("delta.checkpointInterval", "2").save(uri)
    first = live_files(uri)
    assert [f.path for f in first] == _spark_files(spark, uri)
    assert {f.partition["part"] for f in first} == {"a", "b"} and all(f.size > 0 for f in first)
    for k in range(3):  # overwrites, an append and a replaceWhere: checkpoints at versions 2 and 4
        df.where(f"id > {k}").write.format("delta").mode("overwrite").option("partitionOverwriteMode", "static") \
            .save(uri)
    df.limit(3).write.format("delta").mode("append").save(uri)
    df.where("part = 'a'").limit(1).write.format("delta").mode("overwrite").option("replaceWhere", "part = 'a'") \
        .save(uri)
    log_names = os.listdir(os.path.join(uri, "_delta_log"))
    assert any(n.endswith(".checkpoint.parquet") for n in log_names)
    assert [f.path for f in live_files(uri)] == _spark_files(spark, uri)
    assert not set(f.path for f in first) & set(f.path for f in live_files(uri))  # the overwritten files are gone
    on_disk = {os.path.join(dp, n) for dp, _, ns in os.walk(uri) if "_delta_log" not in dp for n in ns
               if n.endswith(".parquet")}
    assert len(on_disk) > len(live_files(uri))  # tombstoned files still lie in the folder
    counts = {r["part"]: r["count"] for r in spark.read.format("delta").load(uri).groupBy("part").count().collect()}
    assert partition_rows(uri, "part", ["a", "b", "none"]) == {**counts, "none": 0}  # read from the checkpoint too


def test_latest_version_from_the_log_names_agrees_with_describe_history(spark, tmp_path):
    def history(uri: str) -> int:
        return int(spark.sql(f"DESCRIBE HISTORY delta.`{uri}` LIMIT 1").collect()[0]["version"])

    uri = str(tmp_path / "t")
    assert latest_version(spark, uri) is None  # nothing there
    spark.range(3).write.parquet(uri)
    assert latest_version(spark, uri) is None  # a folder of parquet files is no Delta table
    (tmp_path / "t" / "_delta_log").mkdir()
    assert latest_version(spark, uri) is None  # nor is an empty log
    uri = str(tmp_path / "d")
    df = spark.range(10).selectExpr("id", "IF(id % 2 = 0, 'a', 'b') AS part")
    df.write.format("delta").partitionBy("part").option("delta.checkpointInterval", "2").save(uri)
    assert latest_version(spark, uri) == history(uri) == 0
    for k in range(4):  # versions 1-4, checkpoints at 2 and 4
        df.where(f"id > {k} AND part = 'a'").write.format("delta").mode("overwrite") \
            .option("replaceWhere", "part = 'a'").save(uri)
        assert latest_version(spark, uri) == history(uri) == k + 1
        assert latest_version(spark, f"file://{uri}") == k + 1
    log_dir = tmp_path / "d" / "_delta_log"
    for v in range(4):  # log clean-up: the commits before the last checkpoint go
        (log_dir / f"{v:020d}.json").unlink()
    assert latest_version(spark, uri) == history(uri) == 4


def test_live_files_refuse_what_they_cannot_read(tmp_path):
    with pytest.raises(DeltaLogError, match="no Delta table at"):
        live_files(str(tmp_path / "missing"))
    log_dir = tmp_path / "t" / "_delta_log"
    log_dir.mkdir(parents=True)
    add = {"add": {"path": "a.parquet", "partitionValues": {}, "size": 1,
                   "deletionVector": {"storageType": "u", "pathOrInlineDv": "x", "sizeInBytes": 1, "cardinality": 1}}}
    (log_dir / f"{0:020d}.json").write_text(json.dumps(add) + "\n")
    with pytest.raises(DeltaLogError, match="deletion vector"):
        live_files(str(tmp_path / "t"))
    (log_dir / f"{0:020d}.json").write_text(json.dumps({"add": {"path": "a%20b.parquet", "size": 1}}) + "\n")
    (log_dir / f"{2:020d}.json").write_text("\n")
    with pytest.raises(DeltaLogError, match="gap"):
        live_files(str(tmp_path / "t"))
    (log_dir / f"{2:020d}.json").unlink()
    assert [f.path for f in live_files(f"file://{tmp_path}/t")] == [f"{tmp_path}/t/a b.parquet"]
    assert partition_rows(str(tmp_path / "t"), "part", ["x"]) == {"x": 0}
    (log_dir / f"{1:020d}.json").write_text(json.dumps({"add": {"path": "c.parquet", "size": 1,
                                                                "partitionValues": {"part": "x"}}}) + "\n")
    assert partition_rows(str(tmp_path / "t"), "part", ["x"]) is None  # no statistics: the caller counts


def test_filesystem_schemes():
    assert filesystem("s3a://bucket/prefix/t")[1] == "bucket/prefix/t"
    with pytest.raises(ValueError, match="hdfs://"):
        filesystem("hdfs://nn/t")
