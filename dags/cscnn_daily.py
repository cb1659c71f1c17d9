"""The daily CTR pipeline: ingest -> quality -> features -> checks -> snapshot -> train -> lookup table
-> gates -> publish.

One run per logical date D (ARCHITECTURE.md, "The daily run"). Every stage is a command with the shared CLI
(`--date D --config FILE`); the first task resolves the run's configuration (defaults, the file
named by CSCNN_CONFIG, this run's params) and writes it as JSON once, so every stage of the run
reads the same values. Re-running a date rewrites that date's outputs, never duplicates them.

Environment (all optional):
    CSCNN_CONFIG               base config file (.toml/.json) for every run
    CSCNN_CATCHUP              "true" to schedule missed days since CSCNN_START_DATE (default false)
    CSCNN_START_DATE           first logical date (default 2026-02-01)
    CSCNN_END_DATE             last logical date the scheduler creates runs for (default: none),
                               e.g. the last day of a simulated world
    CSCNN_MAX_ACTIVE_RUNS      concurrent runs (default 1: day D warm-starts from day D-1's model)
    CSCNN_GPU_QUEUE            executor queue of `train_model` (default "default"; compose: "gpu")
    CSCNN_GPU_POOL             pool of `train_model` (default "default_pool")
    CSCNN_SPARK_SUBMIT         "true": run each Spark stage with spark-submit (a JVM per stage, the
                               master of CSCNN_SPARK_CONN_ID); default false: each stage is a
                               `python -m spark_jobs.<stage>` process whose SparkSession follows the
                               config's spark.remote (default: the machine's long-lived Spark Connect
                               server, core/spark_server.py). The CSCNN_SPARK_* settings below
                               are spark-submit's.
    CSCNN_SPARK_CONN_ID        Airflow connection with the Spark master (default spark_default,
                               e.g. AIRFLOW_CONN_SPARK_DEFAULT='{"conn_type": "spark", "host": "local[*]"}')
    CSCNN_SPARK_CONF           JSON object of extra spark.* settings merged over the defaults
    CSCNN_SPARK_DRIVER_MEMORY  spark-submit --driver-memory (default 4g)
    CSCNN_SPARK_PY_FILES       comma-separated .zip/.py files shipped to executors (cluster mode),
                               e.g. the project's packages: scripts/build_pyfiles.sh -> dist/cscnn_pipeline.zip
    CSCNN_SPARK_IVY_DIR        cache of the Delta jars, resolved once per machine (core.jars;
                               default ~/.cache/cscnn-pipeline/ivy)
    CSCNN_SPARK_LOG_LEVEL      log level of Spark's JVM in the stages (default WARN; conf/spark/log4j2.properties)
    CSCNN_GX_LOG_LEVEL         log level of Great Expectations in the stages (default WARNING)
    CSCNN_TASK_RETRIES         retries of every task (default 2); a Spark stage that exits with
                               a code of core.exit_codes.NON_RETRYABLE (bad data, a bad
                               argument) fails at once instead
    CSCNN_RETRY_DELAY_S        first retry delay in seconds, growing exponentially (default 300)

Imports: `airflow.sdk`, the Spark provider operator (via dags.cscnn_links), the project's Asset
declarations, `core.jars` (standard library, core.files and core.config) and the standard library
only; pyspark, torch and great_expectations are loaded by the stage processes, never while parsing
this file.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any, Mapping

from airflow.sdk import Param, TriggerRule, chain, dag, task

from core.assets import LOOKUP_TABLE_ASSET, MODEL_ASSET
from core.jars import DEFAULT_JARS_CACHE
from dags.cscnn_links import ReportingSparkSubmitOperator, StageOperator

REPO_ROOT = Path(__file__).resolve().parents[1]
SPARK_JOBS = REPO_ROOT / "spark_jobs"
SPARK_CONF_DIR = REPO_ROOT / "conf" / "spark"  # log4j2.properties (mirrors core.spark)

# Mirrors core.config.VARIANTS (a test checks it); not imported so that parsing stays stdlib-only.
MODEL_VARIANTS = ("dcn", "cnn_fixed", "cnn_finetune", "cbam", "cscnn")
# Mirrors core.config.RUN_OVERRIDE_SECTIONS: the free `overrides` param sets keys of these only.
OVERRIDE_SECTIONS = ("model", "train", "gates")
OVERRIDE_KEY_PATTERN = rf"^({'|'.join(OVERRIDE_SECTIONS)})\.[a-z0-9_]+$"
# Mirrors SparkConfig.delta_package (a test checks it).
# 4.4.1 is not on Maven Central; the 4.4.0 jar serves the 4.4.1 Python package (see core/config.py).
DELTA_PACKAGE = "io.delta:delta-spark_4.2_2.13:4.4.0"


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes"):
        return True
    if raw in ("0", "false", "no"):
        return False
    raise ValueError(f"bad value for environment variable {name}: {raw!r}; allowed: true or false")


def _env_int(name: str, default: int, minimum: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"bad value for environment variable {name}: {raw!r}; allowed: an integer") from None
    if value < minimum:
        raise ValueError(f"bad value for environment variable {name}: {raw!r}; allowed: an integer >= {minimum}")
    return value


def _env_date(name: str, default: str | None) -> dt.datetime | None:
    raw = os.environ.get(name, "").strip() or default
    if raw is None:
        return None
    try:
        day = dt.date.fromisoformat(raw)
    except ValueError:
        raise ValueError(f"bad value for environment variable {name}: {raw!r}; allowed: a date YYYY-MM-DD") from None
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc)


# --------------------------------------------------------------------------- params -> config

# DAG param -> dotted config key. A param left at None keeps the config file's value.
PARAM_CONFIG_KEYS: dict[str, str] = {
    "window_days": "features.window_days",
    "model_variant": "model.variant",
    "epochs": "train.epochs",
    "max_steps": "train.max_steps",
    "auc_floor": "gates.auc_floor",
    "live_tolerance": "gates.live_tolerance",
    "coverage_min": "gates.coverage_min",
}

PARAMS: dict[str, Param] = {
    "window_days": Param(None, type=["null", "integer"], minimum=1,
                         description="W: train on [D-W, D-1], hold out D (features.window_days)."),
    "model_variant": Param(None, type=["null", "string"], enum=[None, *MODEL_VARIANTS],
                           description="Which rung of the paper's Table 8 to train (model.variant)."),
    "epochs": Param(None, type=["null", "integer"], minimum=1, description="Training epochs (train.epochs)."),
    "max_steps": Param(None, type=["null", "integer"], minimum=0,
                       description="Stop training after this many steps, 0 = no limit (train.max_steps)."),
    "auc_floor": Param(None, type=["null", "number"], minimum=0, maximum=1,
                       description="Gate: the holdout AUC must reach this (gates.auc_floor)."),
    "live_tolerance": Param(None, type=["null", "number"], minimum=0, maximum=1,
                            description="Gate: at most this much AUC below the live model (gates.live_tolerance)."),
    "coverage_min": Param(None, type=["null", "number"], minimum=0, maximum=1,
                          description="Gate: share of holdout impressions covered by the table (gates.coverage_min)."),
    "overrides": Param({}, type="object", propertyNames={"pattern": OVERRIDE_KEY_PATTERN},
                       description='Further dotted model.*, train.* or gates.* config keys, e.g. '
                                   '{"train.batch_size": 512}; other keys are refused, unknown ones fail '
                                   "the run's first task."),
}


def params_to_overrides(params: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted config overrides from a run's params: the typed params set, then `overrides`.

    `overrides` may set keys of OVERRIDE_SECTIONS only (never storage paths or Spark/JVM options);
    a typed param and the same key in `overrides` must not disagree. Either is an error naming the key.
    """
    out = {PARAM_CONFIG_KEYS[name]: params[name] for name in PARAM_CONFIG_KEYS if params.get(name) is not None}
    free = params.get("overrides") or {}
    if not isinstance(free, Mapping):
        raise ValueError(f"bad value for param 'overrides': {free!r}; allowed: an object of dotted key -> value")
    for key, value in free.items():
        if not isinstance(key, str) or not re.fullmatch(OVERRIDE_KEY_PATTERN, key):
            raise ValueError(f"param 'overrides' may not set {key!r}; allowed: keys of the sections "
                             f"{', '.join(OVERRIDE_SECTIONS)} (e.g. 'train.batch_size')")
        if key in out and out[key] != value:
            param = next(p for p, k in PARAM_CONFIG_KEYS.items() if k == key)
            raise ValueError(f"param '{param}'={out[key]!r} and overrides['{key}']={value!r} disagree; set one")
        out[key] = value
    return out


