"""The stage operators, and the links from a task's page in the Airflow UI to the pipeline's HTML reports.

Two ways to run a Spark stage, with the same exit-code rules (non_retryable_failure):
* StageOperator (the default): `python -m spark_jobs.<stage>` on the worker; its SparkSession is a
  client of the machine's long-lived Spark Connect server (core/spark.py, core/spark_server.py).
* ReportingSparkSubmitOperator (CSCNN_SPARK_SUBMIT=true): one spark-submit per stage, a JVM each,
  for clusters where that is the operator's choice.

The reports themselves are served by the `cscnn_reports` plugin (plugins/cscnn_reports.py)
under REPORTS_URL_PREFIX, behind Airflow's own login. In Airflow 3 a worker computes each link
when the task finishes, whatever its state, and stores it as an XCom that the UI reads; so a
failed quality check still shows its "Data Docs" button.

Imports: `airflow.sdk`, the Spark provider's SparkSubmitOperator, core.exit_codes, core.jars and the
standard library (this module is loaded by DAG parsing); core.config and core.paths are imported
inside the link's function, so that parsing the DAG does not load them.
"""

from __future__ import annotations

import os
import posixpath
import signal
import subprocess
import sys
import urllib.parse
from typing import Any, Sequence

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import BaseOperator, BaseOperatorLink, conf
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from core.exit_codes import BAD_DATA, NON_RETRYABLE, USAGE
from core.jars import DEFAULT_JARS_CACHE, delta_jars

# Keep in sync with plugins/cscnn_reports.py (a test checks both).
REPORTS_URL_PREFIX = "/cscnn-reports"


def reports_url(relative: str) -> str:
    """Absolute URL of `relative` (a path inside the reports folder) on this Airflow's API server."""
    base = (conf.get("api", "base_url", fallback="") or "").rstrip("/")
    return f"{base}{REPORTS_URL_PREFIX}/{relative.lstrip('/')}"


def _logical_ds(ti_key: Any) -> str | None:
    """The run's logical date (YYYY-MM-DD) when the link is computed on the worker, else None.

    On the worker `ti_key` is the running task instance, whose template context has `ds`; runs
    triggered without a logical date have none.
    """
    get_context = getattr(ti_key, "get_template_context", None)
    if not callable(get_context):
        return None
    return get_context().get("ds")


def failed_data_docs_page(ti_key: Any, ds: str | None) -> str | None:
    """The Data Docs page of the run date's first failed quality suite, relative to the reports
    folder (None when the day's checks passed, did not run yet, or the page is not served)."""
    xcom_pull = getattr(ti_key, "xcom_pull", None)
    if not ds or not callable(xcom_pull):
        return None
    try:
        from core import storage
        from core.config import PipelineConfig
        from core.paths import Paths

        paths = Paths.of(PipelineConfig.from_json(storage.read_text(xcom_pull(task_ids="build_config"))))
        suites = storage.read_json(paths.quality_summary(ds)).get("suites") or {}
        root = posixpath.normpath(paths.reports)  # absolute: a local path or an object storage URI
    except Exception:  # a link never fails its task: without the summary it points at the site's index
        return None
    for name in sorted(suites):
        page = suites[name].get("report_path") if isinstance(suites[name], dict) else None
        if suites[name].get("success") is False and page:
            rel = posixpath.relpath(posixpath.normpath(page), root)
            if not rel.startswith(".."):
                return urllib.parse.quote(rel)
    return None


class DataDocsLink(BaseOperatorLink):
    """The Data Docs page of the day's failed quality suite, else the site's index (all
    validation results, newest first)."""

    name = "Data Docs"

    def get_link(self, operator, *, ti_key) -> str:
        return reports_url(failed_data_docs_page(ti_key, _logical_ds(ti_key)) or "data_docs/index.html")


class RunReportLink(BaseOperatorLink):
    """The HTML run report of the task's logical date (metrics, gate verdicts, quality results)."""

    name = "Run report"

    def get_link(self, operator, *, ti_key) -> str:
        ds = _logical_ds(ti_key)
        return reports_url(f"runs/{ds}/report.html") if ds else reports_url("")


