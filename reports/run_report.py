"""The HTML run report of one logical date D: what was published, which check or gate stopped the
run, and the facts behind it (ARCHITECTURE.md, "Quality" and "Gates and publish").

    python -m reports.run_report --date 2026-02-02 --config var/artifacts/runs/2026-02-02/config.json

Written to `Paths.run_report(D)` = <reports>/runs/<D>/report.html, which the `cscnn_reports`
Airflow plugin serves; the DAG's `render_report` task calls `render(config_path, ds)` whatever
happened upstream, so the page also explains a failed run: every stage's output is optional
and a missing one is named, with the task that writes it.

The first screen answers the on-call questions: was anything published, and if not, which check
or gate stopped the run (with the Data Docs page of a failed expectation); the holdout AUC
against the floor and the live model; coverage; data quality. The details follow, collapsed.

The report only renders the typed records the stages wrote (core.records; each optional, each at
its `Paths` method, the one the writing stage uses):
  Paths.ingest_record(D)       IngestRecord: ingest counts, quarantine reasons, schema drift
  Paths.quality_summary(D)     QualitySummary: data-quality suites with their Data Docs pages
  Paths.features_record(D)     FeaturesRecord: window, vocab sizes, OOV rates, excluded days
  Paths.model_manifest(D)      ModelManifest: training metrics (train stage)
  Paths.lookup_manifest(D)     LookupManifest: lookup table facts
  Paths.validation_record(D)   ValidationRecord: gate verdicts, holdout metrics, coverage curve
  Paths.calibration_record(D)  CalibrationRecord, AttentionRecord and its PNG panels (validate
  Paths.attention_record(D)    stage, spark_jobs/report_inputs.py)
  Paths.published              versions v<N>-<D>/, and Paths.published_current (CurrentPointer)
  Paths.validation_record(*)   other dates, for the AUC-per-day chart

An absent record means its stage did not run for D; a malformed one is shown as unreadable, naming
its path. Every folder may be local or on object storage (core.storage). The page is one
self-contained file: inline CSS, inline SVG charts, PNG panels as data
URIs; every text taken from an input is escaped.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import html
import json
import logging
import math
import os
import posixpath
import sys
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Generic, Sequence, TypeVar

from core import storage
from core.config import ConfigError, PipelineConfig
from core.paths import Paths
from core.records import (QUARANTINE_TABLES, AttentionRecord, CalibrationRecord, CurrentPointer, FeaturesRecord,
                          GateVerdict, IngestRecord, LookupManifest, ModelManifest, QualitySummary, RecordError,
                          TimingRecord, ValidationRecord, read_record)
from core.timing import PHASES
from reports import svg

log = logging.getLogger("run_report")

HISTORY_DAYS = 90  # run dates shown in the AUC-per-day chart
MODEL_METRIC_ORDER = ("auc", "auc_cold", "logloss", "calibration", "mean_pred", "observed_ctr", "n", "n_cold",
                      "steps", "best_step", "early_stopped", "train_impressions", "impressions_per_s", "device",
                      "world_size")
R = TypeVar("R")

e = html.escape

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1100px;color:#222;
line-height:1.4;padding:0 16px}
h1{font-size:24px;margin-bottom:4px}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
h3{font-size:15px;margin-bottom:6px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}th{background:#f5f5f5}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.pass{background:#dff3e0;color:#14532d;font-weight:bold}.fail{background:#fde2e1;color:#7f1d1d;font-weight:bold}
.missing{background:#f3f3f3;color:#666}
.badge{display:inline-block;padding:3px 10px;border-radius:4px;margin-right:6px}
.note{color:#555;font-size:13px}.muted{color:#777}
figure{margin:12px 0}figcaption{font-size:12px;color:#555}
img.attn{image-rendering:pixelated;border:1px solid #ccc}
pre{background:#f7f7f7;padding:8px;overflow:auto;font-size:12px;max-height:400px}
ul.failed{font-size:12px;font-family:monospace;margin:4px 0}
.screen{border:1px solid #ddd;border-radius:6px;padding:12px 16px;margin:12px 0}
.screen h2{border:0;margin:0 0 8px 0}
.headline{font-size:18px;font-weight:bold;padding:8px 12px;border-radius:4px;margin:8px 0}
ul.stops{margin:4px 0 8px 0}ul.stops li{margin:4px 0}
details{border-top:1px solid #ddd;padding:6px 0}details>summary{cursor:pointer;font-size:16px;font-weight:bold}
details details>summary{font-size:13px;font-weight:normal}
"""