# --------------------------------------------------------------------------- spark-submit settings


def spark_conf() -> dict[str, str]:
    """spark-submit --conf settings: Delta on, plus CSCNN_SPARK_CONF. Delta's jars are added by the
    operator when the task runs (ReportingSparkSubmitOperator's delta_package)."""
    conf = {
        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.sql.session.timeZone": "UTC",
        # Local runs stay on the loopback interface; a cluster overrides this via CSCNN_SPARK_CONF.
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.executorEnv.PYTHONPATH": str(REPO_ROOT),
    }
    raw = os.environ.get("CSCNN_SPARK_CONF", "").strip()
    if raw:
        try:
            extra = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ValueError(f"bad value for environment variable CSCNN_SPARK_CONF: {raw!r}; {e}") from None
        if not isinstance(extra, dict) or not all(str(k).startswith("spark.") for k in extra):
            raise ValueError(f"bad value for environment variable CSCNN_SPARK_CONF: {raw!r}; "
                             'allowed: a JSON object of spark.* keys, e.g. {"spark.driver.host": "worker"}')
        conf.update({str(k): str(v) for k, v in extra.items()})
    return conf


def spark_env() -> dict[str, str]:
    """Environment of the spark-submit process: the repo importable, the venv's Python."""
    pythonpath = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {
        "PYTHONPATH": pythonpath,
        "PYSPARK_PYTHON": os.environ.get("PYSPARK_PYTHON") or sys.executable,
        "PYSPARK_DRIVER_PYTHON": os.environ.get("PYSPARK_DRIVER_PYTHON") or sys.executable,
        # log4j2.properties: Spark's JVM at WARN unless CSCNN_SPARK_LOG_LEVEL asks for more
        "SPARK_CONF_DIR": os.environ.get("SPARK_CONF_DIR") or str(SPARK_CONF_DIR),
    }


