"""Every storage location of the pipeline, derived from StorageConfig.

URIs are plain strings so that the same code works on a local folder and on s3a://.
"""

from __future__ import annotations

import datetime as dt
import os
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

    # artifacts and reports --------------------------------------------------------------
    @property
    def artifacts(self) -> str:
        return self.storage.artifacts_uri

    @property
    def reports(self) -> str:
        return self.storage.reports_uri

    @property
    def data_docs(self) -> str:
        return _join(self.reports, "data_docs")

    @property
    def gx_project(self) -> str:
        return _join(self.reports, "gx")

    def run_report(self, day: dt.date | str) -> str:
        return _join(self.reports, "runs", str(day), "report.html")


def ensure_dir(uri: str) -> str:
    if is_local(uri):
        os.makedirs(local_path(uri), exist_ok=True)
    return uri