def non_retryable_failure(exit_code: int | None, task_id: str) -> AirflowFailException | None:
    """The non-retryable failure for a stage process's exit code, or None when retries may help.

    core.exit_codes.NON_RETRYABLE codes mean the same input fails the same way again (bad data,
    a bad argument); any other code (a lost executor, a killed JVM) is left to the task's retries.
    """
    if exit_code not in NON_RETRYABLE:
        return None
    what = {BAD_DATA: "its input data is unusable (see the stage's error above); fix or replace the data, "
                      "then clear the task",
            USAGE: "a bad argument or config value (see the stage's error above)"}[exit_code]
    return AirflowFailException(f"{task_id}: the stage exited with code {exit_code}: {what}; not retried")


class ReportingSparkSubmitOperator(SparkSubmitOperator):
    """SparkSubmitOperator whose task page links to the Data Docs and the run's report.

    A stage process exiting with a code of core.exit_codes.NON_RETRYABLE fails the task at once
    (AirflowFailException, which Airflow never retries); other failures keep their retries.
    `delta_package`: its jars (core.jars, resolved once per machine into `ivy_dir`) are added to
    `spark.jars` when the task runs, not when the DAG file is parsed.
    """

    operator_extra_links = (DataDocsLink(), RunReportLink())

    def __init__(self, *, delta_package: str | None = None, ivy_dir: str = DEFAULT_JARS_CACHE, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.delta_package = delta_package
        self.ivy_dir = ivy_dir

    def execute(self, context: Any) -> Any:
        if self.delta_package:
            # Resolved once per machine (core.jars), named by path: no ivy resolution per stage.
            jars = delta_jars(self.delta_package, self.ivy_dir)
            given = (self.conf or {}).get("spark.jars")
            self.conf = {**(self.conf or {}), "spark.jars": ",".join([*jars, *([given] if given else [])])}
        try:
            return super().execute(context)
        except Exception as err:
            process = getattr(self._hook, "_submit_sp", None)
            failure = non_retryable_failure(getattr(process, "returncode", None), self.task_id)
            if failure is None:
                raise
            raise failure from err


class StageOperator(BaseOperator):
    """Runs a stage as `python -m <module> <arguments>` on the worker, its output in the task log.

    The stage runs in a fork of the worker's warm stage runner (core/stage_runner.py: Great
    Expectations, torch, pandas and Spark's client imported once per machine), which behaves as
    that command would: the same output, exit code, environment and working directory.

    The interpreter is the worker's own (the project's venv). The stage's SparkSession follows
    its config's `spark.remote` (by default the machine's Spark Connect server, started by the
    first stage that needs it). Exit codes as ReportingSparkSubmitOperator: a code of
    core.exit_codes.NON_RETRYABLE fails the task at once, any other failure keeps its retries
    (a Spark server that died: the retry starts a new one). Killing the task (timeout, a user's
    "mark failed") stops the stage's whole process group.
    """

    template_fields: Sequence[str] = ("arguments",)
    operator_extra_links = (DataDocsLink(), RunReportLink())

    def __init__(self, *, module: str, arguments: list[Any], env: dict[str, str] | None = None,
                 cwd: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.module = module
        self.arguments = arguments
        self.env = dict(env or {})
        self.cwd = cwd
        self._process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        """`python -m <module> <arguments>`, run by core.stage_runner (a fork of the warm stage
        runner; CSCNN_STAGE_RUNNER=cold: a new interpreter)."""
        return [sys.executable, "-m", "core.stage_runner", "run", self.module, *[str(a) for a in self.arguments]]

    def execute(self, context: Any) -> None:
        command = self.command()
        self.log.info("running %s", " ".join(command))
        self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, env={**os.environ, **self.env}, cwd=self.cwd,
                                         start_new_session=True, text=True, errors="replace")
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self.log.info("%s", line.rstrip("\n"))
        code = self._process.wait()
        if code != 0:
            raise non_retryable_failure(code, self.task_id) or AirflowException(
                f"{self.task_id}: the stage exited with code {code} (see its output above)")

    def on_kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            try:
                os.killpg(self._process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
