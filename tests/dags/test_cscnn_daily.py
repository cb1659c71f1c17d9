"""The daily DAG: parses cleanly and thinly, has the designed shape, validates its params."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk import TriggerRule
from airflow.sdk.definitions.param import ParamsDict

from core.assets import LOOKUP_TABLE_ASSET, MODEL_ASSET
from core.config import RUN_OVERRIDE_SECTIONS, VARIANTS, ConfigError, PipelineConfig, SparkConfig, load_config
from dags import cscnn_daily
from dags.cscnn_links import StageOperator
from dags.cscnn_daily import _NPROC_SNIPPET, params_to_overrides, train_command
from tests.dags.conftest import AIRFLOW_TEST_ENV, DAGS_DIR, REPO_ROOT

DAG_ID = "cscnn_daily"
SPARK_TASKS = {
    "ingest_day": "ingest.py",
    "check_bronze_quality": "check_quality.py",
    "build_window": "build_window.py",
    "check_examples_quality": "check_examples.py",
    "export_training_snapshot": "export_snapshot.py",
    "build_lookup_table": "build_lookup.py",
    "validate_gates": "validate.py",
    "publish": "publish.py",
}
PIPELINE_ORDER = ["build_config", "ingest_day", "check_bronze_quality", "build_window", "check_examples_quality",
                  "export_training_snapshot", "train_model", "build_lookup_table", "validate_gates", "publish",
                  "render_report", "conclude_run"]


def _run_python(code: str, extra_env: dict[str, str] | None = None) -> dict:
    """Run `code` in a fresh interpreter (repo root on PYTHONPATH); it prints one JSON line last."""
    env = {**os.environ, **AIRFLOW_TEST_ENV, "PYTHONPATH": str(REPO_ROOT), **(extra_env or {})}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"subprocess failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def dagbag():
    return DagBag(dag_folder=str(DAGS_DIR))


@pytest.fixture(scope="module")
def dag(dagbag):
    return dagbag.dags[DAG_ID]


def test_dagbag_has_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert DAG_ID in dagbag.dags


def test_parsing_dags_and_plugin_loads_no_heavy_modules():
    result = _run_python("""
        import importlib.util, json, sys
        from airflow.dag_processing.dagbag import DagBag
        bag = DagBag(dag_folder="dags")
        spec = importlib.util.spec_from_file_location("cscnn_reports_plugin", "plugins/cscnn_reports.py")
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
        heavy = ("torch", "pyspark", "great_expectations", "torchvision", "delta")
        print(json.dumps({"errors": bag.import_errors, "dags": sorted(bag.dags),
                          "loaded": sorted(m for m in heavy if m in sys.modules)}))
    """)
    assert result["errors"] == {}
    assert result["dags"] == [DAG_ID]
    assert result["loaded"] == []


def test_schedule_and_run_limits(dag):
    assert dag.schedule == "@daily"
    assert dag.catchup is False
    assert dag.max_active_runs == 1


def test_every_task_retries_with_a_timeout(dag):
    for task in dag.tasks:
        assert task.retries > 0, task.task_id
        assert task.execution_timeout is not None, task.task_id


def test_task_ids_and_dependency_order(dag):
    assert sorted(dag.task_ids) == sorted(PIPELINE_ORDER)
    for upstream, downstream in zip(PIPELINE_ORDER, PIPELINE_ORDER[1:]):
        assert upstream in dag.get_task(downstream).upstream_task_ids, (upstream, downstream)
    # Every stage reads the run's config file written by build_config.
    for task_id in PIPELINE_ORDER[1:-1]:
        assert "build_config" in dag.get_task(task_id).get_flat_relative_ids(upstream=True), task_id
    assert [t.task_id for t in dag.topological_sort()] == PIPELINE_ORDER


def test_report_renders_after_failures_and_the_run_still_fails(dag):
    assert dag.get_task("render_report").trigger_rule == TriggerRule.ALL_DONE
    # The run's state comes from its leaves: conclude_run is the only one, and it needs publish
    # (and the report) to have succeeded, so a failed gate ends the run failed.
    assert [t.task_id for t in dag.leaves] == ["conclude_run"]
    conclude = dag.get_task("conclude_run")
    assert conclude.trigger_rule == TriggerRule.ALL_SUCCESS
    assert {"publish", "render_report"} <= conclude.upstream_task_ids


def test_spark_tasks_run_the_stage_modules_on_the_worker(dag):
    """By default each Spark stage is a `python -m spark_jobs.<stage>` process of the worker's
    interpreter; its SparkSession is a client of the machine's Spark Connect server."""
    for task_id, script in SPARK_TASKS.items():
        task = dag.get_task(task_id)
        assert isinstance(task, StageOperator), task_id
        module = f"spark_jobs.{script.removesuffix('.py')}"
        assert (REPO_ROOT / "spark_jobs" / script).is_file()
        assert task.command()[:5] == [sys.executable, "-m", "core.stage_runner", "run", module]
        assert task.arguments[:3] == ["--date", "{{ ds }}", "--config"]
        assert task.arguments[3].operator.task_id == "build_config"
        assert task.env["PYSPARK_PYTHON"] == sys.executable
        assert {link.name for link in task.operator_extra_links} == {"Data Docs", "Run report"}


