"""Run a Great Expectations (GX 1.x) suite on a DataFrame through a checkpoint that updates Data Docs.

One file-backed GX project per storage layout lives under `Paths.gx_project` (<reports>/gx); its
Data Docs site `cscnn_data_docs` writes static HTML under `Paths.data_docs` (<reports>/data_docs),
one page per validation run at `validations/<suite>/<run_name>/<run_time>/<batch_id>.html`.

    result = validate(cfg, day_df, build_impressions_suite(cfg, trailing), "bronze_impressions", "2026-02-02")
    raise_on_critical(result)  # DataQualityError naming each failed critical expectation and the page

Suites, validation definitions and checkpoints are created or replaced by name, so re-running a
date rewrites them instead of failing on duplicates. Expectations built with `expectation(...)`
carry `meta={"critical": bool}`; only failures of critical ones stop the pipeline.

GX keeps its project and Data Docs on a local filesystem. With `storage.reports_uri` on object
storage they live in this machine's mirror of those folders (core.storage.mirror: what it lacks is
downloaded when a process first opens the project), and each validation uploads the files it
changed (core.storage.push). Machines that validate at the same time each rebuild the Data Docs
index from what they have; the next validation on any of them lists every run it has seen.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import threading
import time
import urllib.parse
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import great_expectations as gx
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from great_expectations.checkpoint import UpdateDataDocsAction
from great_expectations.core.run_identifier import RunIdentifier
from great_expectations.data_context import FileDataContext
from great_expectations.data_context.data_context.context_factory import project_manager
from great_expectations.data_context.types.base import ProgressBarsConfig
from great_expectations.expectations.metadata_types import FailureSeverity
from pyspark.sql import DataFrame as SparkDataFrame

from core import storage
from core.config import PipelineConfig
from core.exit_codes import BadDataError
from core.files import locked
from core.paths import Paths, is_local
from core.timing import timed

log = logging.getLogger(__name__)


def quiet_gx_logging() -> None:
    """Great Expectations logs at WARNING (CSCNN_GX_LOG_LEVEL=INFO or DEBUG asks for more).

    Set before GX is first imported: at import it logs hundreds of `Skipping registering
    function` lines at INFO, and every store write afterwards."""
    level = os.environ.get("CSCNN_GX_LOG_LEVEL", "").strip().upper() or "WARNING"
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError(f"bad value for environment variable CSCNN_GX_LOG_LEVEL: {level!r}; "
                         "allowed: DEBUG, INFO, WARNING, ERROR")
    logging.getLogger("great_expectations").setLevel(level)


quiet_gx_logging()

SITE_NAME = "cscnn_data_docs"
BATCH_DEFINITION = "whole_dataframe"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class DataQualityError(BadDataError):
    """A critical expectation failed; the message names each one and the Data Docs page.

    A BadDataError: the stage exits with core.exit_codes.BAD_DATA and the task is not retried."""


@dataclass(frozen=True)
class QualityResult:
    """The outcome of validating one DataFrame against one suite."""

    suite_name: str
    asset_name: str
    run_name: str
    success: bool  # every expectation passed
    failed: list[str]  # one line per failed expectation: type(column=..., kwargs): observed
    failed_critical: list[str]  # the subset of `failed` whose expectation has meta critical=True
    report_path: str  # absolute local path of this validation's Data Docs HTML page
    statistics: dict[str, Any] = field(default_factory=dict)  # GX's evaluated/successful counts

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- building suites


def expectation(expectation_cls: type, *, critical: bool, **kwargs: Any) -> gx.expectations.Expectation:
    """Build one GX expectation marked critical or not.

    The mark lives in `meta["critical"]` (read by `raise_on_critical`) and is mirrored in GX's own
    `severity`. The description that Data Docs shows in place of GX's prose starts with
    CRITICAL/WARNING and the expectation type, so a reader of the HTML sees both at a glance.
    """
    exp = expectation_cls(**kwargs, meta={"critical": critical},
                          severity=FailureSeverity.CRITICAL if critical else FailureSeverity.WARNING)
    level = "CRITICAL" if critical else "WARNING"
    # Data Docs treats '$' in a description as a template parameter; kwargs here never hold one.
    exp.description = f"{level} {exp.expectation_type}({_kwargs_text(kwargs)})"
    return exp


def new_suite(name: str, expectations: list[gx.expectations.Expectation]) -> gx.ExpectationSuite:
    """An ExpectationSuite named `name` holding `expectations` (names: letters, digits, _ . -)."""
    _check_name("suite name", name)
    # The constructor, unlike add_expectation, needs no active Data Context (suites are built
    # before the runner opens one); it logs and skips invalid expectations, so count them.
    suite = gx.ExpectationSuite(name=name, expectations=list(expectations))
    if len(suite.expectations) != len(expectations):
        raise ValueError(f"suite {name!r}: {len(expectations) - len(suite.expectations)} invalid "
                         "expectation(s) were rejected by GX; see the log above")
    return suite


# --------------------------------------------------------------------------- the GX project

_CONTEXTS: dict[tuple[str, str], FileDataContext] = {}
_CONTEXTS_LOCK = threading.Lock()


def get_gx_context(cfg: PipelineConfig) -> FileDataContext:
    """The file-backed GX context of `cfg`'s reports folder, created once per process and folder.

    The Data Docs site is (re)pointed at `Paths.data_docs` when it differs, and the context is made
    GX's current project, which GX's factories consult when saving suites and definitions.
    """
    paths = Paths.of(cfg)
    gx_root, docs_root = _local_dir(paths.gx_project), _local_dir(paths.data_docs)
    key = (gx_root, docs_root)
    with _CONTEXTS_LOCK:
        context = _CONTEXTS.get(key)
        if context is None:
            with _project_lock(gx_root):
                context = _open_context(gx_root, docs_root)
            _CONTEXTS[key] = context
        project_manager.set_project(context)
    return context


def _open_context(gx_root: str, docs_root: str) -> FileDataContext:
    context = gx.get_context(mode="file", context_root_dir=gx_root)
    site_config = {
        "class_name": "SiteBuilder",
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": docs_root + "/"},
    }
    sites = context.list_data_docs_sites()
    if "local_site" in sites:  # GX's scaffolded default would write a second copy inside gx/uncommitted
        context.delete_data_docs_site("local_site")
    if SITE_NAME not in sites:
        context.add_data_docs_site(SITE_NAME, site_config)
    elif sites[SITE_NAME] != site_config:
        context.update_data_docs_site(SITE_NAME, site_config)
    changed = False
    bars = context.variables.progress_bars
    # A freshly scaffolded project holds a ProgressBarsConfig; one reopened from its YAML, a dict.
    globally = bars.get("globally") if isinstance(bars, dict) else getattr(bars, "globally", None)
    if globally is not False:
        context.variables.progress_bars = ProgressBarsConfig(globally=False)  # keep job logs readable
        changed = True
    if context.variables.analytics_enabled is not False:
        context.variables.analytics_enabled = False
        changed = True
    if changed:
        context.variables.save()
    log.info("GX project at %s, Data Docs at %s", gx_root, docs_root)
    return context


@contextmanager
def _project_lock(gx_root: str) -> Iterator[None]:
    """An exclusive lock on the GX project folder: GX rewrites great_expectations.yml and its stores
    without locking, and backfills may validate several dates of one project at once."""
    with locked(os.path.join(gx_root, ".cscnn.lock")):
        yield


# --------------------------------------------------------------------------- validating


@timed("quality")
def validate(cfg: PipelineConfig, df: Any, suite: gx.ExpectationSuite, asset_name: str,
             run_name: str) -> QualityResult:
    """Validate a Spark or pandas DataFrame against `suite` with a checkpoint that updates Data Docs.

    A Spark DataFrame of at most `quality.pandas_max_rows` rows is collected and validated by GX's
    pandas engine (same expectations, same Data Docs page; far fewer Spark jobs).

    `asset_name` names the data (e.g. "bronze_impressions"), `run_name` the run (e.g. the logical
    date); both become part of the Data Docs path. The suite, its validation definition
    (`<suite>__<asset>`) and checkpoint (same name) are created or replaced, so calling this
    again with the same names is safe. Returns a QualityResult; never raises on failed
    expectations (see `raise_on_critical`).
    """
    _check_name("asset_name", asset_name)
    _check_name("run_name", run_name)
    _check_name("suite name", suite.name)
    source_name, is_spark = _source_of(df)
    if is_spark and cfg.quality.pandas_max_rows > 0:
        small = _collect_if_small(df, cfg.quality.pandas_max_rows)
        if small is not None:
            df, source_name, is_spark = small, "pandas", False
    context = get_gx_context(cfg)  # mirrors the folders once per process; here they are only named
    paths = Paths.of(cfg)
    gx_root, docs_root = (os.path.abspath(storage.mirror_folder(u)) for u in (paths.gx_project, paths.data_docs))
    was_cached = bool(getattr(df, "is_cached", False))
    # The lock spans the run: UpdateDataDocsAction rewrites the shared index page and stores.
    with _project_lock(gx_root):
        started = time.time()
        batch_definition = _batch_definition(context, source_name, asset_name)
        suite = context.suites.add_or_update(suite)
        definition_name = f"{suite.name}__{asset_name}"
        definition = context.validation_definitions.add_or_update(
            gx.ValidationDefinition(name=definition_name, data=batch_definition, suite=suite))
        checkpoint = context.checkpoints.add_or_update(gx.Checkpoint(
            name=definition_name, validation_definitions=[definition],
            actions=[UpdateDataDocsAction(name="update_data_docs", site_names=[SITE_NAME])],
            result_format="BASIC"))
        try:
            # An explicit run_time: GX would otherwise parse a date-like run_name as the run time,
            # and every re-run of a date would overwrite the previous run's page.
            run_id = RunIdentifier(run_name=run_name, run_time=datetime.datetime.now(datetime.timezone.utc))
            checkpoint_result = checkpoint.run(batch_parameters={"dataframe": df}, run_id=run_id)
        finally:
            if is_spark and not was_cached:
                df.unpersist()  # GX persists the batch; release it unless the caller had cached it
        (identifier, suite_result), = checkpoint_result.run_results.items()
        urls = context.get_docs_sites_urls(resource_identifier=identifier, site_name=SITE_NAME)
        report_path = _url_to_path(urls[0]["site_url"] if urls else None, identifier)
        if not is_local(paths.data_docs):  # object storage: send this run's files, name the page there
            # (a second early: file times come from a coarser clock than time.time())
            storage.push(gx_root, paths.gx_project, started - 1.0)
            storage.push(docs_root, paths.data_docs, started - 1.0)
            report_path = storage.join(paths.data_docs, os.path.relpath(report_path, docs_root))
    failed, failed_critical = [], []
    for exp_result in suite_result.results:
        if exp_result.success and not _raised(exp_result):
            continue
        line = _describe(exp_result)
        failed.append(line)
        if (exp_result.expectation_config.meta or {}).get("critical", False):
            failed_critical.append(line)
    result = QualityResult(suite_name=suite.name, asset_name=asset_name, run_name=run_name,
                           success=bool(suite_result.success) and not failed, failed=failed,
                           failed_critical=failed_critical, report_path=report_path,
                           statistics=dict(suite_result.statistics))
    log.info("suite %s on %s (%s): %s, %d failed (%d critical); report %s", suite.name, asset_name,
             run_name, "passed" if result.success else "FAILED", len(failed), len(failed_critical),
             report_path)
    return result


def raise_on_critical(*results: QualityResult) -> None:
    """Raise DataQualityError if any result has failed critical expectations.

    The message lists every failed critical expectation with its suite and the Data Docs page
    that shows it; non-critical failures are only logged.
    """
    lines = []
    for r in results:
        for failure in r.failed:
            if failure not in r.failed_critical:
                log.warning("non-critical expectation failed in %s: %s (report %s)", r.suite_name, failure,
                            r.report_path)
        lines += [f"  [{r.suite_name} on {r.asset_name}] {failure}\n    report: {r.report_path}"
                  for failure in r.failed_critical]
    if lines:
        raise DataQualityError(f"{len(lines)} critical data-quality expectation(s) failed:\n" + "\n".join(lines))


# --------------------------------------------------------------------------- helpers


def _source_of(df: Any) -> tuple[str, bool]:
    """GX data source name for the DataFrame's engine, and whether it is a Spark DataFrame."""
    if isinstance(df, SparkDataFrame):
        return "spark", True
    if isinstance(df, pd.DataFrame):
        return "pandas", False
    raise TypeError(f"validate() takes a Spark or pandas DataFrame, got {type(df).__name__}")


