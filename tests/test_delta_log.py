"""core/delta_log.py: the live files of real Delta tables written by Spark, against Spark's own answer."""

from __future__ import annotations

import json
import os

import pytest

from core.delta_log import DeltaLogError, filesystem, live_files


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


def test_filesystem_schemes():
    assert filesystem("s3a://bucket/prefix/t")[1] == "bucket/prefix/t"
    with pytest.raises(ValueError, match="hdfs://"):
        filesystem("hdfs://nn/t")