def test_spark_submit_mode_submits_the_stage_applications():
    """CSCNN_SPARK_SUBMIT=true: one spark-submit per stage, Delta's jars by path."""
    result = _run_python("""
        import json, os
        from airflow.dag_processing.dagbag import DagBag
        dag = DagBag(dag_folder="dags").dags["cscnn_daily"]
        out = {}
        for task in dag.tasks:
            if type(task).__name__ != "ReportingSparkSubmitOperator":
                continue
            out[task.task_id] = {"application": task.application, "conn_id": task._conn_id,
                                 "args": [a if isinstance(a, str) else a.operator.task_id
                                          for a in task.application_args],
                                 "delta_package": task.delta_package, "conf": task.conf,
                                 "pythonpath": task.env_vars["PYTHONPATH"].split(os.pathsep),
                                 "links": sorted(link.name for link in task.operator_extra_links)}
        print(json.dumps(out))
    """, {"CSCNN_SPARK_SUBMIT": "true"})
    assert set(result) == set(SPARK_TASKS)
    for task_id, script in SPARK_TASKS.items():
        task = result[task_id]
        assert task["application"] == str(REPO_ROOT / "spark_jobs" / script)
        assert task["conn_id"] == "spark_default"
        assert task["args"] == ["--date", "{{ ds }}", "--config", "build_config"]
        # Delta's jars are added by path when the task runs (core.jars), never resolved per stage.
        assert task["delta_package"] == cscnn_daily.DELTA_PACKAGE and "spark.jars.packages" not in task["conf"]
        assert task["conf"]["spark.sql.extensions"] == "io.delta.sql.DeltaSparkSessionExtension"
        assert task["conf"]["spark.sql.catalog.spark_catalog"] == "org.apache.spark.sql.delta.catalog.DeltaCatalog"
        assert task["conf"]["spark.driver.bindAddress"] == "127.0.0.1"
        assert str(REPO_ROOT) in task["pythonpath"]
        assert task["links"] == ["Data Docs", "Run report"]


def test_publish_emits_the_model_and_lookup_table_assets(dag):
    assert list(dag.get_task("publish").outlets) == [MODEL_ASSET, LOOKUP_TABLE_ASSET]
    assert all(not dag.get_task(t).outlets for t in PIPELINE_ORDER if t != "publish")


def test_train_model_runs_the_loopback_launcher_on_the_configured_queue(dag):
    task = dag.get_task("train_model")
    assert task.queue == "default"
    assert task.pool == "default_pool"
    command = train_command("/runs/2026-02-02/config.json")
    assert f"{sys.executable} -m models.launch --nproc-per-node \"$NPROC\" -m spark_jobs.train_model" in command
    assert "torchrun" not in command
    assert "--date {{ ds }} --config /runs/2026-02-02/config.json" in command


