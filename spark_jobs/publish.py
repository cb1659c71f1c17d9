"""Publish run date D's model and lookup table, only when every gate passed.

    python spark_jobs/publish.py --date 2026-02-02 [--config FILE | --config-json JSON] [--set k=v]

Reads <artifacts>/runs/D/validation.json (written by validate) and refuses unless it passed and
still describes the run's files (model and lookup manifest checksums; they may be on object
storage). Then, as one registry
transaction that a SIGKILL at any point cannot leave half done (serving.registry): copies model/,
lookup/ and the validation record into a new immutable <published>/v<N>-<D>/ (fsynced,
version.json listing every file's sha256), appends a pending registry row (version, run date,
metrics, gate verdicts, input Delta versions from the features run, config hash, code version,
published_at), writes the version's rows into the published lookup table (the Airflow Asset),
switches the `current` pointer and marks the row live. It first recovers from an earlier crash.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core import storage
from core.cli import run_cli, run_stage
from core.config import PipelineConfig
from core.paths import Paths
from core.spark import get_spark
from features.tables import FeaturesError, load_run_metadata
from serving.lookup import MANIFEST_FILE, sha256_file
from serving.registry import PublishError, code_version, publish_version
from spark_jobs.build_lookup import model_files

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import SparkSession

log = logging.getLogger("publish")
RECORD_FILE = "validation.json"  # the validate stage's record in <artifacts>/runs/D/ (Paths.validation_record)


def check_validation(record: dict[str, Any] | None, path: str | Path, model_sha256: str, manifest_sha256: str) -> None:
    """Raise PublishError unless the record passed every gate and matches the files to publish."""
    if record is None:
        raise PublishError(f"no validation record at {path}; run the validate stage for this date first")
    failed = [g["name"] for g in record.get("gates", []) if not g.get("passed")]
    if failed or not record.get("passed") or not record.get("gates"):
        raise PublishError(f"refusing to publish {record.get('run_date')}: gate(s) {failed or ['(none recorded)']} "
                           f"did not pass (see {path})")
    if record.get("model_sha256") != model_sha256 or record.get("lookup_manifest_sha256") != manifest_sha256:
        raise PublishError(f"refusing to publish: the model or lookup files changed after validation ({path}); "
                           "re-run validate for this date")


def run(cfg: PipelineConfig, spark: "SparkSession", run_date: dt.date) -> dict[str, Any]:
    """Publish D's model + lookup table as a new version and make it live; returns its pointer entry.
    The run's files may be on object storage: they are read through local copies (core.storage)."""
    paths = Paths.of(cfg)
    record_uri = paths.validation_record(run_date)
    with model_files(cfg, run_date) as (model_path, model_manifest), \
            storage.reading_files(paths.run_dir(run_date), (RECORD_FILE,)) as run_folder, \
            storage.reading_folder(paths.run_lookup_dir(run_date), missing_ok=True) as lookup_dir:
        record_path = run_folder / RECORD_FILE
        record_bytes = record_path.read_bytes() if record_path.is_file() else None
        record = json.loads(record_bytes) if record_bytes is not None else None
        record_sha = hashlib.sha256(record_bytes).hexdigest() if record_bytes is not None else ""
        lookup_manifest = lookup_dir / MANIFEST_FILE
        check_validation(record, record_uri, sha256_file(model_path) if model_path.is_file() else "",
                         sha256_file(lookup_manifest) if lookup_manifest.is_file() else "")
        try:
            input_versions = load_run_metadata(cfg, spark, run_date).get("bronze_versions", {})
        except FeaturesError as e:
            log.warning("no features run metadata for %s (%s); publishing without input versions", run_date, e)
            input_versions = {}
        # model.pt and its manifest only: the training checkpoint beside them is not part of a version.
        sources = {"model/model.pt": model_path, "lookup": lookup_dir, "validation.json": record_path}
        if model_manifest.is_file():
            sources["model/manifest.json"] = model_manifest
        # What validation checked, re-checked on the copies (a file changed after the check is refused).
        manifest = json.loads(lookup_manifest.read_text())
        expect = {"model/model.pt": record["model_sha256"], "lookup/manifest.json": record["lookup_manifest_sha256"],
                  "validation.json": record_sha, **{f"lookup/{name}": info["sha256"]
                                                     for name, info in manifest["files"].items()}}
        return publish_version(spark, cfg, run_date, sources, {
            "model_version": record.get("model_version"), "metrics": record.get("metrics", {}),
            "gates": record.get("gates", []), "input_versions": input_versions, "config_hash": cfg.config_hash(),
            "code_version": code_version(), "published_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        }, expect)


def main(argv: list[str] | None = None) -> int:
    def job(cfg: PipelineConfig, run_date: dt.date, args) -> dict[str, Any]:
        entry = run(cfg, get_spark(cfg.spark), run_date)
        return {"version": entry["version"], "dir": entry["dir"], "run_date": entry["run_date"]}

    return run_stage("Publish a validated run date's model and lookup table.", job, argv, log_name="publish",
                     task="publish")


if __name__ == "__main__":
    sys.exit(run_cli(main))