def _collect_if_small(df: SparkDataFrame, max_rows: int) -> pd.DataFrame | None:
    """The Spark DataFrame as pandas when it has at most `max_rows` rows and no NaN, else None.

    One Spark job, reading at most max_rows + 1 rows to the driver (as Arrow, which keeps null
    and NaN apart). A NaN keeps the frame on Spark: Spark orders NaN above every number, so a
    bounds expectation fails on it, while pandas reads NaN as missing and would pass it."""
    table = df.limit(max_rows + 1).toArrow()
    if table.num_rows > max_rows:
        return None
    for column in table.columns:
        if pa.types.is_floating(column.type) and pc.any(pc.is_nan(column)).as_py():
            return None
    return table.to_pandas()


def _batch_definition(context: FileDataContext, source_name: str, asset_name: str) -> Any:
    sources = context.data_sources
    try:
        source = sources.get(source_name)
    except (KeyError, ValueError, LookupError):
        source = sources.add_spark(name=source_name) if source_name == "spark" else sources.add_pandas(name=source_name)
    try:
        asset = source.get_asset(asset_name)
    except LookupError:
        asset = source.add_dataframe_asset(name=asset_name)
    try:
        return asset.get_batch_definition(BATCH_DEFINITION)
    except KeyError:
        return asset.add_batch_definition_whole_dataframe(BATCH_DEFINITION)