def test_environment_sets_queue_pool_catchup_and_spark_conf():
    result = _run_python("""
        import json
        from airflow.dag_processing.dagbag import DagBag
        dag = DagBag(dag_folder="dags").dags["cscnn_daily"]
        train, ingest = dag.get_task("train_model"), dag.get_task("ingest_day")
        print(json.dumps({"queue": train.queue, "pool": train.pool, "catchup": dag.catchup,
                          "max_active_runs": dag.max_active_runs,
                          "driver_host": ingest.conf.get("spark.driver.host"),
                          "bind": ingest.conf["spark.driver.bindAddress"]}))
    """, {"CSCNN_GPU_QUEUE": "gpu", "CSCNN_GPU_POOL": "gpu_pool", "CSCNN_CATCHUP": "true",
          "CSCNN_MAX_ACTIVE_RUNS": "2", "CSCNN_SPARK_SUBMIT": "true",
          "CSCNN_SPARK_CONF": '{"spark.driver.host": "airflow-worker", "spark.driver.bindAddress": "0.0.0.0"}'})
    assert result == {"queue": "gpu", "pool": "gpu_pool", "catchup": True, "max_active_runs": 2,
                      "driver_host": "airflow-worker", "bind": "0.0.0.0"}


def test_bad_environment_is_an_import_error_naming_the_variable():
    cases = {"CSCNN_CATCHUP": "maybe", "CSCNN_SPARK_CONF": '{"driver.host": "x"}', "CSCNN_MAX_ACTIVE_RUNS": "0",
             "CSCNN_START_DATE": "2026-02-30"}
    result = _run_python(f"""
        import json, os
        from airflow.dag_processing.dagbag import DagBag
        errors = {{}}
        for name, value in {cases!r}.items():
            os.environ[name] = value
            errors[name] = list(DagBag(dag_folder="dags").import_errors.values())
            del os.environ[name]
        print(json.dumps(errors))
    """)
    for name, value in cases.items():
        assert len(result[name]) == 1, name
        assert name in result[name][0] and repr(value) in result[name][0], result[name][0]


# --------------------------------------------------------------------------- params


def test_default_params_validate(dag):
    resolved = dag.params.validate()
    assert resolved["window_days"] is None
    assert resolved["overrides"] == {}


@pytest.mark.parametrize("name, good, bad", [
    ("window_days", 8, 0),
    ("model_variant", "cbam", "resnet"),
    ("auc_floor", 0.6, 1.5),
    ("coverage_min", 0.9, -0.1),
    ("max_steps", 100, -1),
    ("epochs", 2, 0),
    ("overrides", {"train.batch_size": 256}, "train.batch_size=256"),
])
def test_params_accept_good_and_reject_bad_values(dag, name, good, bad):
    params = ParamsDict(dag.params)
    params[name] = good  # validates on assignment
    with pytest.raises(ValueError):
        params[name] = bad


def test_params_map_to_real_config_keys():
    overrides = params_to_overrides({"window_days": 8, "model_variant": "cbam", "epochs": 2, "max_steps": 50,
                                     "auc_floor": 0.6, "live_tolerance": 0.01, "coverage_min": 0.8,
                                     "overrides": {"train.batch_size": 256}})
    cfg = load_config(None, overrides)
    assert (cfg.features.window_days, cfg.model.variant, cfg.train.epochs, cfg.train.max_steps) == (8, "cbam", 2, 50)
    assert (cfg.gates.auc_floor, cfg.gates.live_tolerance, cfg.gates.coverage_min) == (0.6, 0.01, 0.8)
    assert cfg.train.batch_size == 256


def test_unset_params_keep_the_config_values():
    assert params_to_overrides({"window_days": None, "model_variant": None, "overrides": {}}) == {}


def test_conflicting_param_and_override_is_an_error_naming_both():
    with pytest.raises(ValueError, match=r"'epochs'=2 and overrides\['train\.epochs'\]=3 disagree"):
        params_to_overrides({"epochs": 2, "overrides": {"train.epochs": 3}})


@pytest.mark.parametrize("key", ["storage.root", "spark.extra_conf", "features.window_days", "storage",
                                 "train.batch_size.x", "Train.batch_size"])
def test_overrides_refuse_keys_outside_the_model_train_and_gates_sections(dag, key):
    value = {"spark.driver.extraJavaOptions": "-Dx=1"} if key == "spark.extra_conf" else "/elsewhere"
    with pytest.raises(ValueError) as err:
        params_to_overrides({"overrides": {key: value}})
    assert str(err.value) == (f"param 'overrides' may not set {key!r}; allowed: keys of the sections "
                              "model, train, gates (e.g. 'train.batch_size')")
    params = ParamsDict(dag.params)
    with pytest.raises(ValueError, match="does not match"):  # the trigger form refuses it before a run exists
        params["overrides"] = {key: value}


