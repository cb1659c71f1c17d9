"""The HTML run report of one logical date D (DESIGN.md section 3, "report").

    python -m reports.run_report --date 2026-02-02 --config var/artifacts/runs/2026-02-02/config.json

Written to `Paths.run_report(D)` = <reports>/runs/<D>/report.html, which the `cscnn_reports`
Airflow plugin serves; the DAG's `render_report` task calls `render(config_path, ds)` whatever
happened upstream, so the page also explains a failed run: every stage's output is optional
and a missing one is named.

Inputs (all under the run's configured storage; each one optional):
  <artifacts>/runs/D/ingest.json            ingest counts, quarantine reasons, schema drift
  <reports>/quality/D.json                  data-quality suites with their Data Docs pages
  <artifacts>/runs/D/features.json          features metadata: window, vocab sizes, OOV rates
  <artifacts>/runs/D/snapshot/              holdout examples and ad images (attention maps,
                                            calibration sample)
  <artifacts>/runs/D/model/{manifest.json, model.pt}   training metrics and the model
  <artifacts>/runs/D/lookup/manifest.json   lookup table facts; "coverage_curve" when recorded
  <artifacts>/runs/D/validation.json        gate verdicts ("gates": name, passed, value,
                                            threshold, note); optional "coverage_curve",
                                            "calibration_bins", "metrics" / "auc" / "live_auc"
  <artifacts>/published/                    versions v<N>-<D>/ and current.json
  <artifacts>/runs/*/                       other dates, for the AUC-per-day chart

The page is one self-contained file: inline CSS, inline SVG charts, PNG overlays as data URIs;
every text taken from an input is escaped.
"""

from __future__ import annotations

import argparse
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
from reports.calibration import calibration_bins, sample_holdout_predictions

log = logging.getLogger("run_report")

