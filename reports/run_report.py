"""The HTML run report of one logical date D (DESIGN.md section 3, "report").

    python -m reports.run_report --date 2026-02-02 --config var/artifacts/runs/2026-02-02/config.json

Written to `Paths.run_report(D)` = <reports>/runs/<D>/report.html, which the `cscnn_reports`
Airflow plugin serves; the DAG's `render_report` task calls `render(config_path, ds)` whatever
happened upstream, so the page also explains a failed run: every stage's output is optional
and a missing one is named.

The first screen answers the on-call questions: was anything published, and if not, which check
or gate stopped the run (with the Data Docs page of a failed expectation); the holdout AUC
against the floor and the live model; coverage; data quality. The details follow, collapsed.

The report only renders what the stages wrote (all under the run's storage; each optional):
  <artifacts>/runs/D/ingest.json            ingest counts, quarantine reasons, schema drift
  <reports>/quality/D.json                  data-quality suites with their Data Docs pages
  <artifacts>/runs/D/features.json          window, vocab sizes, OOV rates, excluded days
  <artifacts>/runs/D/model/manifest.json    training metrics (train stage)
  <artifacts>/runs/D/lookup/manifest.json   lookup table facts
  <artifacts>/runs/D/validation.json        gate verdicts, holdout metrics, coverage curve
  <artifacts>/runs/D/report_data/           calibration bins and attention panels (validate
                                            stage, reports.report_data)
  <artifacts>/published/                    versions v<N>-<D>/ and current.json
  <artifacts>/runs/*/validation.json        other dates, for the AUC-per-day chart

The page is one self-contained file: inline CSS, inline SVG charts, PNG panels as data URIs;
every text taken from an input is escaped.
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
import sys
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from core.config import ConfigError, PipelineConfig
from core.paths import Paths, local_path
from reports import svg
from reports.report_data import ReportDataError, read_attention, read_calibration

log = logging.getLogger("run_report")

HISTORY_DAYS = 90  # run dates shown in the AUC-per-day chart
MODEL_METRIC_ORDER = ("auc", "auc_cold", "logloss", "calibration", "mean_pred", "observed_ctr", "n", "n_cold",
                      "steps", "best_step", "early_stopped", "train_impressions", "impressions_per_s", "device",
                      "world_size")

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
    """The report cannot be written (bad date, unreadable config, non-local storage)."""


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Record:
    """One optional JSON input: its path, its data (None when absent or unreadable), and why."""

    path: str
    data: Any = None
    error: str | None = None  # set when the file exists but is not valid JSON

    @property
    def present(self) -> bool:
        return self.data is not None


def read_record(path: str) -> Record:
    """The JSON file at `path` as a Record (absent: data None; unreadable: error set)."""
    try:
        with open(path) as f:
            return Record(path, json.load(f))
    except FileNotFoundError:
        return Record(path)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        return Record(path, None, f"unreadable: {err}")


@dataclass(frozen=True)
class RunInputs:
    """Everything the report reads for run date `ds` (local paths)."""

    cfg: PipelineConfig
    ds: str
    config_path: str
    report_path: str
    reports_dir: str
    artifacts_dir: str
    run_dir: str
    ingest: Record
    quality: Record
    features: Record
    model_manifest: Record
    lookup_manifest: Record
    validation: Record
    calibration: Record  # reports.report_data.CalibrationRecord (validate stage)
    attention: Record  # reports.report_data.AttentionRecord (validate stage)
    current: Record  # <artifacts>/published/current.json
    published_folders: tuple[str, ...]  # v<N>-<D> folders of this date


def _local(uri: str, what: str) -> str:
    try:
        return os.path.abspath(local_path(uri))
    except ValueError:
        raise ReportError(f"the run report reads and writes local folders; storage.{what} is {uri!r}. "
                          "Set it to a local path (or a local mirror of it)") from None


def parse_ds(ds: str | None) -> str:
    """The run date as YYYY-MM-DD; a ReportError naming the value otherwise."""
    try:
        return dt.date.fromisoformat(str(ds)).isoformat()
    except ValueError:
        raise ReportError(f"bad run date {ds!r}; expected YYYY-MM-DD (the DAG passes its logical date `ds`)") from None


def load_run_config(config_path: str) -> PipelineConfig:
    """The run's resolved PipelineConfig JSON (written by the DAG's build_config task)."""
    try:
        with open(config_path) as f:
            text = f.read()
    except OSError as err:
        raise ReportError(f"cannot read the run's config {config_path!r}: {err}") from None
    try:
        return PipelineConfig.from_json(text)
    except (ConfigError, json.JSONDecodeError) as err:
        raise ReportError(f"the run's config {config_path!r} is not a valid PipelineConfig JSON: {err}") from None


def gather(cfg: PipelineConfig, ds: str, config_path: str = "") -> RunInputs:
    """Locate and read every input of run date `ds` (see the module docstring)."""
    paths = Paths.of(cfg)
    reports_dir = _local(paths.reports, "reports_uri")
    artifacts_dir = _local(paths.artifacts, "artifacts_uri")
    run_dir = _local(paths.run_dir(ds), "artifacts_uri")
    published = os.path.join(artifacts_dir, "published")
    folders = tuple(sorted(n for n in os.listdir(published) if n.endswith(f"-{ds}"))) \
        if os.path.isdir(published) else ()
    return RunInputs(
        cfg=cfg, ds=ds, config_path=config_path,
        report_path=_local(paths.run_report(ds), "reports_uri"), reports_dir=reports_dir,
        artifacts_dir=artifacts_dir, run_dir=run_dir,
        ingest=read_record(os.path.join(run_dir, "ingest.json")),
        quality=read_record(_local(paths.quality_summary(ds), "reports_uri")),
        features=read_record(os.path.join(run_dir, "features.json")),
        model_manifest=read_record(os.path.join(run_dir, "model", "manifest.json")),
        lookup_manifest=read_record(os.path.join(run_dir, "lookup", "manifest.json")),
        validation=read_record(_local(paths.validation_record(ds), "artifacts_uri")),
        calibration=read_record(_local(paths.calibration_record(ds), "artifacts_uri")),
        attention=read_record(_local(paths.attention_record(ds), "artifacts_uri")),
        current=read_record(os.path.join(published, "current.json")),
        published_folders=folders,
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
    def from_record(task: str, rec: Record, ok: bool | None = None, note: str = "") -> StageStatus:
        return StageStatus(task, rec.path, rec.present, ok if rec.present else None, rec.error or note)

    quality_ok = bool(inp.quality.data.get("success")) if isinstance(inp.quality.data, dict) else None
    quality_note = "" if quality_ok or not inp.quality.present else \
        f"{_get(inp.quality.data, 'critical_failures', default='?')} critical expectation(s) failed"
    gates = _gates(inp.validation.data)
    gates_ok = all(g.get("passed") is True for g in gates) if gates else None
    failed_gates = [str(g.get("name")) for g in gates if g.get("passed") is not True]
    published_dir = os.path.join(inp.artifacts_dir, "published")
    return [
        from_record("ingest_day", inp.ingest),
        from_record("check_bronze_quality", inp.quality, quality_ok, quality_note),
        from_record("build_window", inp.features),
        from_record("train_model", inp.model_manifest),
        from_record("build_lookup_table", inp.lookup_manifest),
        from_record("validate_gates", inp.validation, gates_ok,
                    f"failed gate(s): {', '.join(failed_gates)}" if failed_gates else ""),
        StageStatus("publish", os.path.join(published_dir, f"v<N>-{inp.ds}"), bool(inp.published_folders), None,
                    ", ".join(inp.published_folders)),
    ]


# --------------------------------------------------------------------------- small helpers


def _get(data: Any, *keys: str, default: Any = None) -> Any:
    for k in keys:
        if not isinstance(data, dict) or k not in data:
            return default
        data = data[k]
    return data


def _gates(validation: Any) -> list[dict[str, Any]]:
    """The validation record's verdicts: a list of {name, passed, value, threshold, note}."""
    gates = _get(validation, "gates", default=[])
    return [g for g in gates if isinstance(g, dict)] if isinstance(gates, list) else []