def test_overrides_keys_match_whole():
    assert params_to_overrides({"overrides": {"gates.auc_floor": 0.6}}) == {"gates.auc_floor": 0.6}
    with pytest.raises(ValueError, match=r"may not set 'train\.lr\\n'"):
        params_to_overrides({"overrides": {"train.lr\n": 0.1}})


def test_dag_constants_mirror_the_shared_package():
    assert cscnn_daily.MODEL_VARIANTS == VARIANTS
    assert cscnn_daily.OVERRIDE_SECTIONS == RUN_OVERRIDE_SECTIONS
    assert set(RUN_OVERRIDE_SECTIONS) <= set(PipelineConfig().to_dict())
    assert cscnn_daily.DELTA_PACKAGE == SparkConfig().delta_package


# --------------------------------------------------------------------------- build_config


def test_build_config_writes_the_resolved_config_once_per_date(dag, tmp_path, monkeypatch):
    base = tmp_path / "base.json"
    base.write_text(json.dumps({"storage": {"root": str(tmp_path / "var")}, "features": {"window_days": 4}}))
    monkeypatch.setenv("CSCNN_CONFIG", str(base))
    build = dag.get_task("build_config").python_callable

    path = build(params={"window_days": 8, "overrides": {}}, ds="2026-02-02")
    assert path == str(tmp_path / "var" / "artifacts" / "runs" / "2026-02-02" / "config.json")
    cfg = PipelineConfig.from_json(open(path).read())
    assert cfg.features.window_days == 8
    assert cfg.storage.reports_uri == str(tmp_path / "var" / "reports")  # absolute for every stage

    again = build(params={"window_days": None, "overrides": {}}, ds="2026-02-02")  # a re-run replaces
    assert again == path
    assert PipelineConfig.from_json(open(path).read()).features.window_days == 4
    assert sorted(p.name for p in (tmp_path / "var" / "artifacts" / "runs" / "2026-02-02").iterdir()) == ["config.json"]


def test_build_config_rejects_unknown_keys_and_missing_dates(dag, tmp_path, monkeypatch):
    monkeypatch.delenv("CSCNN_CONFIG", raising=False)
    build = dag.get_task("build_config").python_callable
    with pytest.raises(ConfigError, match="crossing_layers"):
        build(params={"overrides": {"model.crossing_layers": 2}}, ds="2026-02-02")
    with pytest.raises(ValueError, match=r"may not set 'storage\.root'"):
        build(params={"overrides": {"storage.root": str(tmp_path)}}, ds="2026-02-02")
    assert not (tmp_path / "artifacts").exists()
    with pytest.raises(ValueError, match="logical date"):
        build(params={"overrides": {}}, ds=None)


# --------------------------------------------------------------------------- GPU count


@pytest.mark.parametrize("cuda_visible, fake_gpus, expected", [
    ("0,1", None, 2),
    ("3", None, 1),
    ("", None, 1),
    ("-1", None, 1),
    (None, 3, 3),
    (None, None, 1),
])
def test_train_command_runs_one_process_per_visible_gpu(tmp_path, cuda_visible, fake_gpus, expected):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("tr", "grep", "printf"):
        (bin_dir / tool).symlink_to(subprocess.check_output(["bash", "-c", f"command -v {tool}"], text=True).strip())
    if fake_gpus is not None:
        smi = bin_dir / "nvidia-smi"
        smi.write_text("#!/bin/sh\n" + "".join(f"echo 'GPU {i}: Fake (UUID: GPU-{i})'\n" for i in range(fake_gpus)))
        smi.chmod(0o755)
    env = {"PATH": str(bin_dir)}
    if cuda_visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = cuda_visible
    out = subprocess.run(["/bin/bash", "-c", f"set -euo pipefail\n{_NPROC_SNIPPET}\necho \"NPROC=$NPROC\""],
                         env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == f"NPROC={expected}"