class ReportError(ValueError):
    """The report cannot be written (bad date, unreadable config)."""


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Input(Generic[R]):
    """One optional record: its path, the typed record (None when absent or malformed), and why."""

    path: str
    record: R | None = None
    error: str | None = None  # set when the file exists but is not the shape its stage writes

    @property
    def present(self) -> bool:
        return self.record is not None


def load(cls: type[R], path: str) -> Input[R]:
    """The record of type `cls` at `path` as an Input (absent: record None; malformed: error set)."""
    try:
        return Input(path, read_record(cls, path))
    except RecordError as err:
        return Input(path, None, str(err))


@dataclass(frozen=True)
class RunInputs:
    """Everything the report reads for run date `ds` (local paths)."""

    cfg: PipelineConfig
    ds: str
    config_path: str
    paths: Paths
    report_path: str
    reports_dir: str
    published_dir: str
    ingest: Input[IngestRecord]
    quality: Input[QualitySummary]
    features: Input[FeaturesRecord]
    model_manifest: Input[ModelManifest]
    lookup_manifest: Input[LookupManifest]
    validation: Input[ValidationRecord]
    calibration: Input[CalibrationRecord]
    attention: Input[AttentionRecord]
    current: Input[CurrentPointer]
    published_folders: tuple[str, ...]  # v<N>-<D> folders of this date
    timings: tuple[Input[TimingRecord], ...] = ()  # one per task that ran, in the order they started


def parse_ds(ds: str | None) -> str:
    """The run date as YYYY-MM-DD; a ReportError naming the value otherwise."""
    try:
        return dt.date.fromisoformat(str(ds)).isoformat()
    except ValueError:
        raise ReportError(f"bad run date {ds!r}; expected YYYY-MM-DD (the DAG passes its logical date `ds`)") from None


def load_run_config(config_path: str) -> PipelineConfig:
    """The run's resolved PipelineConfig JSON (written by the DAG's build_config task)."""
    try:
        text = storage.read_text(config_path)
    except OSError as err:
        raise ReportError(f"cannot read the run's config {config_path!r}: {err}") from None
    try:
        return PipelineConfig.from_json(text)
    except (ConfigError, json.JSONDecodeError) as err:
        raise ReportError(f"the run's config {config_path!r} is not a valid PipelineConfig JSON: {err}") from None


def gather(cfg: PipelineConfig, ds: str, config_path: str = "") -> RunInputs:
    """Locate and read every input of run date `ds` (see the module docstring)."""
    paths = Paths.of(cfg)

    published = paths.published
    folders = tuple(n for n in storage.children(published) if n.endswith(f"-{ds}"))
    timings_dir = paths.timings_dir(ds)
    timings = [load(TimingRecord, storage.join(timings_dir, n)) for n in storage.children(timings_dir)
               if n.endswith(".json")]
    timings.sort(key=lambda t: (t.record is None, t.record.started_at if t.record else t.path))
    return RunInputs(
        cfg=cfg, ds=ds, config_path=config_path, paths=paths,
        report_path=paths.run_report(ds), reports_dir=paths.reports,
        published_dir=published,
        ingest=load(IngestRecord, paths.ingest_record(ds)),
        quality=load(QualitySummary, paths.quality_summary(ds)),
        features=load(FeaturesRecord, paths.features_record(ds)),
        model_manifest=load(ModelManifest, paths.model_manifest(ds)),
        lookup_manifest=load(LookupManifest, paths.lookup_manifest(ds)),
        validation=load(ValidationRecord, paths.validation_record(ds)),
        calibration=load(CalibrationRecord, paths.calibration_record(ds)),
        attention=load(AttentionRecord, paths.attention_record(ds)),
        current=load(CurrentPointer, paths.published_current),
        published_folders=folders,
        timings=tuple(timings),
    )


# --------------------------------------------------------------------------- stages


@dataclass(frozen=True)
class StageStatus:
    task_id: str  # the DAG task that produces the output
    output: str  # what it writes (a path)
    produced: bool
    ok: bool | None  # the output says the stage succeeded (True), failed (False), or nothing (None)
    note: str = ""


def stage_statuses(inp: RunInputs) -> list[StageStatus]:
    """Which stages of the run produced their output, in DAG order."""
    def from_input(task: str, rec: Input[Any], ok: bool | None = None, note: str = "") -> StageStatus:
        return StageStatus(task, rec.path, rec.present, ok if rec.present else None, rec.error or note)

    quality, validation = inp.quality.record, inp.validation.record
    quality_ok = quality.success if quality else None
    quality_note = f"{quality.critical_failures} critical expectation(s) failed" if quality and not quality.success \
        else ""
    gates = validation.gates if validation else []
    failed_gates = [g.name for g in gates if not g.passed]
    return [
        from_input("ingest_day", inp.ingest),
        from_input("check_bronze_quality", inp.quality, quality_ok, quality_note),
        from_input("build_window", inp.features),
        from_input("train_model", inp.model_manifest),
        from_input("build_lookup_table", inp.lookup_manifest),
        from_input("validate_gates", inp.validation, not failed_gates if gates else None,
                   f"failed gate(s): {', '.join(failed_gates)}" if failed_gates else ""),
        StageStatus("publish", os.path.join(inp.published_dir, f"v<N>-{inp.ds}"), bool(inp.published_folders), None,
                    ", ".join(inp.published_folders)),
    ]


