"""The one way the project makes a SparkSession: local[*] by default, Delta Lake enabled.

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
from core.jars import DEFAULT_JARS_CACHE, SPARK_CONF_DIR, delta_jars  # conf/spark: log4j2.properties
from core.timing import phase

DEFAULT_IVY_DIR = os.path.expanduser(DEFAULT_JARS_CACHE)


def get_spark(cfg: SparkConfig | None = None) -> SparkSession:
    """Return the active session or build one from `cfg` (Delta extensions and catalog on)."""
    cfg = cfg or SparkConfig()
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    if cfg.master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        # Python workers (mapInArrow, UDFs) must use this interpreter (with pyarrow/numpy),
        # not whatever `python3` is first on PATH.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_CONF_DIR", SPARK_CONF_DIR)  # read when the JVM starts
    logging.getLogger("py4j").setLevel(logging.WARNING)  # one INFO line per gateway connection
    jars = delta_jars(cfg.delta_package, cfg.ivy_dir or DEFAULT_IVY_DIR)
    extra = dict(cfg.extra_conf)
    if extra.get("spark.jars"):
        jars = [*jars, extra.pop("spark.jars")]
    builder = SparkSession.builder
    if "PYSPARK_GATEWAY_PORT" not in os.environ:
        # Under spark-submit the master comes from its --master; only a plain Python process
        # takes it from the config.
        builder = builder.master(cfg.master)
    builder = (
        builder.appName(cfg.app_name)
        .config("spark.jars", ",".join(jars))
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
        .config("spark.sql.shuffle.partitions", str(cfg.shuffle_partitions))
        .config("spark.driver.memory", cfg.driver_memory)
        .config("spark.ui.enabled", "true" if cfg.ui_enabled else "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.bindAddress", "127.0.0.1" if cfg.master.startswith("local") else "0.0.0.0")
        .config("spark.databricks.delta.snapshotPartitions", "2")
        .config("spark.sql.sources.partitionOverwriteMode", "dynamic")
    )
    for k, v in extra.items():
        builder = builder.config(k, v)
    with phase("spark_session"):
        spark = builder.getOrCreate()
        spark.sparkContext.setLogLevel("WARN")
    return spark