def _raised(exp_result: Any) -> bool:
    info = exp_result.exception_info or {}
    if "raised_exception" in info:
        return bool(info["raised_exception"])
    return any(isinstance(v, dict) and v.get("raised_exception") for v in info.values())


def _exception_message(exp_result: Any) -> str:
    info = exp_result.exception_info or {}
    if info.get("exception_message"):
        return str(info["exception_message"])
    for v in info.values():
        if isinstance(v, dict) and v.get("exception_message"):
            return str(v["exception_message"])
    return "unknown error"


def _describe(exp_result: Any) -> str:
    """`type(kwargs): observed` for one failed expectation result."""
    cfg = exp_result.expectation_config
    kwargs = {k: v for k, v in cfg.kwargs.items() if k not in ("batch_id", "result_format")}
    head = f"{cfg.type}({_kwargs_text(kwargs)})"
    if _raised(exp_result):
        return f"{head}: error: {_exception_message(exp_result)}"
    res = exp_result.result or {}
    mismatched = (res.get("details") or {}).get("mismatched")
    if isinstance(mismatched, dict):  # column-set expectations: name the drift, not the whole list
        return (f"{head}: unexpected columns {_short(sorted(mismatched.get('unexpected') or []))}, "
                f"missing columns {_short(sorted(mismatched.get('missing') or []))}")
    if "observed_value" in res:
        return f"{head}: observed {_short(res['observed_value'])}"
    if res.get("unexpected_count") is not None:
        sample = res.get("partial_unexpected_list") or []
        return (f"{head}: {res['unexpected_count']} unexpected of {res.get('element_count')} rows"
                + (f", e.g. {_short(sample[:5])}" if sample else ""))
    return f"{head}: failed"


def _kwargs_text(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_short(v)}" for k, v in kwargs.items() if v is not None)


def _short(value: Any, limit: int = 160) -> str:
    if isinstance(value, (set, frozenset)):
        value = sorted(value, key=str)
    text = json.dumps(value, default=str) if isinstance(value, (list, dict, tuple)) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _url_to_path(url: str | None, identifier: Any) -> str:
    if not url or not url.startswith("file://"):
        raise RuntimeError(f"GX returned no local Data Docs page for validation {identifier}: {url!r}")
    path = urllib.parse.unquote(url[len("file://"):])
    if not os.path.isfile(path):
        raise RuntimeError(f"Data Docs page {path} of validation {identifier} was not written")
    return path


def _local_dir(uri: str) -> str:
    """GX's folder for `uri`: itself when local, else this machine's mirror of it (core.storage.mirror),
    whose changes `validate` pushes back after each run."""
    return os.path.abspath(storage.mirror(uri))


def _check_name(what: str, name: str) -> None:
    if not _NAME_RE.match(name or ""):
        raise ValueError(f"bad {what} {name!r}: use letters, digits, '_', '.', '-' (it becomes a folder name)")