# --------------------------------------------------------------------------- small helpers


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(float(v)) else None


def fmt(v: Any) -> str:
    """Display text of a scalar: 4 significant digits for floats, n/a for NaN, '-' for None."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "n/a"
        return f"{v:.4f}" if abs(v) < 10 else f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _pct(v: Any) -> str:
    n = _num(v)
    return "-" if n is None else f"{100 * n:.2f}%"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[int] = ()) -> str:
    """A table of escaped cells; a cell given as ("html", text) is inserted raw (built here)."""
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for i, c in enumerate(row):
            cls = ' class="num"' if i in numeric else ""
            if isinstance(c, tuple) and len(c) == 2 and c[0] == "html":
                cells.append(f"<td{cls}>{c[1]}</td>")
            else:
                cells.append(f"<td{cls}>{e(fmt(c))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _verdict(ok: bool | None, yes: str = "PASS", no: str = "FAIL", none: str = "-") -> tuple[str, str]:
    if ok is None and not none:
        return ("html", "")
    cls, text = ("pass", yes) if ok is True else ("fail", no) if ok is False else ("missing", none)
    return ("html", f'<span class="badge {cls}">{e(text)}</span>')


def _missing(what: str, rec: Input[Any], task: str) -> str:
    """Why a section has nothing to show: its record is absent (the stage did not run) or unreadable."""
    if rec.error:
        return (f'<p class="fail note">{e(what)} unreadable: {e(rec.error)} '
                f"(written by stage <code>{e(task)}</code>).</p>")
    return (f'<p class="missing note">{e(what)}: <code>{e(rec.path)}</code> not found '
            f"(stage <code>{e(task)}</code> produced no output for this date).</p>")


def _section(title: str, anchor: str, body: str) -> str:
    """A detail section below the first screen, collapsed."""
    return f'<details id="{e(anchor)}"><summary>{e(title)}</summary>{body}</details>'


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class Stop:
    """What stopped the run before publish: the task, what failed, and a link (HTML built here)."""

    task_id: str
    what: str
    link: str = ""


def _report_dir(inp: RunInputs) -> str:
    return os.path.dirname(inp.report_path)


def _docs_index_link(inp: RunInputs) -> str:
    index = inp.paths.data_docs_index
    return _data_docs_link(_report_dir(inp), inp.reports_dir, index) if storage.exists(index) else ""


def stops(inp: RunInputs, statuses: list[StageStatus]) -> list[Stop]:
    """Why nothing was published for the date: failed critical expectations, failed gates, else
    the first stage without output (empty when the date was published)."""
    if inp.published_folders:
        return []
    out: list[Stop] = []
    quality, validation = inp.quality.record, inp.validation.record
    if quality is not None and not quality.success:
        for name, suite in sorted(quality.suites.items()):
            link = _data_docs_link(_report_dir(inp), inp.reports_dir, suite.report_path)
            out += [Stop("check_bronze_quality", f"{name}: {f}", link) for f in suite.failed_critical]
    for g in validation.gates if validation else []:
        if g.passed:
            continue
        what = f"gate {g.name}: value {fmt(g.value)}, threshold {fmt(g.threshold)}"
        link = ""
        if g.name == "lookup_quality":
            link = _data_docs_link(_report_dir(inp), inp.reports_dir, validation.data_docs)
        elif g.note:
            what += f" ({g.note})"
        out.append(Stop("validate_gates", what, link))
    if not out:
        first = next((s for s in statuses if not s.produced and s.task_id != "publish"), None)
        if first is not None:
            out.append(Stop(first.task_id, f"produced no output for {inp.ds} (no {os.path.basename(first.output)}); "
                                           "its task log in the Airflow UI says why"))
        else:
            out.append(Stop("publish", "every stage produced its output, but no version of this date was "
                                       "published; the publish task log says why"))
    return out


def section_first_screen(inp: RunInputs, statuses: list[StageStatus]) -> str:
    """Published or not and why, AUC vs floor and live, coverage, data quality."""
    cfg, val = inp.cfg, inp.validation.record
    live = inp.current.record.dir if inp.current.record else None
    live_text = f"live now: {live}" if live else "nothing is live yet"
    if inp.published_folders:
        headline = (f'<div class="headline pass">Published {e(", ".join(inp.published_folders))} for {e(inp.ds)}'
                    f' <span class="note">({e(live_text)})</span></div>')
    else:
        headline = (f'<div class="headline fail">Nothing published for {e(inp.ds)} '
                    f'<span class="note">({e(live_text)}, unchanged)</span></div>')
    stopped = stops(inp, statuses)
    stop_html = ""
    if stopped:
        items = "".join(f"<li><code>{e(s.task_id)}</code> failed: {e(s.what)}"
                        + (f" &mdash; {s.link}" if s.link else "") + "</li>" for s in stopped)
        stop_html = f"<p><b>Stopped by</b></p><ul class='stops'>{items}</ul>"

    def gate(name: str) -> GateVerdict | None:
        return val.gate(name) if val else None

    floor, vs_live, coverage = gate("auc_floor"), gate("auc_vs_live"), gate("coverage")
    auc = val.metric("auc") if val else None
    live_auc = val.metric("live_auc") if val else None
    live_cell = (f"live model {fmt(live_auc)}, at least {fmt(vs_live.threshold if vs_live else None)} needed"
                 if live_auc is not None else "no live model to compare with" if vs_live else "-")
    quality = inp.quality.record
    q_ok = quality.success if quality else None
    q_text = "no quality summary"
    if quality is not None:
        failed_suites = [n for n, s in sorted(quality.suites.items()) if not s.success]
        q_text = (f"{fmt(quality.critical_failures)} critical failure(s)"
                  + (f" in {', '.join(failed_suites)}" if failed_suites else ""))
    docs = _docs_index_link(inp)
    ingest = inp.ingest.record
    shares = [(t, ingest.quarantine_share(t)) for t in QUARANTINE_TABLES] if ingest else []
    quarantine = ", ".join(f"{_pct(v)} of {t}" for t, v in shares if v is not None) or "-"
    rows = [
        ("Holdout AUC", _verdict(floor.passed if floor else None), auc, f"floor {fmt(cfg.gates.auc_floor)}"),
        ("AUC vs live", _verdict(vs_live.passed if vs_live else None), auc, live_cell),
        ("Coverage", _verdict(coverage.passed if coverage else None), _pct(coverage.value if coverage else None),
         f"at least {_pct(cfg.gates.coverage_min)} of holdout impressions in the table"),
        ("Data quality", _verdict(q_ok), q_text, ("html", docs) if docs else "-"),
        ("Quarantined", _verdict(None, none="info"), quarantine, "of the day's landing rows (per reason: Details, Ingest)"),
    ]
    features = inp.features.record
    if features is not None and features.excluded_days:
        rows.append(("Excluded days", _verdict(None, none="info"),
                     ", ".join(f"{d.date} ({d.reason})" for d in features.excluded_days),
                     "days left out of the training window"))
    facts = (f"variant <b>{e(cfg.model.variant)}</b>, backbone {e(cfg.model.backbone)}, "
             f"window {cfg.features.window_days} days, config hash <code>{e(cfg.config_hash())}</code>")
    generated = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return (f"<h1>CSCNN run report: {e(inp.ds)}</h1><div class='screen' id='summary'>{headline}{stop_html}"
            + _table(["question", "verdict", "value", "against"], rows)
            + f"<p class='muted note'>{facts}; generated {e(generated)}.</p></div>")


def section_stages(statuses: list[StageStatus]) -> str:
    rows = [(s.task_id, ("html", f"<code>{e(s.output)}</code>"),
             _verdict(True if s.produced else None, yes="produced", none="no output"),
             _verdict(s.ok, yes="ok", no="failed", none=""), s.note) for s in statuses]
    return _section("Stages", "stages", _table(["task", "output", "status", "result", "note"], rows))


def section_timings(inp: RunInputs) -> str:
    """Where each task's time went (core.timing records), start-up phases first."""
    if not inp.timings:
        return _section("Where the time went", "timings",
                        f"<p class='missing'>no timing records under <code>{e(inp.paths.timings_dir(inp.ds))}</code>"
                        " (the stages write one each when they end)</p>")
    rows, total = [], 0.0
    for t in inp.timings:
        rec = t.record
        if rec is None:
            rows.append((os.path.basename(t.path), t.error or "unreadable", *[""] * (len(PHASES) + 2)))
            continue
        total += rec.total_s
        seconds = [rec.total_s, rec.startup_s, *[rec.phases.get(p) for p in PHASES]]
        rows.append((rec.task, rec.status, *["-" if x is None else f"{x:.1f}" for x in seconds]))
    header = ["task", "status", "total s", "start-up s", *[p.replace("_", " ") for p in PHASES]]
    note = (f"<p class='note'>{len(inp.timings)} task(s), {total:.1f} s in their processes. Start-up = launch "
            "(spark-submit's JVM until Python started) + imports + spark session; writes include the Spark work "
            "a Delta write computes. Time in Airflow around each process is not included.</p>")
    return _section("Where the time went", "timings",
                    note + _table(header, rows, numeric=range(2, len(header))))


