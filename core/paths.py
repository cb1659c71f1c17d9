"""Every storage location of the pipeline, derived from StorageConfig.

URIs are plain strings so that the same code works on a local folder and on s3a://.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from core.config import PipelineConfig, StorageConfig


def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str) -> str:
    """Filesystem path of a local URI; an error for remote ones (caller must use Spark/Hadoop)."""
    if uri.startswith("file://"):
        return uri[len("file://"):]
    if "://" in uri:
        raise ValueError(f"{uri!r} is not a local path; this operation needs a local folder")
    return uri


@dataclass(frozen=True)
class Paths:
    storage: StorageConfig

    @classmethod
    def of(cls, cfg: PipelineConfig) -> "Paths":
        return cls(cfg.storage.resolved())

    # landing (upstream drops) -----------------------------------------------------------
    @property
    def landing(self) -> str:
        return self.storage.landing_uri

    def landing_day(self, day: dt.date | str) -> str:
        return _join(self.landing, str(day))

    def landing_impressions(self, day: dt.date | str) -> str:
        return _join(self.landing_day(day), "impressions.parquet")

    def landing_ads(self, day: dt.date | str) -> str:
        return _join(self.landing_day(day), "ads.parquet")

    def landing_success(self, day: dt.date | str) -> str:
        return _join(self.landing_day(day), "_SUCCESS")

    # simulator truth (never read by the pipeline's features or models) ------------------
    def truth_day(self, day: dt.date | str) -> str:
        return _join(self.storage.truth_uri, str(day), "truth.parquet")

    # warehouse (Delta tables) --------------------------------------------------------------
    def table(self, name: str) -> str:
        return _join(self.storage.warehouse_uri, name)

    @property
    def bronze_impressions(self) -> str:
        return self.table("bronze/impressions")

    @property
    def bronze_ads(self) -> str:
        return self.table("bronze/ads")

    @property
    def bronze_images(self) -> str:
        return self.table("bronze/images")

    @property
    def quarantine(self) -> str:
        return self.table("quarantine")

    @property
    def ingest_runs(self) -> str:
        return self.table("ops/ingest_runs")

    @property
    def lookup_table(self) -> str:
        """The published lookup table: version, run_date, ad_id, category_id, category_idx, embedding;
        written by publish (gated versions only), one partition per version (serving.registry)."""
        return self.table("lookup_table")

    @property
    def registry(self) -> str:
        """Delta table of published versions and rollbacks (one row per action)."""
        return self.table("ops/registry")

    # artifacts and reports --------------------------------------------------------------
    @property
    def artifacts(self) -> str:
        return self.storage.artifacts_uri

    @property
    def runs(self) -> str:
        """The folder of every run date's artifacts, run_dir(D) = runs/<D>."""
        return _join(self.artifacts, "runs")

    def run_dir(self, day: dt.date | str) -> str:
        """Per-run-date artifacts: resolved config, training snapshot, model, validation record."""
        return _join(self.runs, str(day))

    def ingest_record(self, day: dt.date | str) -> str:
        """core.records.IngestRecord of day D (spark_jobs/ingest.py)."""
        return _join(self.run_dir(day), "ingest.json")

    def features_record(self, day: dt.date | str) -> str:
        """core.records.FeaturesRecord of run date D (spark_jobs/build_window.py)."""
        return _join(self.run_dir(day), "features.json")

    def run_model_dir(self, day: dt.date | str) -> str:
        """model.pt (models.train.save_model) and manifest.json of run date D's trained model."""
        return _join(self.run_dir(day), "model")

    def model_manifest(self, day: dt.date | str) -> str:
        """core.records.ModelManifest of run date D (spark_jobs/train_model.py)."""
        return _join(self.run_model_dir(day), "manifest.json")

    def run_lookup_dir(self, day: dt.date | str) -> str:
        """The serving files of run date D's lookup table (serving.lookup) and its manifest.json."""
        return _join(self.run_dir(day), "lookup")

    def lookup_manifest(self, day: dt.date | str) -> str:
        """core.records.LookupManifest of run date D: serving.lookup.write_lookup_files writes it as
        manifest.json (serving.lookup.MANIFEST_FILE) of the folder spark_jobs/build_lookup.py gives it."""
        return _join(self.run_lookup_dir(day), "manifest.json")

    def timings_dir(self, day: dt.date | str) -> str:
        """core.timing records of run date D's tasks, one <task>.json each (core.records.TimingRecord)."""
        return _join(self.run_dir(day), "timings")

    def timing_record(self, day: dt.date | str, task: str) -> str:
        return _join(self.timings_dir(day), f"{task}.json")

    def validation_record(self, day: dt.date | str) -> str:
        """core.records.ValidationRecord of run date D (spark_jobs/validate.py)."""
        return _join(self.run_dir(day), "validation.json")

    @property
    def published(self) -> str:
        """Immutable published versions v<N>-<D>/ and the `current.json` pointer (storage.published_uri)."""
        return self.storage.published_uri

    @property
    def published_current(self) -> str:
        """The live version's pointer, core.records.CurrentPointer (serving.registry.switch_current)."""
        return _join(self.published, "current.json")

    @property
    def reports(self) -> str:
        return self.storage.reports_uri

    @property
    def data_docs(self) -> str:
        return _join(self.reports, "data_docs")

    @property
    def data_docs_index(self) -> str:
        """The Data Docs site's front page (GX builds it beside the validation pages)."""
        return _join(self.data_docs, "index.html")

    @property
    def gx_project(self) -> str:
        return _join(self.reports, "gx")

    def snapshot(self, day: dt.date | str) -> str:
        """Plain-parquet training snapshot the trainer reads without Spark."""
        return _join(self.run_dir(day), "snapshot")

    def run_report(self, day: dt.date | str) -> str:
        return _join(self.reports, "runs", str(day), "report.html")

    def run_report_data(self, day: dt.date | str) -> str:
        """What the validate stage computes for run date D's report (calibration, attention maps)."""
        return _join(self.run_dir(day), "report_data")

    def calibration_record(self, day: dt.date | str) -> str:
        """core.records.CalibrationRecord of run date D (spark_jobs/report_inputs.py, validate stage)."""
        return _join(self.run_report_data(day), "calibration.json")

    def attention_record(self, day: dt.date | str) -> str:
        """core.records.AttentionRecord of run date D (spark_jobs/report_inputs.py); its panels are PNGs beside it."""
        return _join(self.run_report_data(day), "attention.json")

    def attention_panel(self, day: dt.date | str, category_idx: int) -> str:
        """PNG of one category's attention panel (originals above, overlays below) of run date D."""
        return _join(self.run_report_data(day), "attention", f"category-{int(category_idx)}.png")

    def quality_summary(self, day: dt.date | str, suffix: str = "") -> str:
        """The day's data-quality summary, core.records.QualitySummary (spark_jobs/check_quality.py;
        suffix "-examples" for the examples suites of run date D, spark_jobs/check_examples.py)."""
        return _join(self.reports, "quality", f"{day}{suffix}.json")