def spark_stage(task_id: str, application: str, config_path: Any,
                **kwargs: Any) -> StageOperator | ReportingSparkSubmitOperator:
    """A task running spark_jobs/<application> with the shared stage CLI: a stage process on the
    worker (StageOperator), or a spark-submit when CSCNN_SPARK_SUBMIT is true."""
    conf = spark_conf()  # checked in both modes: a bad CSCNN_SPARK_CONF is an import error either way
    if not _env_bool("CSCNN_SPARK_SUBMIT", False):
        return StageOperator(
            task_id=task_id,
            module=f"spark_jobs.{Path(application).stem}",
            arguments=["--date", "{{ ds }}", "--config", config_path],
            env=spark_env(),
            **kwargs,
        )
    return ReportingSparkSubmitOperator(
        task_id=task_id,
        application=str(SPARK_JOBS / application),
        conn_id=os.environ.get("CSCNN_SPARK_CONN_ID") or "spark_default",
        conf=conf,
        delta_package=DELTA_PACKAGE,
        ivy_dir=os.environ.get("CSCNN_SPARK_IVY_DIR") or DEFAULT_JARS_CACHE,
        env_vars=spark_env(),
        py_files=os.environ.get("CSCNN_SPARK_PY_FILES") or None,
        driver_memory=os.environ.get("CSCNN_SPARK_DRIVER_MEMORY") or "4g",
        name=f"cscnn-{task_id}-{{{{ ds }}}}",
        application_args=["--date", "{{ ds }}", "--config", config_path],
        **kwargs,
    )


# Counts the CUDA devices this process may use: CUDA_VISIBLE_DEVICES when set, else nvidia-smi.
_NPROC_SNIPPET = r"""
if [ -n "${CUDA_VISIBLE_DEVICES+x}" ]; then
  case "$CUDA_VISIBLE_DEVICES" in
    ""|-1*) NPROC=0 ;;
    *) NPROC=$(printf '%s' "$CUDA_VISIBLE_DEVICES" | tr ',' '\n' | grep -c . || true) ;;
  esac
elif command -v nvidia-smi >/dev/null 2>&1; then
  NPROC=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
else
  NPROC=0
fi
if [ "${NPROC:-0}" -lt 1 ]; then NPROC=1; fi
echo "train_model: $NPROC training process(es)"
""".strip()