def section_gates(inp: RunInputs) -> str:
    rec = inp.validation
    val = rec.record
    if val is None:
        return _section("Gate verdicts", "gates", _missing("Validation record", rec, "validate_gates"))
    if not val.gates:
        body = f'<p class="note">The validation record <code>{e(rec.path)}</code> lists no gates.</p>'
    else:
        rows = [(g.name, _verdict(g.passed), g.value, g.threshold, g.note) for g in val.gates]
        body = _table(["gate", "verdict", "value", "threshold", "note"], rows, numeric=(2, 3))
    facts: dict[str, Any] = {
        "run_date": val.run_date, "passed": val.passed, "model_sha256": val.model_sha256,
        "lookup_manifest_sha256": val.lookup_manifest_sha256, "model_version": val.model_version,
        "config_hash": val.config_hash, "validated_at": val.validated_at, "seconds": val.seconds,
        "serving_precisions": ", ".join(val.serving_precisions),
        **{f"metrics.{k}": v for k, v in val.metrics.items()},
        **{f"precision_check.{p}.max_abs_score_diff": c.max_abs_score_diff for p, c in val.precision_check.items()},
    }
    if val.data_docs:
        body += (f"<p class='note'>Lookup-table quality checks: "
                 f"{_data_docs_link(_report_dir(inp), inp.reports_dir, val.data_docs)}</p>")
    body += "<h3>Validation record</h3>" + _table(["key", "value"], sorted(facts.items()), numeric=(1,))
    return _section("Gate verdicts", "gates", body)