ATTENTION_CATEGORIES = 6  # categories drawn in the attention section
ATTENTION_ADS_PER_CATEGORY = 4
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
    current: Record  # <artifacts>/published/current.json
    published_folders: tuple[str, ...]  # v<N>-<D> folders of this date

    @property
    def snapshot_dir(self) -> str:
        return os.path.join(self.run_dir, "snapshot")

    @property
    def model_path(self) -> str:
        return os.path.join(self.run_dir, "model", "model.pt")

    @property
    def lookup_dir(self) -> str:
        return os.path.join(self.run_dir, "lookup")


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
        quality=read_record(os.path.join(reports_dir, "quality", f"{ds}.json")),
        features=read_record(os.path.join(run_dir, "features.json")),
        model_manifest=read_record(os.path.join(run_dir, "model", "manifest.json")),
        lookup_manifest=read_record(os.path.join(run_dir, "lookup", "manifest.json")),
        validation=read_record(_local(paths.validation_record(ds), "artifacts_uri")),
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
    snapshot_ok = os.path.isfile(os.path.join(inp.snapshot_dir, "_SUCCESS"))
    published_dir = os.path.join(inp.artifacts_dir, "published")
    return [
        from_record("ingest_day", inp.ingest),
        from_record("check_bronze_quality", inp.quality, quality_ok, quality_note),
        from_record("build_window", inp.features),
        StageStatus("build_window", os.path.join(inp.snapshot_dir, "_SUCCESS"), snapshot_ok, None,
                    "training snapshot (export_snapshot)"),
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
    gates = _get(validation, "gates", default=[])
    if isinstance(gates, dict):  # {name: verdict} is accepted too
        gates = [{"name": k, **v} for k, v in gates.items() if isinstance(v, dict)]
    return [g for g in gates if isinstance(g, dict)] if isinstance(gates, list) else []


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
    return f'<section id="{e(anchor)}"><h2>{e(title)}</h2>{body}</section>'


def _guarded(what: str, fn: Callable[[], str]) -> str:
    """Run an optional, model-dependent part; a failure becomes a note instead of no report."""
    try:
        return fn()
    except Exception as err:  # the report must render for broken runs too; the error is shown
        log.exception("run report: %s failed", what)
        return f'<p class="fail note">Could not draw {e(what)}: {e(type(err).__name__)}: {e(str(err))}</p>'


# --------------------------------------------------------------------------- sections


def section_header(inp: RunInputs, statuses: list[StageStatus]) -> str:
    cfg = inp.cfg
    missing = [s.task_id for s in statuses if not s.produced and s.task_id != "publish"]
    gates = _gates(inp.validation.data)
    if gates:
        ok = all(g.get("passed") is True for g in gates)
        badge = _verdict(ok, "all gates passed", "gate(s) failed")[1]
    else:
        badge = _verdict(None, none="no gate verdicts")[1]
    published = _verdict(True, yes=f"published {', '.join(inp.published_folders)}")[1] if inp.published_folders \
        else _verdict(None, none="not published")[1]
    live = _get(inp.current.data, "dir") or _get(inp.current.data, "folder")  # serving.registry writes "dir"
    published += f'<span class="muted note">live now: {e(str(live))}</span>' if live else \
        '<span class="muted note">nothing is live yet</span>'
    incomplete = (f'<p class="fail note">Stages that produced nothing for {e(inp.ds)}: '
                  f"{e(', '.join(dict.fromkeys(missing)))}.</p>") if missing else \
        '<p class="pass note">Every stage up to validation produced its output.</p>'
    facts = (f"variant <b>{e(cfg.model.variant)}</b>, backbone {e(cfg.model.backbone)}, "
             f"window {cfg.features.window_days} days, config hash <code>{e(cfg.config_hash())}</code>")
    return (f"<h1>CSCNN run report: {e(inp.ds)}</h1><p>{facts}</p><p>{badge}{published}</p>{incomplete}"
            f'<p class="muted note">Generated {e(dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"))}'
            f" from <code>{e(inp.config_path)}</code>.</p>")


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
    extra = {k: v for k, v in rec.data.items() if k not in ("gates", "coverage_curve", "calibration_bins")
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
    rows = [(t, _get(d, f"landing_{t}"), _get(d, f"bronze_{t}"), _get(d, f"quarantined_{t}"))
            for t in ("impressions", "ads")]
    body = _table(["table", "landing rows", "bronze rows", "quarantined rows"], rows, numeric=(1, 2, 3))
    reasons = _get(d, "reasons", default={}) or {}
    reason_rows = [(src, r, n) for src in sorted(reasons) for r, n in sorted((reasons[src] or {}).items())]
    body += ("<h3>Quarantine reasons</h3>" + _table(["source", "reason", "rows"], reason_rows, numeric=(2,))
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
    """AUC, cold-ad AUC and the live model's AUC of one run date: validation record first, then
    the model manifest's holdout metrics."""
    val = read_record(os.path.join(run_dir, "validation.json")).data
    man = read_record(os.path.join(run_dir, "model", "manifest.json")).data
    gate_auc = next((g.get("value") for g in _gates(val) if str(g.get("name", "")).startswith("auc")), None)
    out = {}
    for key in ("auc", "auc_cold"):
        candidates = [_get(val, "metrics", key), _get(val, key), _get(man, "metrics", key)]
        if key == "auc":
            candidates.insert(2, gate_auc)
        out[key] = next((n for n in map(_num, candidates) if n is not None), None)
    out["live_auc"] = next((n for n in map(_num, (_get(val, "metrics", "live_auc"), _get(val, "live_auc")))
                            if n is not None), None)
    return out


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


def coverage_curve_of(inp: RunInputs) -> tuple[list[dict[str, Any]], str]:
    """The recorded coverage curve ([{budget_ads, coverage}]) and where it came from ('' when none)."""
    for rec in (inp.lookup_manifest, inp.validation):
        curve = _get(rec.data, "coverage_curve")
        if isinstance(curve, list) and curve:
            return [c for c in curve if isinstance(c, dict)], rec.path
    return [], ""


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
    curve, source = coverage_curve_of(inp)
    points = sorted((float(c["budget_ads"]), _num(c.get("coverage"))) for c in curve
                    if _num(c.get("budget_ads")) and _num(c.get("budget_ads")) > 0)
    points = [(x, y) for x, y in points if y is not None]
    if not points:
        body += ("<p class='note'>No coverage curve was recorded by the lookup stage (lookup manifest or "
                 "validation record key <code>coverage_curve</code>); the report computes none.</p>")
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
    body += (f"<figure>{chart}<figcaption>From <code>{e(source)}</code>.</figcaption></figure>"
             + "<details><summary>values</summary>" + _table(["ads", "coverage", "size"], rows, numeric=(0, 1, 2))
             + "</details>")
    return _section("Lookup table and coverage", "lookup", body)


# --------------------------------------------------------------------------- model-dependent sections


class _ModelCache:
    """Loads the run's model once for the calibration and attention sections."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._model = None

    def get(self):
        if self._model is None:
            from models.train import load_model

            self._model = load_model(self.path, map_location="cpu")
        return self._model


def _recorded_bins(inp: RunInputs) -> tuple[list[dict[str, Any]], str]:
    for rec, keys in ((inp.validation, ("calibration_bins",)), (inp.model_manifest, ("metrics", "calibration_bins")),
                      (inp.model_manifest, ("calibration_bins",))):
        bins = _get(rec.data, *keys)
        if isinstance(bins, list) and bins:
            return [b for b in bins if isinstance(b, dict)], f"recorded in {rec.path}"
    return [], ""


def section_calibration(inp: RunInputs, models: _ModelCache) -> str:
    bins, source = _recorded_bins(inp)
    body = ""
    if not bins:
        if not os.path.isfile(inp.model_path):
            return _section("Calibration", "calibration",
                            "<p class='note'>No calibration bins were recorded and there is no model "
                            f"(<code>{e(inp.model_path)}</code>) to compute them from.</p>")

        def compute() -> str:
            nonlocal bins, source
            sample = sample_holdout_predictions(models.get(), inp.snapshot_dir)
            bins = calibration_bins(sample.labels, sample.preds)
            source = (f"computed by the report from {sample.n_ads:,} of {sample.n_ads_total:,} holdout ads "
                      f"({len(sample.labels):,} of {sample.n_rows_total:,} impressions, ads sampled uniformly)")
            return ""

        body += _guarded("the calibration sample", compute)
    points = [(_num(b.get("mean_pred")), _num(b.get("observed_ctr"))) for b in bins]
    points = [(x, y) for x, y in points if x is not None and y is not None]
    if not points:
        return _section("Calibration", "calibration", body + "<p class='note'>No calibration bins to draw.</p>")
    hi = max(max(x for x, _ in points), max(y for _, y in points)) * 1.1 or 1.0
    chart = svg.line_chart([svg.Series("holdout bins", points)], title="Reliability: observed vs predicted CTR",
                           x_label="mean predicted CTR in bin", y_label="observed CTR", x_range=(0.0, hi),
                           y_range=(0.0, hi), diagonal=True)
    rows = [(b.get("lo"), b.get("hi"), b.get("n"), b.get("mean_pred"), b.get("observed_ctr")) for b in bins]
    body += (f"<figure>{chart}<figcaption>Equal-count prediction bins, {e(source)}; dashed: perfect "
             "calibration.</figcaption></figure><details><summary>bins</summary>"
             + _table(["lowest pred", "highest pred", "impressions", "mean pred", "observed CTR"], rows,
                      numeric=(0, 1, 2, 3, 4)) + "</details>")
    return _section("Calibration", "calibration", body)


def _category_names(lookup_dir: str) -> dict[int, int]:
    """Encoded category id -> raw category id, from the lookup folder's encoder.npz (when present)."""
    import numpy as np

    path = os.path.join(lookup_dir, "encoder.npz")
    if not os.path.isfile(path):
        return {}
    try:
        with np.load(path, allow_pickle=False) as z:
            values, ids = z["vocab_values.category_id"], z["vocab_ids.category_id"]
    except (KeyError, OSError, ValueError):
        return {}
    return {int(i): int(v) for v, i in zip(values, ids)}


def section_attention(inp: RunInputs, models: _ModelCache) -> str:
    from reports.attention_maps import NoSpatialAttention, category_panels, sample_ads_by_category

    title = "Category-specific spatial attention"
    if not os.path.isfile(inp.model_path):
        return _section(title, "attention", f"<p class='note'>No model at <code>{e(inp.model_path)}</code> "
                                            "(stage <code>train_model</code> produced nothing).</p>")

    def draw() -> str:
        model = models.get()
        try:
            from reports.attention_maps import last_spatial_attention

            layer = last_spatial_attention(model)
        except NoSpatialAttention as err:
            return f"<p class='note'>Nothing to draw: {e(str(err))}.</p>"
        ads = sample_ads_by_category(inp.snapshot_dir, ATTENTION_CATEGORIES, ATTENTION_ADS_PER_CATEGORY)
        if not ads:
            return "<p class='note'>The snapshot's holdout has no ads with images.</p>"
        names = _category_names(inp.lookup_dir)
        figures = []
        for p in category_panels(model, ads):
            raw = f" (category_id {names[p.category_idx]})" if p.category_idx in names else ""
            label = f"category idx {p.category_idx}{raw}"
            figures.append(
                f'<figure><img class="attn" data-category="{p.category_idx}" alt="{e(label)} attention overlays" '
                f'src="{p.data_uri()}"><figcaption>{e(label)}: ads {e(", ".join(map(str, p.ad_ids)))}; '
                f"M_s in [{p.map_min:.3f}, {p.map_max:.3f}], scaled per image.</figcaption></figure>")
        kind = type(layer).__name__
        intro = (f"<p class='note'>Spatial attention map M_s of the last attentive conv ({e(kind)}) of the visual "
                 "tower, upsampled to the image and drawn over it (top: image; bottom: overlay, red = high "
                 "attention), for the holdout's most frequent ads of its most frequent categories.</p>")
        return intro + "".join(figures)

    return _section(title, "attention", _guarded("the attention maps", draw))


def section_config(inp: RunInputs) -> str:
    text = json.dumps(inp.cfg.to_dict(), indent=2, sort_keys=True, default=str)
    return _section("Configuration", "config", f"<details><summary>resolved config</summary><pre>{e(text)}</pre>"
                                               "</details>")


# --------------------------------------------------------------------------- page


def render_html(inp: RunInputs) -> str:
    """The whole report page for gathered inputs (loads the run's model when it exists)."""
    statuses = stage_statuses(inp)
    models = _ModelCache(inp.model_path)
    parts = [
        section_header(inp, statuses), section_stages(statuses), section_gates(inp), section_model(inp),
        section_auc_history(inp), section_quality(inp), section_ingest(inp), section_features(inp),
        section_lookup(inp), section_calibration(inp, models), section_attention(inp, models), section_config(inp),
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