def _gate(validation: Any, name: str) -> dict[str, Any]:
    return next((g for g in _gates(validation) if g.get("name") == name), {})


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
    if isinstance(v, (list, dict)):
        return json.dumps(v, default=str)
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


def _missing(what: str, rec: Record, task: str) -> str:
    why = rec.error or "not found"
    return (f'<p class="missing note">{e(what)}: <code>{e(rec.path)}</code> {e(why)} '
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
    index = os.path.join(inp.reports_dir, "data_docs", "index.html")
    return _data_docs_link(_report_dir(inp), inp.reports_dir, index) if os.path.isfile(index) else ""


def stops(inp: RunInputs, statuses: list[StageStatus]) -> list[Stop]:
    """Why nothing was published for the date: failed critical expectations, failed gates, else
    the first stage without output (empty when the date was published)."""
    if inp.published_folders:
        return []
    out: list[Stop] = []
    quality = inp.quality.data
    if isinstance(quality, dict) and quality.get("success") is False:
        suites = _get(quality, "suites", default={}) or {}
        for name in sorted(suites):
            suite = suites[name] if isinstance(suites[name], dict) else {}
            link = _data_docs_link(_report_dir(inp), inp.reports_dir, suite.get("report_path"))
            out += [Stop("check_bronze_quality", f"{name}: {f}", link) for f in suite.get("failed_critical") or []]
    for g in _gates(inp.validation.data):
        if g.get("passed") is True:
            continue
        name = str(g.get("name"))
        what = f"gate {name}: value {fmt(g.get('value'))}, threshold {fmt(g.get('threshold'))}"
        link = ""
        if name == "lookup_quality":
            link = _data_docs_link(_report_dir(inp), inp.reports_dir, _get(inp.validation.data, "data_docs"))
        elif g.get("note"):
            what += f" ({g['note']})"
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


def _quarantine_share(ingest: Any, table: str) -> float | None:
    landing, quarantined = _num(_get(ingest, f"landing_{table}")), _num(_get(ingest, f"quarantined_{table}"))
    return quarantined / landing if landing and quarantined is not None else None


def section_first_screen(inp: RunInputs, statuses: list[StageStatus]) -> str:
    """Published or not and why, AUC vs floor and live, coverage, data quality."""
    cfg, val = inp.cfg, inp.validation.data
    live = _get(inp.current.data, "dir")
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

    metrics = _get(val, "metrics", default={}) or {}
    floor, vs_live, coverage = _gate(val, "auc_floor"), _gate(val, "auc_vs_live"), _gate(val, "coverage")
    live_auc = _num(metrics.get("live_auc"))
    live_cell = (f"live model {fmt(live_auc)}, at least {fmt(vs_live.get('threshold'))} needed" if live_auc is not None
                 else "no live model to compare with" if vs_live else "-")
    quality = inp.quality.data
    q_ok = quality.get("success") if isinstance(quality, dict) else None
    failed_suites = [n for n, s in sorted((_get(quality, "suites", default={}) or {}).items())
                     if isinstance(s, dict) and s.get("success") is False]
    q_text = ("no quality summary" if q_ok is None else
              f"{fmt(_get(quality, 'critical_failures', default=0))} critical failure(s)"
              + (f" in {', '.join(failed_suites)}" if failed_suites else ""))
    docs = _docs_index_link(inp)
    shares = [(t, _quarantine_share(inp.ingest.data, t)) for t in ("impressions", "ads")]
    quarantine = ", ".join(f"{_pct(v)} of {t}" for t, v in shares if v is not None) or "-"
    rows = [
        ("Holdout AUC", _verdict(floor.get("passed") if floor else None), metrics.get("auc"),
         f"floor {fmt(cfg.gates.auc_floor)}"),
        ("AUC vs live", _verdict(vs_live.get("passed") if vs_live else None), metrics.get("auc"), live_cell),
        ("Coverage", _verdict(coverage.get("passed") if coverage else None), _pct(coverage.get("value")),
         f"at least {_pct(cfg.gates.coverage_min)} of holdout impressions in the table"),
        ("Data quality", _verdict(q_ok if q_ok is None else bool(q_ok)), q_text,
         ("html", docs) if docs else "-"),
        ("Quarantined", _verdict(None, none="info"), quarantine, "of the day's landing rows (per reason: Details, Ingest)"),
    ]
    excluded = _get(inp.features.data, "excluded_days")
    if isinstance(excluded, list) and excluded:
        rows.append(("Excluded days", _verdict(None, none="info"),
                     ", ".join(f"{_get(d, 'date')} ({_get(d, 'reason')})" for d in excluded if isinstance(d, dict)),
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


def section_gates(inp: RunInputs) -> str:
    rec = inp.validation
    if not rec.present:
        return _section("Gate verdicts", "gates", _missing("Validation record", rec, "validate_gates"))
    gates = _gates(rec.data)
    if not gates:
        body = f'<p class="note">The validation record <code>{e(rec.path)}</code> lists no gates.</p>'
    else:
        rows = [(g.get("name"), _verdict(g.get("passed") is True if "passed" in g else None),
                 g.get("value"), g.get("threshold"), g.get("note")) for g in gates]
        body = _table(["gate", "verdict", "value", "threshold", "note"], rows, numeric=(2, 3))
    extra = {k: v for k, v in rec.data.items() if k not in ("gates", "coverage_curve")
             and not isinstance(v, (list, dict))} if isinstance(rec.data, dict) else {}
    metrics = _get(rec.data, "metrics", default={})
    if isinstance(metrics, dict):
        extra.update({f"metrics.{k}": v for k, v in metrics.items() if not isinstance(v, (list, dict))})
    served_in = _get(rec.data, "serving_precisions")
    if isinstance(served_in, list):
        extra["serving_precisions"] = ", ".join(map(str, served_in))
    checks = _get(rec.data, "precision_check", default={})
    if isinstance(checks, dict):
        extra.update({f"precision_check.{p}.max_abs_score_diff": c.get("max_abs_score_diff")
                      for p, c in checks.items() if isinstance(c, dict)})
    docs = _get(rec.data, "data_docs")
    if isinstance(docs, str) and docs:
        extra.pop("data_docs", None)
        body += (f"<p class='note'>Lookup-table quality checks: "
                 f"{_data_docs_link(os.path.dirname(inp.report_path), inp.reports_dir, docs)}</p>")
    if extra:
        body += "<h3>Validation record</h3>" + _table(["key", "value"], sorted(extra.items()), numeric=(1,))
    return _section("Gate verdicts", "gates", body)


def section_model(inp: RunInputs) -> str:
    rec = inp.model_manifest
    if not rec.present:
        return _section("Model", "model", _missing("Model manifest", rec, "train_model"))
    m = _get(rec.data, "metrics", default={}) or {}
    keys = [k for k in MODEL_METRIC_ORDER if k in m] + sorted(k for k in m if k not in MODEL_METRIC_ORDER
                                                              and not isinstance(m[k], (list, dict)))
    rows = [(k, m[k]) for k in keys]
    facts = [("variant", _get(rec.data, "variant")), ("warm start from", _get(rec.data, "warm_start_from")),
             ("training seconds", _get(rec.data, "seconds")), ("config hash", _get(rec.data, "config_hash"))]
    body = ("<h3>Holdout metrics (train stage)</h3>" + _table(["metric", "value"], rows, numeric=(1,))
            + _table(["fact", "value"], facts))
    return _section("Model", "model", body)


def _data_docs_link(report_dir: str, reports_dir: str, page: Any) -> str:
    """A relative link from the report's folder to a Data Docs page served by the plugin."""
    if not isinstance(page, str) or not page:
        return '<span class="muted">no page</span>'
    target = os.path.abspath(page)
    root = os.path.abspath(reports_dir)
    if os.path.commonpath([target, root]) != root:
        return f'<code>{e(page)}</code> <span class="muted">(outside the served reports folder)</span>'
    rel = os.path.relpath(target, report_dir).replace(os.sep, "/")
    return f'<a href="{e(urllib.parse.quote(rel))}">Data Docs</a>'


def section_quality(inp: RunInputs) -> str:
    rec = inp.quality
    if not rec.present:
        return _section("Data quality", "quality", _missing("Quality summary", rec, "check_bronze_quality"))
    suites = _get(rec.data, "suites", default={}) or {}
    report_dir = os.path.dirname(inp.report_path)
    rows, details = [], []
    for name in sorted(suites):
        s = suites[name] if isinstance(suites[name], dict) else {}
        failed, critical = s.get("failed") or [], s.get("failed_critical") or []
        stats = s.get("statistics") or {}
        rows.append((name, _verdict(s.get("success") is True if "success" in s else None),
                     stats.get("evaluated_expectations"), len(failed), len(critical),
                     ("html", _data_docs_link(report_dir, inp.reports_dir, s.get("report_path")))))
        if failed:
            items = "".join(f"<li>{'<b>CRITICAL</b> ' if f in critical else ''}{e(str(f))}</li>" for f in failed)
            details.append(f"<h3>{e(name)}: failed expectations</h3><ul class='failed'>{items}</ul>")
    trailing = _get(rec.data, "trailing")
    volume = (f"{fmt(_num(trailing.get('mean_rows')))} impressions per day over the {fmt(trailing.get('days'))} "
              "trailing day(s) that arrived" if isinstance(trailing, dict) else "no trailing days to compare with")
    head = (f"<p>Overall: {_verdict(_get(rec.data, 'success') is True)[1]} "
            f"{e(fmt(_get(rec.data, 'critical_failures', default=0)))} critical failure(s). "
            f"Volume baseline: {e(volume)}.</p>")
    table = _table(["suite", "result", "expectations", "failed", "critical", "report"], rows, numeric=(2, 3, 4))
    return _section("Data quality", "quality", head + table + "".join(details))


def section_ingest(inp: RunInputs) -> str:
    rec = inp.ingest
    if not rec.present:
        return _section("Ingest", "ingest", _missing("Ingest record", rec, "ingest_day"))
    d = rec.data
    rows = [(t, _get(d, f"landing_{t}"), _get(d, f"bronze_{t}"), _get(d, f"quarantined_{t}"),
             _pct(_quarantine_share(d, t))) for t in ("impressions", "ads")]
    body = _table(["table", "landing rows", "bronze rows", "quarantined rows", "quarantined share"], rows,
                  numeric=(1, 2, 3, 4))
    reasons = _get(d, "reasons", default={}) or {}
    reason_rows = [(src, r, n, _pct(n / _get(d, f"landing_{src}")) if _get(d, f"landing_{src}") else "-")
                   for src in sorted(reasons) for r, n in sorted((reasons[src] or {}).items())]
    body += ("<h3>Quarantine rate per reason</h3>"
             + _table(["source", "reason", "rows", "share of landing rows"], reason_rows, numeric=(2, 3))
             if reason_rows else "<p class='note'>Nothing quarantined.</p>")
    drift = _get(d, "schema_drift", default={}) or {}
    drift_rows = [(src, ", ".join(map(str, v.get("extra") or [])) or "-",
                   ", ".join(map(str, v.get("missing") or [])) or "-")
                  for src, v in sorted(drift.items()) if isinstance(v, dict)]
    if any(r[1] != "-" or r[2] != "-" for r in drift_rows):
        body += "<h3>Schema drift</h3>" + _table(["source", "extra columns", "missing optional columns"], drift_rows)
    else:
        body += "<p class='note'>No schema drift.</p>"
    body += (f"<p class='note'>New images: {e(fmt(_get(d, 'new_images')))}; "
             f"ingest took {e(fmt(_get(d, 'seconds')))} s.</p>")
    return _section("Ingest", "ingest", body)


def section_features(inp: RunInputs) -> str:
    rec = inp.features
    if not rec.present:
        return _section("Features", "features", _missing("Features metadata", rec, "build_window"))
    d = rec.data
    days = _get(d, "window_days", default=[]) or []
    missing = _get(d, "missing_days", default=[]) or []
    facts = [("window", f"{_get(d, 'window_start')} .. {_get(d, 'window_end')}"),
             ("window days read", len(days)), ("missing days", ", ".join(map(str, missing)) or "none"),
             ("train rows", _get(d, "rows", "train")), ("holdout rows", _get(d, "rows", "holdout")),
             ("train label rate", _get(d, "label_rate", "train")),
             ("holdout label rate", _get(d, "label_rate", "holdout")),
             ("holdout cold-ad share", _get(d, "cold_rate", "holdout")),
             ("impressions per ad group (train)", _get(d, "mean_impressions_per_group", "train"))]
    body = _table(["fact", "value"], facts, numeric=(1,))
    excluded = _get(d, "excluded_days", default=[]) or []
    if excluded:
        body += ("<h3>Days excluded from the window</h3>"
                 + _table(["date", "reason"], [(_get(x, "date"), _get(x, "reason")) for x in excluded]))
    sizes = _get(d, "vocab_sizes", default={}) or {}
    oov_w = _get(d, "oov_rate_window", default={}) or {}
    oov_t = _get(d, "oov_rate", "train", default={}) or {}
    oov_h = _get(d, "oov_rate", "holdout", default={}) or {}
    names = sorted(set(sizes) | set(oov_w) | set(oov_h))
    rows = [(n, sizes.get(n), _pct(oov_w.get(n)), _pct(oov_t.get(n)), _pct(oov_h.get(n))) for n in names]
    body += ("<h3>Vocabularies and OOV rates</h3>"
             + _table(["field", "vocab size", "OOV (window counts)", "OOV (train)", "OOV (holdout)"], rows,
                      numeric=(1, 2, 3, 4)))
    return _section("Features", "features", body)


def _run_metrics(run_dir: str) -> dict[str, float | None]:
    """AUC, cold-ad AUC and the live model's AUC of one run date, from its validation record."""
    metrics = _get(read_record(os.path.join(run_dir, "validation.json")).data, "metrics", default={})
    return {k: _num(_get(metrics, k)) for k in ("auc", "auc_cold", "live_auc")}


def auc_history(artifacts_dir: str, upto: str, limit: int = HISTORY_DAYS) -> list[dict[str, Any]]:
    """[{date, auc, auc_cold, live_auc}] for run dates <= `upto` under <artifacts>/runs (last `limit`)."""
    runs = os.path.join(artifacts_dir, "runs")
    if not os.path.isdir(runs):
        return []
    dates = []
    for name in os.listdir(runs):
        try:
            day = dt.date.fromisoformat(name).isoformat()
        except ValueError:
            continue
        if day <= upto:
            dates.append(day)
    history = [{"date": d, **_run_metrics(os.path.join(runs, d))} for d in sorted(dates)[-limit:]]
    return [h for h in history if any(h[k] is not None for k in ("auc", "auc_cold", "live_auc"))]


def section_auc_history(inp: RunInputs) -> str:
    history = auc_history(inp.artifacts_dir, inp.ds)
    if not history:
        return _section("AUC per day", "auc-history",
                        f"<p class='note'>No run up to {e(inp.ds)} recorded an AUC (model manifest or validation "
                        "record).</p>")
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
            + _table(["run date", "AUC", "cold-ad AUC", "live model AUC"], rows, numeric=(1, 2, 3)) + "</details>")
    return _section("AUC per day", "auc-history", body)


def section_lookup(inp: RunInputs) -> str:
    rec = inp.lookup_manifest
    body = ""
    bytes_per_ad = _num(_get(rec.data, "bytes_per_ad"))
    if rec.present:
        rows_n = _get(rec.data, "rows")
        size = (rows_n * bytes_per_ad) if isinstance(rows_n, int) and bytes_per_ad else None
        facts = [("rows (ads)", rows_n), ("stored dims", _get(rec.data, "dims")), ("dtype", _get(rec.data, "dtype")),
                 ("reduction", _get(rec.data, "reduction")), ("bytes per ad", _get(rec.data, "bytes_per_ad")),
                 ("serving rows size", f"{size / 1e6:.2f} MB" if size is not None else None),
                 ("candidate ads", _get(rec.data, "candidates")),
                 ("budget (ads / bytes, 0 = none)", f"{_get(rec.data, 'budget_ads', default='-')} / "
                                                    f"{_get(rec.data, 'budget_bytes', default='-')}"),
                 ("window impressions of kept ads", _pct(_get(rec.data, "window_impression_share"))),
                 ("model version", _get(rec.data, "model_version"))]
        body += _table(["fact", "value"], facts, numeric=(1,))
    else:
        body += _missing("Lookup table manifest", rec, "build_lookup_table")
    curve = _get(inp.validation.data, "coverage_curve", default=[]) or []
    points = sorted((float(c["budget_ads"]), float(c["coverage"])) for c in curve)
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


# --------------------------------------------------------------------------- model-dependent sections


def _read_report_data(rec: Record, what: str, reader: Callable[[str], Any]) -> tuple[Any, str]:
    """(the validate stage's typed record, "") or (None, the note saying why there is none)."""
    if not rec.present:
        return None, _missing(what, rec, "validate_gates")
    try:
        return reader(rec.path), ""
    except ReportDataError as err:
        return None, f"<p class='fail note'><code>{e(rec.path)}</code>: {e(str(err))}</p>"


def section_calibration(inp: RunInputs) -> str:
    title = "Calibration"
    cal, why = _read_report_data(inp.calibration, "Calibration record", read_calibration)
    if cal is None:
        return _section(title, "calibration", why)
    points = [(b["mean_pred"], b["observed_ctr"]) for b in cal.bins]
    if not points:
        return _section(title, "calibration", "<p class='note'>The holdout had no rows to bin.</p>")
    hi = max(max(x for x, _ in points), max(y for _, y in points)) * 1.1 or 1.0
    chart = svg.line_chart([svg.Series("holdout bins", points)], title="Reliability: observed vs predicted CTR",
                           x_label="mean predicted CTR in bin", y_label="observed CTR", x_range=(0.0, hi),
                           y_range=(0.0, hi), diagonal=True)
    rows = [(b["lo"], b["hi"], int(b["n"]), b["mean_pred"], b["observed_ctr"]) for b in cal.bins]
    body = (f"<figure>{chart}<figcaption>Equal-count bins of the full model's predictions on all "
            f"{cal.rows:,} holdout impressions (validate stage); dashed: perfect calibration.</figcaption></figure>"
            "<details><summary>bins</summary>"
            + _table(["lowest pred", "highest pred", "impressions", "mean pred", "observed CTR"], rows,
                     numeric=(0, 1, 2, 3, 4)) + "</details>")
    return _section(title, "calibration", body)


def _png_data_uri(path: str) -> str:
    with open(path, "rb") as f:
        return "data:image/png;base64," + base64.b64encode(f.read()).decode("ascii")


def section_attention(inp: RunInputs) -> str:
    rec = inp.attention
    title = "Category-specific spatial attention"
    att, why = _read_report_data(rec, "Attention record", read_attention)
    if att is None:
        return _section(title, "attention", why)
    if not att.panels:
        return _section(title, "attention", f"<p class='note'>Nothing to draw: {e(str(att.unavailable))}.</p>")
    figures = []
    for p in att.panels:
        png = os.path.join(os.path.dirname(rec.path), p.png)
        label = f"category idx {p.category_idx}" + (f" (category_id {p.category_id})" if p.category_id is not None
                                                    else "")
        caption = (f"{label}, {p.holdout_impressions:,} holdout impressions: ads {', '.join(map(str, p.ad_ids))}; "
                   f"M_s in [{p.map_min:.3f}, {p.map_max:.3f}], scaled per image.")
        if not os.path.isfile(png):
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
        section_first_screen(inp, statuses), "<h2>Details</h2>", section_stages(statuses), section_gates(inp),
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
    os.makedirs(os.path.dirname(inp.report_path), exist_ok=True)
    tmp = f"{inp.report_path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(page)
    os.replace(tmp, inp.report_path)  # atomic: the plugin never serves half a page
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