def section_model(inp: RunInputs) -> str:
    rec = inp.model_manifest
    manifest = rec.record
    if manifest is None:
        return _section("Model", "model", _missing("Model manifest", rec, "train_model"))
    m = manifest.metrics
    keys = [k for k in MODEL_METRIC_ORDER if k in m] + sorted(k for k in m if k not in MODEL_METRIC_ORDER)
    rows = [(k, m[k]) for k in keys]
    facts = [("variant", manifest.variant), ("warm start from", manifest.warm_start_from),
             ("training seconds", manifest.seconds), ("config hash", manifest.config_hash)]
    body = ("<h3>Validation metrics (train stage: a seeded sample of the window, never the run date; "
            "the run date's holdout is scored under Gate verdicts)</h3>" + _table(["metric", "value"], rows, numeric=(1,))
            + _table(["fact", "value"], facts))
    return _section("Model", "model", body)


def _data_docs_link(report_dir: str, reports_dir: str, page: str | None) -> str:
    """A relative link from the report's folder to a Data Docs page served by the plugin."""
    if not page:
        return '<span class="muted">no page</span>'
    # Absolute local paths or URIs (storage.* is resolved); compared and related as posix paths.
    target, root = posixpath.normpath(page), posixpath.normpath(reports_dir)
    if posixpath.commonpath([target, root]) != root:
        return f'<code>{e(page)}</code> <span class="muted">(outside the served reports folder)</span>'
    rel = posixpath.relpath(target, posixpath.normpath(report_dir))
    return f'<a href="{e(urllib.parse.quote(rel))}">Data Docs</a>'


def section_quality(inp: RunInputs) -> str:
    rec = inp.quality
    quality = rec.record
    if quality is None:
        return _section("Data quality", "quality", _missing("Quality summary", rec, "check_bronze_quality"))
    rows, details = [], []
    for name, s in sorted(quality.suites.items()):
        rows.append((name, _verdict(s.success), s.evaluated_expectations, len(s.failed), len(s.failed_critical),
                     ("html", _data_docs_link(_report_dir(inp), inp.reports_dir, s.report_path))))
        if s.failed:
            items = "".join(f"<li>{'<b>CRITICAL</b> ' if f in s.failed_critical else ''}{e(f)}</li>" for f in s.failed)
            details.append(f"<h3>{e(name)}: failed expectations</h3><ul class='failed'>{items}</ul>")
    trailing = quality.trailing
    volume = (f"{fmt(trailing.mean_rows)} impressions per day over the {fmt(trailing.days)} trailing day(s) "
              "that arrived" if trailing else "no trailing days to compare with")
    head = (f"<p>Overall: {_verdict(quality.success)[1]} {e(fmt(quality.critical_failures))} critical failure(s). "
            f"Volume baseline: {e(volume)}.</p>")
    table = _table(["suite", "result", "expectations", "failed", "critical", "report"], rows, numeric=(2, 3, 4))
    return _section("Data quality", "quality", head + table + "".join(details))


