"""The one way the project makes a SparkSession, Delta Lake enabled.

Where the session's Spark runs (`spark.remote`, core.config.SparkConfig):

* "local" (the default): a client of this machine's long-lived Spark Connect server, started on
  first use and shared by every stage and run (core/spark_server.py). A stage then pays for no JVM
  start, and runs on a JVM whose classes are loaded and whose JIT is warm.
* "sc://host:port": a client of that Spark Connect server (started by whoever runs it, with Delta).
* "": a Spark in this process (its own JVM, `spark.master`).

Under spark-submit (the DAG with CSCNN_SPARK_SUBMIT=true) the session is the one spark-submit's
JVM serves, whatever `spark.remote` says. Code that runs on a session uses only what both kinds
offer: DataFrames, SQL, Delta through SQL (core/delta.py), no SparkContext.

pyspark's Connect client (about 1.2 s of imports: gRPC, protobuf) is imported by the Connect
session builder, so `_connect` imports its retry policy where it runs: a Spark in the process
(spark-submit, the tests' own session) never pays for it.

Delta's jars are resolved from Maven Central only (conf/spark/ivysettings.xml) once per machine
into a cache (~/.cache/cscnn-pipeline/ivy; core.jars) and given to the session by path
(`spark.jars`), so no session start resolves them again. Spark's JVM logs at WARN (conf/spark/log4j2.properties, found through
SPARK_CONF_DIR; CSCNN_SPARK_LOG_LEVEL=INFO asks for more), and py4j's Python logger at WARNING.
On a cluster, `spark.master` and storage URIs come from config; under spark-submit (the DAG's
stages) the same jars were already passed on its command line, and the builder's are duplicates.
"""

from __future__ import annotations

import logging
import os
import sys

from pyspark.sql import SparkSession

from core.config import SparkConfig
from core.jars import DEFAULT_JARS_CACHE, SPARK_CONF_DIR  # conf/spark: log4j2.properties
from core.spark_server import ensure_server, spark_conf
from core.timing import phase

DEFAULT_IVY_DIR = os.path.expanduser(DEFAULT_JARS_CACHE)


def get_spark(cfg: SparkConfig | None = None) -> SparkSession:
    """Return the active session or build one from `cfg` (Delta extensions and catalog on)."""
    cfg = cfg or SparkConfig()
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    if cfg.remote and "PYSPARK_GATEWAY_PORT" not in os.environ:
        return _connect(cfg)
    if cfg.master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        # Python workers (mapInArrow, UDFs) must use this interpreter (with pyarrow/numpy),
        # not whatever `python3` is first on PATH.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_CONF_DIR", SPARK_CONF_DIR)  # read when the JVM starts
    logging.getLogger("py4j").setLevel(logging.WARNING)  # one INFO line per gateway connection
    builder = SparkSession.builder
    if "PYSPARK_GATEWAY_PORT" not in os.environ:
        # Under spark-submit the master comes from its --master; only a plain Python process
        # takes it from the config.
        builder = builder.master(cfg.master)
    builder = (
        builder.appName(cfg.app_name)
        .config("spark.driver.memory", cfg.driver_memory)
        .config("spark.driver.bindAddress", "127.0.0.1" if cfg.master.startswith("local") else "0.0.0.0")
    )
    for k, v in {**session_conf(cfg), **spark_conf(cfg)}.items():  # extra_conf (in spark_conf) wins
        builder = builder.config(k, v)
    with phase("spark_session"):
        spark = builder.getOrCreate()
        spark.sparkContext.setLogLevel("WARN")
    return spark


def session_conf(cfg: SparkConfig) -> dict[str, str]:
    """The SQL settings of every session, in its own JVM or on a shared server."""
    return {
        "spark.sql.shuffle.partitions": str(cfg.shuffle_partitions),
        "spark.sql.session.timeZone": "UTC",
        "spark.databricks.delta.snapshotPartitions": "2",
        "spark.sql.sources.partitionOverwriteMode": "dynamic",
    }


# Retries of a call to this machine's server when it does not answer: about 17 s in all (backoff
# 0.05 s x 4^k). A local server that died does not come back by itself; failing soon lets the
# task's retry start a new one. A remote server ("sc://...") keeps Spark's default (at least 10
# minutes), since whoever runs it may restart it.
LOCAL_SERVER_RETRIES = 5


def _connect(cfg: SparkConfig) -> SparkSession:
    """A Spark Connect session on `cfg.remote` ("local": this machine's server, started if needed)."""
    with phase("spark_session"):
        url = ensure_server(cfg).url if cfg.remote == "local" else cfg.remote
        builder = SparkSession.builder.remote(url).appName(cfg.app_name)
        for k, v in session_conf(cfg).items():
            builder = builder.config(k, v)
        spark = builder.getOrCreate()
    if cfg.remote == "local":
        from pyspark.sql.connect.client.retries import DefaultPolicy  # loaded by the Connect session already

        spark.client.set_retry_policies([DefaultPolicy(max_retries=LOCAL_SERVER_RETRIES)])
    return spark
