"""core.delta.latest_version: the directory listing of a local table's log agrees with Delta's own
`DESCRIBE HISTORY` after every kind of commit the stages make, checkpoints included."""

from __future__ import annotations

import pytest

from core.delta import delete_where, latest_version, merge_into, replace_where, table_ref


def _history_version(spark, uri: str) -> int:
    return int(spark.sql(f"DESCRIBE HISTORY {table_ref(uri)} LIMIT 1").collect()[0]["version"])


@pytest.mark.slow
def test_local_listing_matches_describe_history(spark, tmp_path):
    uri = str(tmp_path / "table")
    assert latest_version(spark, uri) is None  # nothing there
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "part-0.parquet").write_bytes(b"")
    assert latest_version(spark, str(tmp_path / "plain")) is None  # a folder without a log
    (tmp_path / "empty_log" / "_delta_log").mkdir(parents=True)
    assert latest_version(spark, str(tmp_path / "empty_log")) is None  # a log without a commit

    def rows(day: int, n: int):
        return spark.createDataFrame([(day, i) for i in range(n)], "d int, k int")

    replace_where(rows(1, 3), uri, ["d"], "d = 1")
    seen = [latest_version(spark, uri)]
    spark.sql(f"ALTER TABLE {table_ref(uri)} SET TBLPROPERTIES ('delta.checkpointInterval' = '2')").collect()
    for day in (2, 3, 2):
        replace_where(rows(day, day), uri, ["d"], f"d = {day}")
        seen.append(latest_version(spark, uri))
    merge_into(spark, uri, rows(3, 5), "ON t.d = s.d AND t.k = s.k WHEN NOT MATCHED THEN INSERT *")
    seen.append(latest_version(spark, uri))
    delete_where(spark, uri, "d = 2")
    seen.append(latest_version(spark, uri))

    assert seen == [0, 2, 3, 4, 5, 6], seen  # one commit each; version 1 is the ALTER TABLE
    assert seen[-1] == _history_version(spark, uri)
    assert any(p.name.endswith(".checkpoint.parquet") for p in (tmp_path / "table" / "_delta_log").iterdir())
    assert latest_version(spark, f"file://{uri}") == seen[-1]