def section_ingest(inp: RunInputs) -> str:
    rec = inp.ingest
    d = rec.record
    if d is None:
        return _section("Ingest", "ingest", _missing("Ingest record", rec, "ingest_day"))
    rows = [(t, d.landing[t], d.bronze[t], d.quarantined[t], _pct(d.quarantine_share(t))) for t in QUARANTINE_TABLES]
    body = _table(["table", "landing rows", "bronze rows", "quarantined rows", "quarantined share"], rows,
                  numeric=(1, 2, 3, 4))
    reason_rows = [(src, r, n, _pct(n / d.landing[src]) if d.landing.get(src) else "-")
                   for src in sorted(d.reasons) for r, n in sorted(d.reasons[src].items())]
    body += ("<h3>Quarantine rate per reason</h3>"
             + _table(["source", "reason", "rows", "share of landing rows"], reason_rows, numeric=(2, 3))
             if reason_rows else "<p class='note'>Nothing quarantined.</p>")
    drift_rows = [(src, ", ".join(v.extra) or "-", ", ".join(v.missing) or "-")
                  for src, v in sorted(d.schema_drift.items())]
    if any(r[1] != "-" or r[2] != "-" for r in drift_rows):
        body += "<h3>Schema drift</h3>" + _table(["source", "extra columns", "missing optional columns"], drift_rows)
    else:
        body += "<p class='note'>No schema drift.</p>"
    body += f"<p class='note'>New images: {e(fmt(d.new_images))}; ingest took {e(fmt(d.seconds))} s.</p>"
    return _section("Ingest", "ingest", body)


def section_features(inp: RunInputs) -> str:
    rec = inp.features
    d = rec.record
    if d is None:
        return _section("Features", "features", _missing("Features metadata", rec, "build_window"))
    facts = [("window", f"{d.window_start} .. {d.window_end}"),
             ("window days read", len(d.window_days)), ("missing days", ", ".join(d.missing_days) or "none"),
             ("train rows", d.rows.get("train")), ("holdout rows", d.rows.get("holdout")),
             ("train label rate", d.label_rate.get("train")), ("holdout label rate", d.label_rate.get("holdout")),
             ("holdout cold-ad share", d.cold_rate.get("holdout")),
             ("impressions per ad group (train)", d.mean_impressions_per_group.get("train"))]
    body = _table(["fact", "value"], facts, numeric=(1,))
    if d.excluded_days:
        body += ("<h3>Days excluded from the window</h3>"
                 + _table(["date", "reason"], [(x.date, x.reason) for x in d.excluded_days]))
    oov_t, oov_h = d.oov_rate.get("train", {}), d.oov_rate.get("holdout", {})
    names = sorted(set(d.vocab_sizes) | set(d.oov_rate_window) | set(oov_h))
    rows = [(n, d.vocab_sizes.get(n), _pct(d.oov_rate_window.get(n)), _pct(oov_t.get(n)), _pct(oov_h.get(n)))
            for n in names]
    body += ("<h3>Vocabularies and OOV rates</h3>"
             + _table(["field", "vocab size", "OOV (window counts)", "OOV (train)", "OOV (holdout)"], rows,
                      numeric=(1, 2, 3, 4)))
    return _section("Features", "features", body)


@dataclass(frozen=True)
class History:
    """The AUC-per-day chart's data: one dict per run date with an AUC, and the unreadable records."""

    points: list[dict[str, Any]]  # {date, auc, auc_cold, live_auc}
    unreadable: list[str]  # RecordError messages (each names its path)


def auc_history(paths: Paths, upto: str, limit: int = HISTORY_DAYS) -> History:
    """The AUC, cold-ad AUC and live model's AUC of run dates <= `upto` (the last `limit`), from
    their validation records."""
    dates = []
    for name in storage.children(paths.runs):
        try:
            day = dt.date.fromisoformat(name).isoformat()
        except ValueError:
            continue
        if day <= upto:
            dates.append(day)
    points, unreadable = [], []
    for day in sorted(dates)[-limit:]:
        rec = load(ValidationRecord, paths.validation_record(day))
        if rec.error:
            unreadable.append(rec.error)
        if rec.record is not None:
            point = {"date": day, **{k: rec.record.metric(k) for k in ("auc", "auc_cold", "live_auc")}}
            if any(point[k] is not None for k in ("auc", "auc_cold", "live_auc")):
                points.append(point)
    return History(points, unreadable)


