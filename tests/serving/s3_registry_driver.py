"""Publish a version of fabricated files from a process of its own (tests/serving/test_registry_s3.py).

    python -m tests.serving.s3_registry_driver FOLDER RUN_DATE MODEL_VERSION --config-json JSON

FOLDER holds model.pt and lookup/ (the serving files). It is serving.registry.publish_version
as spark_jobs/publish.py calls it, without the run's validation record, so that the registry's
transaction is tested on its own; rollback and doctor run through `python -m serving.registry`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

from core.cli import setup_logging
from core.config import PipelineConfig
from core.spark import get_spark
from serving import registry


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    ap = argparse.ArgumentParser()
    ap.add_argument("folder", type=Path)
    ap.add_argument("run_date", type=dt.date.fromisoformat)
    ap.add_argument("model_version")
    ap.add_argument("--config-json", required=True)
    args = ap.parse_args(argv)
    cfg = PipelineConfig.from_json(args.config_json)
    entry = registry.publish_version(get_spark(cfg.spark), cfg, args.run_date,
                                     {"model/model.pt": args.folder / "model.pt", "lookup": args.folder / "lookup"},
                                     {"model_version": args.model_version, "metrics": {"auc": 0.7}})
    print(json.dumps({"version": entry["version"], "dir": entry["dir"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