def train_command(config_path: str) -> str:
    """Bash for the training stage: one process per visible GPU, one on CPU.

    models.launch runs a single process without any distributed rendezvous and several around
    a store on 127.0.0.1 (torchrun's stores would listen on every interface). The interpreter
    is the one running this task, the worker's.
    """
    return "\n".join([
        "set -euo pipefail",
        _NPROC_SNIPPET,
        f"exec {shlex.quote(sys.executable)} -m models.launch --nproc-per-node \"$NPROC\" -m spark_jobs.train_model"
        f" --date {{{{ ds }}}} --config {shlex.quote(config_path)}",
    ])


# --------------------------------------------------------------------------- the DAG

default_args = {
    "owner": "ctr-pipeline",
    "retries": _env_int("CSCNN_TASK_RETRIES", 2, 0),
    "retry_delay": dt.timedelta(seconds=_env_int("CSCNN_RETRY_DELAY_S", 300, 1)),
    "retry_exponential_backoff": True,
    "execution_timeout": dt.timedelta(hours=2),
}


@dag(
    dag_id="cscnn_daily",
    description="Daily CSCNN CTR model and ad visual-embedding lookup table (ARCHITECTURE.md, \"The daily run\")",
    schedule="@daily",
    start_date=_env_date("CSCNN_START_DATE", "2026-02-01"),
    end_date=_env_date("CSCNN_END_DATE", None),
    catchup=_env_bool("CSCNN_CATCHUP", False),
    max_active_runs=_env_int("CSCNN_MAX_ACTIVE_RUNS", 1, minimum=1),
    default_args=default_args,
    params=PARAMS,
    tags=["ctr", "cscnn"],
    doc_md=__doc__,
)
def cscnn_daily():
    @task
    def build_config(params: dict | None = None, ds: str | None = None) -> str:
        """Resolve the run's config (defaults <- CSCNN_CONFIG <- params) and write it as JSON."""
        from core.config import load_config
        from core import storage
        from core.paths import Paths

        if not ds:
            raise ValueError("this run has no logical date; trigger it with one "
                             "(UI: 'Logical date'; CLI: airflow dags trigger --logical-date YYYY-MM-DD)")
        cfg = load_config(None, params_to_overrides(params or {}))
        # Pin storage to absolute URIs so every stage sees the same folders whatever its CWD.
        cfg = dataclasses.replace(cfg, storage=cfg.storage.resolved())
        uri = f"{Paths.of(cfg).artifacts.rstrip('/')}/runs/{ds}/config.json"  # local or object storage
        storage.write_text(uri, cfg.to_json())  # whole: a re-run of the date replaces the file
        return uri

    @task.bash(
        queue=os.environ.get("CSCNN_GPU_QUEUE") or "default",
        pool=os.environ.get("CSCNN_GPU_POOL") or "default_pool",
        cwd=str(REPO_ROOT),
        execution_timeout=dt.timedelta(hours=8),
    )
    def train_model(config_path: str) -> str:
        """DCN + CSCNN training (DistributedDataParallel across visible GPUs, loopback only)."""
        return train_command(config_path)

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def render_report(config_path: str, ds: str | None = None) -> str:
        """The run's HTML report; runs after failures too, so a failed check still has a report."""
        from reports.run_report import render

        return str(render(config_path, ds))

    @task
    def conclude_run(report_path: str) -> str:
        """The run's last task: upstream-failed when any stage failed, so the run ends failed.

        `render_report` runs whatever happened upstream; without this leaf a run whose gate
        failed would end green once its report rendered.
        """
        return report_path

    config_path = build_config()
    ingest_day = spark_stage("ingest_day", "ingest.py", config_path)
    check_bronze_quality = spark_stage("check_bronze_quality", "check_quality.py", config_path)
    build_window = spark_stage("build_window", "build_window.py", config_path)
    check_examples_quality = spark_stage("check_examples_quality", "check_examples.py", config_path)
    export_training_snapshot = spark_stage("export_training_snapshot", "export_snapshot.py", config_path)
    trained = train_model(config_path)
    build_lookup_table = spark_stage("build_lookup_table", "build_lookup.py", config_path)
    validate_gates = spark_stage("validate_gates", "validate.py", config_path)
    publish = spark_stage("publish", "publish.py", config_path, outlets=[MODEL_ASSET, LOOKUP_TABLE_ASSET])
    report = render_report(config_path)
    done = conclude_run(report)

    chain(config_path, ingest_day, check_bronze_quality, build_window, check_examples_quality,
          export_training_snapshot, trained, build_lookup_table, validate_gates, publish, report, done)
    publish >> done


cscnn_daily()