def section_auc_history(inp: RunInputs) -> str:
    found = auc_history(inp.paths, inp.ds)
    history = found.points
    skipped = "".join(f"<p class='fail note'>Left out: {e(err)}</p>" for err in found.unreadable)
    if not history:
        return _section("AUC per day", "auc-history",
                        f"<p class='note'>No run up to {e(inp.ds)} recorded an AUC (validation record).</p>"
                        + skipped)
    labels = {float(i): h["date"] for i, h in enumerate(history)}
    series = [svg.Series(name, [(float(i), h[key]) for i, h in enumerate(history)], dashed=dashed)
              for key, name, dashed in (("auc", "holdout AUC", False), ("auc_cold", "cold-ad AUC", False),
                                        ("live_auc", "live model AUC", True))
              if any(h[key] is not None for h in history)]
    chart = svg.line_chart(series, title="Holdout AUC per run date", x_label="run date", y_label="AUC",
                           x_tick_labels=labels,
                           reference_lines=[svg.ReferenceLine(inp.cfg.gates.auc_floor,
                                                              f"floor {inp.cfg.gates.auc_floor:g}", "#d62728")])
    rows = [(h["date"], h["auc"], h["auc_cold"], h["live_auc"]) for h in reversed(history)]
    body = (f"<figure>{chart}<figcaption>{len(history)} run date(s) up to {e(inp.ds)}; dashed red: the AUC "
            f"floor gate.</figcaption></figure><details><summary>values</summary>"
            + _table(["run date", "AUC", "cold-ad AUC", "live model AUC"], rows, numeric=(1, 2, 3)) + "</details>"
            + skipped)
    return _section("AUC per day", "auc-history", body)


def section_lookup(inp: RunInputs) -> str:
    rec = inp.lookup_manifest
    m = rec.record
    body = ""
    bytes_per_ad = m.bytes_per_ad if m else None
    if m is not None:
        facts = [("rows (ads)", m.rows), ("stored dims", m.dims), ("dtype", m.dtype), ("reduction", m.reduction),
                 ("bytes per ad", m.bytes_per_ad), ("serving rows size", f"{m.rows * m.bytes_per_ad / 1e6:.2f} MB"),
                 ("candidate ads", m.candidates),
                 ("budget (ads / bytes, 0 = none)", f"{m.budget_ads} / {m.budget_bytes}"),
                 ("window impressions of kept ads", _pct(m.window_impression_share)),
                 ("model version", m.model_version)]
        body += _table(["fact", "value"], facts, numeric=(1,))
    else:
        body += _missing("Lookup table manifest", rec, "build_lookup_table")
    curve = inp.validation.record.coverage_curve if inp.validation.record else []
    points = sorted((float(c.budget_ads), c.coverage) for c in curve)
    if not points:
        body += "<p class='note'>No coverage curve: the validate stage wrote no record for this date.</p>"
        return _section("Lookup table and coverage", "lookup", body)
    xs = [x for x, _ in points]
    x_log = max(xs) / min(xs) >= 20
    x_label = "table size (ads)" + (f"; {bytes_per_ad:g} bytes per ad" if bytes_per_ad else "")
    chart = svg.line_chart([svg.Series("coverage of holdout impressions", points)],
                           title="Coverage vs lookup-table size", x_label=x_label, y_label="coverage",
                           x_log=x_log, y_range=(min(0.0, min(y for _, y in points)), 1.0),
                           reference_lines=[svg.ReferenceLine(inp.cfg.gates.coverage_min,
                                                              f"gate {inp.cfg.gates.coverage_min:g}", "#d62728")])
    rows = [(int(x), _pct(y), f"{x * bytes_per_ad / 1e6:.2f} MB" if bytes_per_ad else "-") for x, y in points]
    body += ("<figure>" + chart + "<figcaption>Holdout impressions covered by the table's top ads "
             "(frequency order), validate stage.</figcaption></figure>"
             + "<details><summary>values</summary>" + _table(["ads", "coverage", "size"], rows, numeric=(0, 1, 2))
             + "</details>")
    return _section("Lookup table and coverage", "lookup", body)


# --------------------------------------------------------------------------- model-dependent sections (recorded)


