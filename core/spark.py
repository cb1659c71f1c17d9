"""The one way the project makes a SparkSession: local[*] by default, Delta Lake enabled.

Delta's jars are resolved from Maven Central only (conf/spark/ivysettings.xml) through Spark's
ivy into a per-machine cache (~/.cache/cscnn-pipeline/ivy), so they are downloaded once per
machine, not once per test. Spark's JVM logs at WARN (conf/spark/log4j2.properties, found through
SPARK_CONF_DIR; CSCNN_SPARK_LOG_LEVEL=INFO asks for more), and py4j's Python logger at WARNING.
On a cluster, `spark.master` and storage URIs come from config; spark-submit may also pass
`--packages` itself, in which case the builder settings are harmless duplicates.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from pyspark.sql import SparkSession

from core.config import SparkConfig

DEFAULT_IVY_DIR = os.path.expanduser("~/.cache/cscnn-pipeline/ivy")
SPARK_CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf" / "spark")  # log4j2.properties
IVY_SETTINGS = os.path.join(SPARK_CONF_DIR, "ivysettings.xml")  # Maven Central only


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
    ivy = cfg.ivy_dir or DEFAULT_IVY_DIR
    os.makedirs(ivy, exist_ok=True)
    builder = SparkSession.builder
    if "PYSPARK_GATEWAY_PORT" not in os.environ:
        # Under spark-submit the master comes from its --master; only a plain Python process
        # takes it from the config.
        builder = builder.master(cfg.master)
    builder = (
        builder.appName(cfg.app_name)
        .config("spark.jars.packages", cfg.delta_package)
        .config("spark.jars.ivy", ivy)
        .config("spark.jars.ivySettings", IVY_SETTINGS)
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
    for k, v in cfg.extra_conf.items():
        builder = builder.config(k, v)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark
