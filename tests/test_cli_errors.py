"""Every command-line entry point answers a bad argument or config with one line and exit code 2.

Each case runs the real command in a subprocess. The error must come before any expensive
start-up: SPARK_HOME points at a folder without Spark, so starting a Spark session would fail
with a traceback, and a `torch` package that raises on import shadows the real one for the
commands that need neither. One case runs a stage through the DAG's own spark-submit
invocation, to show that the exit code survives spark-submit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from core import exit_codes

REPO_ROOT = Path(__file__).resolve().parents[1]
GOOD_DATE = "2026-02-02"

# name -> (command, the option that takes a date or None, whether it may import torch)
STAGES = {
    "ingest": (["spark_jobs/ingest.py"], "--date", False),
    "check_quality": (["spark_jobs/check_quality.py"], "--date", False),
    "build_window": (["spark_jobs/build_window.py"], "--date", False),
    "check_examples": (["spark_jobs/check_examples.py"], "--date", False),
    "export_snapshot": (["spark_jobs/export_snapshot.py"], "--date", False),
    "build_lookup": (["spark_jobs/build_lookup.py"], "--date", False),
    "validate": (["spark_jobs/validate.py"], "--date", False),
    "publish": (["spark_jobs/publish.py"], "--date", False),
    "train_model": (["-m", "spark_jobs.train_model"], "--date", False),
}
OTHER_CLIS = {
    "simworld": (["-m", "simworld", "--end", "2026-01-02"], "--start", False),
    "demo": (["scripts/demo.py"], "--date", False),
    "predict": (["-m", "serving.predict", "--requests", "requests.jsonl"], None, True),
    "registry": (["-m", "serving.registry", "list"], None, False),
}
CLIS = {**STAGES, **OTHER_CLIS}
NO_SET_OPTION = {"demo"}  # scripts/demo.py takes --config but no --set

BAD_CONFIG_FILE = "[features]\nwindow_dayz = 8\n"


def _cases() -> list[tuple[str, str, list[str], list[str]]]:
    """(cli, case, extra arguments, strings the one error line must contain)."""
    out = []
    for cli, (_, date_option, _) in CLIS.items():
        if date_option:
            out.append((cli, "bad_date", [date_option, "2026-13-01"], ["'2026-13-01'", "YYYY-MM-DD"]))
        if cli not in NO_SET_OPTION:
            out.append((cli, "unknown_key", ["--set", "nosuch.key=1"], ["'nosuch.key'", "allowed sections"]))
            out.append((cli, "bad_value", ["--set", "features.window_days=-3"],
                        ["'features.window_days'", "-3", "an integer >= 1"]))
        out.append((cli, "bad_file_key", ["--config", "{bad_config}"], ["'window_dayz'", "window_days"]))
        out.append((cli, "missing_file", ["--config", "no/such/run.toml"], ["'no/such/run.toml'"]))
        out.append((cli, "unknown_option", ["--bogus", "1"], ["--bogus"]))
    return out


@pytest.fixture(scope="session")  # made once per test process (each xdist worker is one)
def guarded_env(tmp_path_factory):
    """The environment of every case: no Spark installation, and `import torch` raising."""
    shadow = tmp_path_factory.mktemp("shadow")
    (shadow / "torch").mkdir()
    (shadow / "torch" / "__init__.py").write_text(
        'raise ImportError("torch imported before the argument error was reported")\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CSCNN_", "AIRFLOW"))}
    env["CSCNN_SPARK_SERVER_DIR"] = os.environ["CSCNN_SPARK_SERVER_DIR"]  # the test run's, never a developer's
    env["CSCNN_STAGE_RUNNER_DIR"] = os.environ["CSCNN_STAGE_RUNNER_DIR"]
    env["SPARK_HOME"] = str(shadow / "no-spark-here")
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env, str(shadow)


def _run(cli: str, extra: list[str], env: dict[str, str], shadow: str, cwd: Path) -> subprocess.CompletedProcess:
    command, date_option, needs_torch = CLIS[cli]
    args = list(extra)
    if date_option and date_option not in args:
        args = [date_option, GOOD_DATE, *args]
    if not needs_torch:
        env = {**env, "PYTHONPATH": f"{shadow}{os.pathsep}{env['PYTHONPATH']}"}
    script = command[0] if command[0] != "-m" else None
    argv = [sys.executable, str(REPO_ROOT / script), *command[1:]] if script else [sys.executable, *command]
    return subprocess.run([*argv, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


CASES = _cases()


@pytest.mark.parametrize("cli,case,extra,expected", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_a_bad_argument_or_config_is_one_line_and_exit_code_2(cli, case, extra, expected, guarded_env, tmp_path):
    env, shadow = guarded_env
    (tmp_path / "bad.toml").write_text(BAD_CONFIG_FILE)
    extra = [a.replace("{bad_config}", str(tmp_path / "bad.toml")) for a in extra]
    proc = _run(cli, extra, env, shadow, tmp_path)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode == exit_codes.USAGE, (proc.returncode, proc.stdout, proc.stderr)
    assert len(lines) == 1, proc.stdout + proc.stderr
    assert lines[0].startswith("error: ") and lines[0] in proc.stderr
    for text in expected:
        assert text in lines[0], (text, lines[0])


@pytest.mark.parametrize("cli", list(CLIS))
def test_debug_adds_the_traceback(cli, guarded_env, tmp_path):
    env, shadow = guarded_env
    extra = ["--config", "no/such/run.toml", "--debug"]
    proc = _run(cli, extra, env, shadow, tmp_path)
    assert proc.returncode == exit_codes.USAGE, proc.stderr
    assert "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "error: config file not found: 'no/such/run.toml'"


def test_an_error_after_the_arguments_keeps_its_traceback_and_exit_code_1(guarded_env, tmp_path):
    """Not a user error: starting Spark fails here (no Spark under SPARK_HOME), so the guard works."""
    env, shadow = guarded_env
    proc = _run("ingest", ["--set", f"storage.root={tmp_path}"], env, shadow, tmp_path)
    assert proc.returncode == 1 and "Traceback (most recent call last)" in proc.stderr, proc.stderr
    torch_env = {**env, "PYTHONPATH": f"{shadow}{os.pathsep}{env['PYTHONPATH']}"}
    proc = subprocess.run([sys.executable, "-c", "import torch"], env=torch_env, capture_output=True, text=True)
    assert proc.returncode == 1 and "torch imported before" in proc.stderr


@pytest.mark.slow  # a spark-submit (JVM)
def test_the_exit_code_survives_the_dags_spark_submit(tmp_path):
    """check_bronze_quality's own spark-submit command (the DAG's operator builds it) exits 2."""
    code = textwrap.dedent("""
        import json
        from airflow.dag_processing.dagbag import DagBag
        task = DagBag(dag_folder="dags").dags["cscnn_daily"].get_task("check_bronze_quality")
        task.application_args = ["--date", "2026-13-01", "--config", "conf/demo.toml"]
        hook = task._get_hook()
        try:
            hook.submit(task.application)
            print(json.dumps({"error": None}))
        except Exception as e:
            print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CSCNN_", "AIRFLOW"))}
    env.update(AIRFLOW_HOME=str(tmp_path / "airflow"), CSCNN_SPARK_SUBMIT="true")
    proc = subprocess.run(["bash", "-c", '. scripts/airflow_env.sh && exec python -c "$0"', code],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    error = json.loads(proc.stdout.strip().splitlines()[-1])["error"]
    assert error and error.startswith("AirflowException: Cannot execute: spark-submit"), error
    assert f"Error code is: {exit_codes.USAGE}." in error, error
    output = error.split("Last spark-submit output:", 1)[1]
    assert "error: argument --date: bad date '2026-13-01'; expected YYYY-MM-DD" in output
    assert "Traceback" not in output