def section_calibration(inp: RunInputs) -> str:
    title = "Calibration"
    cal = inp.calibration.record
    if cal is None:
        return _section(title, "calibration", _missing("Calibration record", inp.calibration, "validate_gates"))
    points = [(b.mean_pred, b.observed_ctr) for b in cal.bins]
    if not points:
        return _section(title, "calibration", "<p class='note'>The holdout had no rows to bin.</p>")
    hi = max(max(x for x, _ in points), max(y for _, y in points)) * 1.1 or 1.0
    chart = svg.line_chart([svg.Series("holdout bins", points)], title="Reliability: observed vs predicted CTR",
                           x_label="mean predicted CTR in bin", y_label="observed CTR", x_range=(0.0, hi),
                           y_range=(0.0, hi), diagonal=True)
    rows = [(b.lo, b.hi, b.n, b.mean_pred, b.observed_ctr) for b in cal.bins]
    body = (f"<figure>{chart}<figcaption>Equal-count bins of the full model's predictions on all "
            f"{cal.rows:,} holdout impressions (validate stage); dashed: perfect calibration.</figcaption></figure>"
            "<details><summary>bins</summary>"
            + _table(["lowest pred", "highest pred", "impressions", "mean pred", "observed CTR"], rows,
                     numeric=(0, 1, 2, 3, 4)) + "</details>")
    return _section(title, "calibration", body)


def _png_data_uri(path: str) -> str:
    return "data:image/png;base64," + base64.b64encode(storage.read_bytes(path)).decode("ascii")


def section_attention(inp: RunInputs) -> str:
    rec = inp.attention
    title = "Category-specific spatial attention"
    att = rec.record
    if att is None:
        return _section(title, "attention", _missing("Attention record", rec, "validate_gates"))
    if not att.panels:
        return _section(title, "attention", f"<p class='note'>Nothing to draw: {e(str(att.unavailable))}.</p>")
    figures = []
    for p in att.panels:
        png = posixpath.join(posixpath.dirname(rec.path), p.png)
        label = f"category idx {p.category_idx}" + (f" (category_id {p.category_id})" if p.category_id is not None
                                                    else "")
        caption = (f"{label}, {p.holdout_impressions:,} holdout impressions: ads {', '.join(map(str, p.ad_ids))}; "
                   f"M_s in [{p.map_min:.3f}, {p.map_max:.3f}], scaled per image.")
        if not storage.exists(png):
            figures.append(f"<p class='fail note'>{e(label)}: panel <code>{e(p.png)}</code> is missing.</p>")
            continue
        figures.append(f'<figure><img class="attn" data-category="{p.category_idx}" alt="{e(label)} attention '
                       f'overlays" src="{_png_data_uri(png)}"><figcaption>{e(caption)}</figcaption></figure>')
    intro = (f"<p class='note'>Spatial attention map M_s of the last attentive conv ({e(str(att.layer))}) of the "
             "visual tower, upsampled to the image and drawn over it (top: image; bottom: overlay, red = high "
             "attention), for the holdout's most frequent ads of its most frequent categories (validate stage, "
             "this run's model).</p>")
    return _section(title, "attention", intro + "".join(figures))


def section_config(inp: RunInputs) -> str:
    text = json.dumps(inp.cfg.to_dict(), indent=2, sort_keys=True, default=str)
    return _section("Configuration", "config", f"<pre>{e(text)}</pre>")


# --------------------------------------------------------------------------- page


def render_html(inp: RunInputs) -> str:
    """The whole report page for gathered inputs: the first screen, then the details collapsed."""
    statuses = stage_statuses(inp)
    parts = [
        section_first_screen(inp, statuses), "<h2>Details</h2>", section_stages(statuses), section_timings(inp),
        section_gates(inp),
        section_model(inp), section_auc_history(inp), section_quality(inp), section_ingest(inp),
        section_features(inp), section_lookup(inp), section_calibration(inp), section_attention(inp),
        section_config(inp),
    ]
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>CSCNN run report {e(inp.ds)}</title><style>{CSS}</style></head><body>"
            + "".join(parts) + "</body></html>")


def render(config_path: str, ds: str | None) -> str:
    """Write the run report of date `ds` for the run's config file; return the report's path."""
    started = time.monotonic()
    day = parse_ds(ds)
    cfg = load_run_config(config_path)
    inp = gather(cfg, day, config_path)
    page = render_html(inp)
    storage.write_bytes(inp.report_path, page.encode("utf-8"))  # whole: the plugin never serves half a page
    log.info("run report %s written in %.1f s", inp.report_path, time.monotonic() - started)
    return inp.report_path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write the HTML run report of one logical date.")
    ap.add_argument("--date", required=True, help="logical run date YYYY-MM-DD")
    ap.add_argument("--config", required=True, help="the run's resolved config JSON "
                                                     "(<artifacts>/runs/<D>/config.json)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=os.environ.get("CSCNN_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        print(render(args.config, args.date))
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
