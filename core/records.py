"""The JSON records the stages write for the run report, as typed dataclasses read from their files.

Each record names where it lives (a `Paths` method, so that the writing stage and the report share
one definition) and parses exactly the shape its stage writes; the fields here are the ones the run
report (reports.run_report) renders. `read_record(cls, path)` is None when the file is absent (the
stage did not run) and raises RecordError, naming the path and the field, when it is malformed.

    IngestRecord        Paths.ingest_record(D)        spark_jobs/ingest.py
    QualitySummary      Paths.quality_summary(D)      spark_jobs/check_quality.py
    FeaturesRecord      Paths.features_record(D)      spark_jobs/build_window.py
    ModelManifest       Paths.model_manifest(D)       spark_jobs/train_model.py
    LookupManifest      Paths.lookup_manifest(D)      serving.lookup.write_lookup_files, from
                                                      spark_jobs/build_lookup.py
    ValidationRecord    Paths.validation_record(D)    spark_jobs/validate.py
    CalibrationRecord   Paths.calibration_record(D)   spark_jobs/report_inputs.py (validate stage)
    AttentionRecord     Paths.attention_record(D)     spark_jobs/report_inputs.py (validate stage)
    CurrentPointer      Paths.published_current       serving/registry.py (publish, rollback)
    TimingRecord        Paths.timing_record(D, task)  core.timing, from every stage's main
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, TypeVar

from core import storage

Scalar = int | float | bool | str | None
T = TypeVar("T")
R = TypeVar("R", bound="_Record")

QUARANTINE_TABLES = ("impressions", "ads")  # the ingest record's per-table counts


class RecordError(ValueError):
    """A record file exists but is not the shape its stage writes (the message names the path and field)."""


# --------------------------------------------------------------------------- field parsing


def _at(d: Mapping[str, Any], key: str, where: str = "") -> Any:
    """d[key]; a RecordError naming the field (`where`: the object's place in the record) if absent."""
    if key not in d:
        raise RecordError(f"missing field {(f'{where}.' if where else '') + key!r}")
    return d[key]


def _obj(v: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(v, dict):
        raise RecordError(f"{where}: expected an object, got {type(v).__name__}")
    return v


def _int(v: Any, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise RecordError(f"{where}: expected an integer, got {v!r}")
    return v


def _float(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise RecordError(f"{where}: expected a number, got {v!r}")
    return float(v)


def _opt_float(v: Any, where: str) -> float | None:
    """A number, None for null or NaN (the stages write NaN for an undefined metric)."""
    if v is None:
        return None
    x = _float(v, where)
    return x if math.isfinite(x) else None


def _str(v: Any, where: str) -> str:
    if not isinstance(v, str):
        raise RecordError(f"{where}: expected a string, got {v!r}")
    return v


def _opt_str(v: Any, where: str) -> str | None:
    return None if v is None else _str(v, where)


def _bool(v: Any, where: str) -> bool:
    if not isinstance(v, bool):
        raise RecordError(f"{where}: expected true or false, got {v!r}")
    return v


def _list(v: Any, where: str, item: Callable[[Any, str], T]) -> list[T]:
    if not isinstance(v, list):
        raise RecordError(f"{where}: expected a list, got {type(v).__name__}")
    return [item(x, f"{where}[{i}]") for i, x in enumerate(v)]


def _map(v: Any, where: str, item: Callable[[Any, str], T]) -> dict[str, T]:
    return {str(k): item(x, f"{where}.{k}") for k, x in _obj(v, where).items()}


def _scalars(v: Any, where: str) -> dict[str, Scalar]:
    """The scalar entries of an object (NaN as None); nested lists and objects are not read."""
    out: dict[str, Scalar] = {}
    for k, x in _obj(v, where).items():
        if isinstance(x, float) and not math.isfinite(x):
            out[str(k)] = None
        elif x is None or isinstance(x, (bool, int, float, str)):
            out[str(k)] = x
    return out


class _Record:
    """A record read from one JSON file (subclasses: `parse` from the decoded object)."""

    KIND = "record"

    @classmethod
    def parse(cls: type[R], d: Mapping[str, Any]) -> R:
        raise NotImplementedError

    @classmethod
    def from_json(cls: type[R], text: str) -> R:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise RecordError(f"not valid JSON ({err})") from None
        return cls.parse(_obj(data, "the file"))


def read_record(cls: type[R], path: str) -> R | None:
    """The record of type `cls` at `path` (a local path or an object storage URI, core.storage);
    None when the file does not exist; a RecordError naming the path when it cannot be read or is
    not the shape its stage writes."""
    try:
        text = storage.read_text(path)
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise RecordError(f"{path}: unreadable ({err})") from None
    try:
        return cls.from_json(text)
    except RecordError as err:
        raise RecordError(f"{path}: not a valid {cls.KIND}: {err}") from None


# --------------------------------------------------------------------------- ingest, quality, features


@dataclass(frozen=True)
class SchemaDrift:
    extra: list[str]  # columns in the landing file the contract does not have (not kept)
    missing: list[str]  # optional contract columns the landing file lacks


@dataclass(frozen=True)
class IngestRecord(_Record):
    """One day's ingest-run record (spark_jobs/ingest.py `_commit`): landing = bronze + quarantined."""

    KIND = "ingest record"

    dt: str
    landing: dict[str, int]  # per table of QUARANTINE_TABLES
    bronze: dict[str, int]
    quarantined: dict[str, int]
    reasons: dict[str, dict[str, int]]  # table -> quarantine reason -> rows
    schema_drift: dict[str, SchemaDrift]  # table -> drift
    new_images: int
    seconds: float

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> "IngestRecord":
        def counts(prefix: str) -> dict[str, int]:
            return {t: _int(_at(d, f"{prefix}_{t}"), f"{prefix}_{t}") for t in QUARANTINE_TABLES}

        def drift(v: Any, where: str) -> SchemaDrift:
            o = _obj(v, where)
            return SchemaDrift(_list(_at(o, "extra", where), f"{where}.extra", _str),
                               _list(_at(o, "missing", where), f"{where}.missing", _str))

        return cls(dt=_str(_at(d, "dt"), "dt"), landing=counts("landing"), bronze=counts("bronze"),
                   quarantined=counts("quarantined"),
                   reasons=_map(_at(d, "reasons"), "reasons", lambda v, w: _map(v, w, _int)),
                   schema_drift=_map(_at(d, "schema_drift"), "schema_drift", drift),
                   new_images=_int(_at(d, "new_images"), "new_images"), seconds=_float(_at(d, "seconds"), "seconds"))

    def quarantine_share(self, table: str) -> float | None:
        """Quarantined share of the table's landing rows (None without landing rows)."""
        return self.quarantined[table] / self.landing[table] if self.landing[table] else None


@dataclass(frozen=True)
class SuiteSummary:
    success: bool
    failed: list[str]  # the failed expectations, one line each
    failed_critical: list[str]
    report_path: str | None  # its Data Docs page (None when the suite could not run)
    evaluated_expectations: int | None  # from GX's statistics


@dataclass(frozen=True)
class TrailingVolume:
    mean_rows: float  # impressions per day over the trailing days that arrived
    days: int


@dataclass(frozen=True)
class QualitySummary(_Record):
    """One day's bronze data-quality summary (spark_jobs/check_quality.py `run`)."""

    KIND = "quality summary"

    date: str
    success: bool
    critical_failures: int
    trailing: TrailingVolume | None  # None: no trailing day arrived
    suites: dict[str, SuiteSummary]

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> "QualitySummary":
        def suite(v: Any, where: str) -> SuiteSummary:
            o = _obj(v, where)
            stats = _obj(_at(o, "statistics", where), f"{where}.statistics")
            evaluated = stats.get("evaluated_expectations")
            return SuiteSummary(_bool(_at(o, "success", where), f"{where}.success"),
                                _list(_at(o, "failed", where), f"{where}.failed", _str),
                                _list(_at(o, "failed_critical", where), f"{where}.failed_critical", _str),
                                _opt_str(_at(o, "report_path", where), f"{where}.report_path"),
                                None if evaluated is None else _int(evaluated, f"{where}.statistics.evaluated_expectations"))

        trailing = _at(d, "trailing")
        if trailing is not None:
            t = _obj(trailing, "trailing")
            trailing = TrailingVolume(_float(_at(t, "mean_rows", "trailing"), "trailing.mean_rows"),
                                      _int(_at(t, "days", "trailing"), "trailing.days"))
        return cls(date=_str(_at(d, "date"), "date"), success=_bool(_at(d, "success"), "success"),
                   critical_failures=_int(_at(d, "critical_failures"), "critical_failures"), trailing=trailing,
                   suites=_map(_at(d, "suites"), "suites", suite))


@dataclass(frozen=True)
class ExcludedDay:
    date: str
    reason: str  # the day's latest failed quality verdict


@dataclass(frozen=True)
class FeaturesRecord(_Record):
    """Run date D's window metadata (spark_jobs/build_window.py `run`); per-split maps are keyed
    "train" and "holdout"."""

    KIND = "features record"

    run_date: str
    window_start: str
    window_end: str
    window_days: list[str]  # the days read
    missing_days: list[str]
    excluded_days: list[ExcludedDay]
    rows: dict[str, int]
    label_rate: dict[str, float | None]  # None for an empty split
    cold_rate: dict[str, float | None]
    mean_impressions_per_group: dict[str, float | None]
    vocab_sizes: dict[str, int]
    oov_rate_window: dict[str, float | None]  # field -> OOV share of the window's counts
    oov_rate: dict[str, dict[str, float | None]]  # split -> field -> OOV share

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> "FeaturesRecord":
        def excluded(v: Any, where: str) -> ExcludedDay:
            o = _obj(v, where)
            return ExcludedDay(_str(_at(o, "date", where), f"{where}.date"), _str(_at(o, "reason", where), f"{where}.reason"))

        def rates(key: str) -> dict[str, float | None]:
            return _map(_at(d, key), key, _opt_float)

        return cls(run_date=_str(_at(d, "run_date"), "run_date"),
                   window_start=_str(_at(d, "window_start"), "window_start"),
                   window_end=_str(_at(d, "window_end"), "window_end"),
                   window_days=_list(_at(d, "window_days"), "window_days", _str),
                   missing_days=_list(_at(d, "missing_days"), "missing_days", _str),
                   excluded_days=_list(_at(d, "excluded_days"), "excluded_days", excluded),
                   rows=_map(_at(d, "rows"), "rows", _int), label_rate=rates("label_rate"),
                   cold_rate=rates("cold_rate"), mean_impressions_per_group=rates("mean_impressions_per_group"),
                   vocab_sizes=_map(_at(d, "vocab_sizes"), "vocab_sizes", _int),
                   oov_rate_window=rates("oov_rate_window"),
                   oov_rate=_map(_at(d, "oov_rate"), "oov_rate", lambda v, w: _map(v, w, _opt_float)))


# --------------------------------------------------------------------------- model, lookup table, gates


@dataclass(frozen=True)
class ModelManifest(_Record):
    """Run date D's trained-model manifest (spark_jobs/train_model.py `run`, rank 0)."""

    KIND = "model manifest"

    run_date: str
    variant: str
    warm_start_from: str | None  # the live model.pt it started from, None from scratch
    config_hash: str
    metrics: dict[str, Scalar]  # models.train.train's holdout metrics (scalars; NaN as None)
    seconds: float

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> "ModelManifest":
        return cls(run_date=_str(_at(d, "run_date"), "run_date"), variant=_str(_at(d, "variant"), "variant"),
                   warm_start_from=_opt_str(_at(d, "warm_start_from"), "warm_start_from"),
                   config_hash=_str(_at(d, "config_hash"), "config_hash"),
                   metrics=_scalars(_at(d, "metrics"), "metrics"), seconds=_float(_at(d, "seconds"), "seconds"))


@dataclass(frozen=True)
class LookupManifest(_Record):
    """Run date D's lookup-table manifest: serving.lookup.write_lookup_files' fields plus the
    frequency-control facts spark_jobs/build_lookup.py adds."""

    KIND = "lookup manifest"

    run_date: str
    model_version: str
    rows: int  # ads in the table
    dims: int  # stored dims per ad
    dtype: str
    reduction: str
    bytes_per_ad: int
    candidates: int  # ads with an image and a catalog row
    budget_ads: int  # 0: no budget
    budget_bytes: int
    window_impression_share: float | None  # window impressions of the kept ads; None: no impressions

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> "LookupManifest":
        return cls(run_date=_str(_at(d, "run_date"), "run_date"),
                   model_version=_str(_at(d, "model_version"), "model_version"),
                   rows=_int(_at(d, "rows"), "rows"), dims=_int(_at(d, "dims"), "dims"),
                   dtype=_str(_at(d, "dtype"), "dtype"), reduction=_str(_at(d, "reduction"), "reduction"),
                   bytes_per_ad=_int(_at(d, "bytes_per_ad"), "bytes_per_ad"),
                   candidates=_int(_at(d, "candidates"), "candidates"),
                   budget_ads=_int(_at(d, "budget_ads"), "budget_ads"),
                   budget_bytes=_int(_at(d, "budget_bytes"), "budget_bytes"),
                   window_impression_share=_opt_float(_at(d, "window_impression_share"), "window_impression_share"))


@dataclass(frozen=True)
class GateVerdict:
    """spark_jobs.validate.Verdict as recorded."""

    name: str
    passed: bool
    value: float | None
    threshold: float | None
    note: str


@dataclass(frozen=True)
class CoveragePoint:
    budget_ads: int  # the table's top ads kept
    coverage: float  # share of holdout impressions they cover


@dataclass(frozen=True)
class PrecisionCheck:
    max_abs_score_diff: float | None  # None: no covered holdout row
    tolerance: float
    passed: bool


@dataclass(frozen=True)
class ValidationRecord(_Record):
    """Run date D's gate verdicts and holdout metrics (spark_jobs/validate.py `run`)."""

    KIND = "validation record"

    run_date: str
    passed: bool
    gates: list[GateVerdict]
    metrics: dict[str, Scalar]  # auc, auc_cold, logloss, ..., table_auc, coverage, live_auc (NaN as None)
    coverage_curve: list[CoveragePoint]
    precision_check: dict[str, PrecisionCheck]  # per reduced serving precision
    serving_precisions: list[str]
    model_sha256: str
    lookup_manifest_sha256: str
    model_version: str | None
    config_hash: str
    data_docs: str | None  # the lookup suite's Data Docs page
    validated_at: str
    seconds: float

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> "ValidationRecord":
        def gate(v: Any, where: str) -> GateVerdict:
            o = _obj(v, where)
            return GateVerdict(_str(_at(o, "name", where), f"{where}.name"), _bool(_at(o, "passed", where), f"{where}.passed"),
                               _opt_float(_at(o, "value", where), f"{where}.value"),
                               _opt_float(_at(o, "threshold", where), f"{where}.threshold"),
                               _str(_at(o, "note", where), f"{where}.note"))

        def point(v: Any, where: str) -> CoveragePoint:
            o = _obj(v, where)
            return CoveragePoint(_int(_at(o, "budget_ads", where), f"{where}.budget_ads"),
                                 _float(_at(o, "coverage", where), f"{where}.coverage"))

        def check(v: Any, where: str) -> PrecisionCheck:
            o = _obj(v, where)
            return PrecisionCheck(_opt_float(_at(o, "max_abs_score_diff", where), f"{where}.max_abs_score_diff"),
                                  _float(_at(o, "tolerance", where), f"{where}.tolerance"),
                                  _bool(_at(o, "passed", where), f"{where}.passed"))

        return cls(run_date=_str(_at(d, "run_date"), "run_date"), passed=_bool(_at(d, "passed"), "passed"),
                   gates=_list(_at(d, "gates"), "gates", gate), metrics=_scalars(_at(d, "metrics"), "metrics"),
                   coverage_curve=_list(_at(d, "coverage_curve"), "coverage_curve", point),
                   precision_check=_map(_at(d, "precision_check"), "precision_check", check),
                   serving_precisions=_list(_at(d, "serving_precisions"), "serving_precisions", _str),
                   model_sha256=_str(_at(d, "model_sha256"), "model_sha256"),
                   lookup_manifest_sha256=_str(_at(d, "lookup_manifest_sha256"), "lookup_manifest_sha256"),
                   model_version=_opt_str(_at(d, "model_version"), "model_version"),
                   config_hash=_str(_at(d, "config_hash"), "config_hash"),
                   data_docs=_opt_str(_at(d, "data_docs"), "data_docs"),
                   validated_at=_str(_at(d, "validated_at"), "validated_at"),
                   seconds=_float(_at(d, "seconds"), "seconds"))

    def gate(self, name: str) -> GateVerdict | None:
        return next((g for g in self.gates if g.name == name), None)

    def metric(self, name: str) -> float | None:
        v = self.metrics.get(name)
        return None if isinstance(v, (bool, str)) or v is None else float(v)


# --------------------------------------------------------------------------- report data (validate stage)


@dataclass(frozen=True)
class CalibrationBin:
    lo: float  # the bin's smallest prediction
    hi: float  # its largest
    n: int  # impressions in the bin
    mean_pred: float
    observed_ctr: float


@dataclass(frozen=True)
class CalibrationRecord(_Record):
    """Equal-count bins of the full model's predictions on every holdout row of D."""

    KIND = "calibration record"

    run_date: str
    rows: int  # holdout impressions scored (all of them)
    bins: list[CalibrationBin]

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> "CalibrationRecord":
        def one(v: Any, where: str) -> CalibrationBin:
            o = _obj(v, where)
            return CalibrationBin(*(_float(_at(o, k, where), f"{where}.{k}") for k in ("lo", "hi")),
                                  _int(_at(o, "n", where), f"{where}.n"),
                                  *(_float(_at(o, k, where), f"{where}.{k}") for k in ("mean_pred", "observed_ctr")))

        return cls(_str(_at(d, "run_date"), "run_date"), _int(_at(d, "rows"), "rows"),
                   _list(_at(d, "bins"), "bins", one))


@dataclass(frozen=True)
class AttentionPanel:
    category_idx: int  # the model's encoded category
    category_id: int | None  # the raw catalog category, when the run's encoder names it
    ad_ids: list[int]
    holdout_impressions: int  # of the category in the holdout
    map_min: float  # range of M_s over the panel's maps, before the per-image display scaling
    map_max: float
    png: str  # file name, relative to the record's folder


@dataclass(frozen=True)
class AttentionRecord(_Record):
    """The attention panels of D's most frequent holdout categories, or why none was drawn."""

    KIND = "attention record"

    run_date: str
    layer: str | None  # class of the attention module drawn (CSCNNAttention, CBAM); None when none
    panels: list[AttentionPanel] = field(default_factory=list)
    unavailable: str | None = None  # why nothing was drawn (a variant without spatial attention)

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> "AttentionRecord":
        def panel(v: Any, where: str) -> AttentionPanel:
            o = _obj(v, where)
            cat_id = _at(o, "category_id", where)
            return AttentionPanel(category_idx=_int(_at(o, "category_idx", where), f"{where}.category_idx"),
                                  category_id=None if cat_id is None else _int(cat_id, f"{where}.category_id"),
                                  ad_ids=_list(_at(o, "ad_ids", where), f"{where}.ad_ids", _int),
                                  holdout_impressions=_int(_at(o, "holdout_impressions", where),
                                                           f"{where}.holdout_impressions"),
                                  map_min=_float(_at(o, "map_min", where), f"{where}.map_min"),
                                  map_max=_float(_at(o, "map_max", where), f"{where}.map_max"),
                                  png=_str(_at(o, "png", where), f"{where}.png"))

        return cls(_str(_at(d, "run_date"), "run_date"), _opt_str(_at(d, "layer"), "layer"),
                   _list(_at(d, "panels"), "panels", panel), _opt_str(_at(d, "unavailable"), "unavailable"))


# --------------------------------------------------------------------------- publish


@dataclass(frozen=True)
class CurrentPointer(_Record):
    """The live version's pointer entry (serving/registry.py `switch_current`)."""

    KIND = "current-version pointer"

    version: int
    run_date: str
    dir: str  # the version folder, v<N>-<D>

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> "CurrentPointer":
        return cls(_int(_at(d, "version"), "version"), _str(_at(d, "run_date"), "run_date"),
                   _str(_at(d, "dir"), "dir"))


# --------------------------------------------------------------------------- timings


@dataclass(frozen=True)
class TimingRecord(_Record):
    """Where one task's time went (core.timing.stage_timing): phases in seconds, adding up to total_s."""

    KIND = "timing record"

    task: str
    status: str  # "ok" or "failed: <exception type>"
    started_at: str
    total_s: float
    startup_s: float  # launch + imports + spark_session
    phases: dict[str, float]

    @classmethod
    def parse(cls, d: Mapping[str, Any]) -> "TimingRecord":
        return cls(_str(_at(d, "task"), "task"), _str(_at(d, "status"), "status"),
                   _str(_at(d, "started_at"), "started_at"), _float(_at(d, "total_s"), "total_s"),
                   _float(_at(d, "startup_s"), "startup_s"),
                   _map(_at(d, "phases"), "phases", _float))
