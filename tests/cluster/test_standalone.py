"""The daily stages on a real Spark standalone cluster, with the storage root on a real S3 server,
give the outputs they give on `local[*]` with local storage.

The cluster is core/standalone.py's: a master and a worker started from the Spark pyspark ships,
on 127.0.0.1, with each application's executors in JVMs of their own. The S3 server is moto's
(tests/s3_server.py), reached through s3a by Spark and through pyarrow by the trainer, with the
credentials in the stages' environment only. A tiny world's day D runs twice, in two storage
roots: once with the tiny config's `local[2]` and local folders, once with `spark.master` set to
the cluster's URL and `storage.root` on the bucket: landing, warehouse, artifacts (snapshot, model,
checkpoint, lookup files, records, timings) and reports (quality summaries, Data Docs, report data)
and the published versions (the registry's live row is the pointer there, serving/registry.py)
all there. The world's days and the history before D are made once, locally;
the landing area and the warehouse (the bronze tables of the history) are uploaded to the bucket.
Each stage is the command the DAG's task runs, in the DAG's order (tests/day_stages.py). Then the
examples table, the vocabularies, the stable-id registry, the bins, the lookup table, the model's
scores on day D and the gates' verdicts must match, nothing but the run's config may appear on
the local disk, and the published version serves from the bucket.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from core import spark_server, standalone, storage
from core.config import load_config
from core.delta_log import filesystem, live_files
from core.paths import Paths, local_path
from features.examples import SPLITS, examples_location, read_example_files
from features.tables import BINS_TABLE, EXAMPLES_TABLE, ID_REGISTRY_TABLE, VOCAB_TABLE
from models.train import load_model, predict
from reports.run_report import render
from serving.predictor import Predictor
from spark_jobs.train_model import read_snapshot
from tests import s3_server
from tests.dags.tiny_world import CONFIG
from tests.day_stages import DAY, STAGE_TIMEOUT_S, history, run_day
from tests.s3_server import s3_endpoint  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slow
PREFIX = "prefix"


def _config(root: Path, master: str, s3_url: str | None = None) -> Path:
    """The tiny world's config with its storage under `root`, `master` as spark.master and, with
    `s3_url`, its storage root on the S3 server."""
    config_file = root / "run.toml"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    text = CONFIG.format(root=root / "var")
    assert 'master = "local[2]"' in text
    text = text.replace('master = "local[2]"', f'master = "{master}"')
    text = text.replace("[train]\n", "[train]\ncheckpoint_every = 2\n", 1)  # checkpoints to copy to the bucket
    config_file.write_text(text if s3_url is None else s3_server.with_s3_root(text, s3_url, PREFIX))
    return config_file


def _delta_rows(uri: str) -> list[str]:
    """A Delta table's rows (partition values included), sorted, read from its live files with pyarrow."""
    rows = []
    for f in live_files(uri):
        part = pq.read_table(f.path, filesystem=filesystem(uri)[0]).to_pylist()
        rows += [repr(sorted({**r, **f.partition}.items())) for r in part]
    return sorted(rows)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    folder = tmp_path_factory.mktemp("standalone")
    running = standalone.ensure_cluster(cores=2, memory="2g", folder=folder)
    yield running
    standalone.stop(folder)
    assert standalone.running(folder) is None


@pytest.mark.timeout(2 * 12 * STAGE_TIMEOUT_S)
def test_the_daily_stages_on_a_cluster_and_s3_match_local(cluster, s3_endpoint, tmp_path, monkeypatch):  # noqa: F811
    assert cluster.url.startswith("spark://127.0.0.1:")
    local_file = _config(tmp_path / "local", "local[2]")
    cluster_file = _config(tmp_path / "cluster", cluster.url, s3_endpoint)
    local_cfg, cluster_cfg = load_config(local_file), load_config(cluster_file)
    remote_storage = cluster_cfg.storage.resolved()
    assert remote_storage.warehouse_uri == f"s3a://{s3_server.BUCKET}/{PREFIX}/warehouse"
    assert remote_storage.artifacts_uri == f"s3a://{s3_server.BUCKET}/{PREFIX}/artifacts"
    # One history for both: the landing days and the bronze tables uploaded, before day D runs anywhere.
    history(local_file)
    local_storage = local_cfg.storage.resolved()
    for area in ("landing", "warehouse"):
        assert s3_server.upload_folder(s3_endpoint, local_path(getattr(local_storage, f"{area}_uri")),
                                       f"{PREFIX}/{area}") > 0
    run_day(local_file)
    env = {**s3_server.env(s3_endpoint), "CSCNN_SCRATCH_DIR": str(tmp_path / "scratch")}
    try:
        run_day(cluster_file, env)
    finally:  # the stages' Spark Connect server for the cluster: its master and endpoint go away with the module
        spark_server.stop(cluster_cfg.spark)
    assert cluster_cfg.spark.master == cluster.url and local_cfg.spark.master == "local[2]"

    # The stages' Spark ran on the cluster: its worker started executors (JVMs of their own) for it.
    apps = sorted((cluster.folder / "work").glob("app-*"))
    assert apps and all((app / "0" / "stderr").exists() for app in apps), apps
    # The day's tables and files are objects in the bucket, the published version too; on the local
    # disk there is nothing but the config, and no stage left a scratch folder behind (the mirrors
    # of the Data Docs and of the versions validate read stay).
    keys = s3_server.keys(s3_endpoint, PREFIX)
    for table in ("bronze/impressions", "features/day_rows", f"features/examples/{DAY}", "features/vocab",
                  "lookup_table"):
        assert any(k.startswith(f"{PREFIX}/warehouse/{table}/_delta_log/") for k in keys), table
    run_files = {k.split(f"/runs/{DAY}/", 1)[1] for k in keys if k.startswith(f"{PREFIX}/artifacts/runs/{DAY}/")}
    for name in ("ingest.json", "features.json", "snapshot/_SUCCESS",
                 "snapshot/feature_spec.json", "snapshot/encoder.npz", "model/model.pt", "model/checkpoint.pt",
                 "model/manifest.json", "lookup/manifest.json", "validation.json", "report_data/calibration.json",
                 "report_data/attention.json", "timings/train_model.json", "timings/publish.json"):
        assert name in run_files, (name, sorted(run_files))
    assert any(k.startswith(f"{PREFIX}/reports/data_docs/validations/") and k.endswith(".html") for k in keys)
    assert f"{PREFIX}/reports/quality/{DAY}.json" in keys
    cluster_root = Path(tmp_path / "cluster")
    assert sorted(p.name for p in cluster_root.iterdir()) == ["run.toml"]
    assert f"{PREFIX}/artifacts/published/v1-{DAY}/version.json" in keys
    assert [p.name for p in (tmp_path / "scratch").iterdir()] == ["mirror"]

    local, remote = Paths.of(local_cfg), Paths.of(cluster_cfg)
    for k, v in env.items():  # this process reads the bucket too, with pyarrow
        monkeypatch.setenv(k, v)
    # The run date's examples, split by split, in the trainer's row order.
    for split in SPLITS:
        a, b = (read_example_files(examples_location(p.table(EXAMPLES_TABLE), DAY), split) for p in (local, remote))
        assert a.num_rows > 0 and a.equals(b), split
    # Vocabularies, the stable-id registry, the bins and the lookup table: the same rows.
    for name in (VOCAB_TABLE, ID_REGISTRY_TABLE, BINS_TABLE, "lookup_table"):
        x, y = (_delta_rows(p.lookup_table if name == "lookup_table" else p.table(name)) for p in (local, remote))
        assert x and x == y, name
    # The trained models score day D alike, and the gates gave the same verdicts.
    _, _, holdout, images, _ = read_snapshot(local_cfg, DAY)
    scores = []
    for p in (local, remote):
        with storage.reading_files(p.run_model_dir(DAY), ("model.pt",)) as folder:
            scores.append(predict(load_model(folder / "model.pt"), holdout, images))
    assert holdout.num_rows > 0 and np.abs(scores[0] - scores[1]).max() <= 1e-6
    verdicts = [[(g["name"], g["passed"]) for g in storage.read_json(p.validation_record(DAY))["gates"]]
                for p in (local, remote)]
    assert verdicts[0] and verdicts[0] == verdicts[1]
    # The version published in the bucket (the registry's live row its pointer) serves what the local one does.
    served = [Predictor.from_current(c) for c in (local_cfg, cluster_cfg)]
    assert [p.version["dir"] for p in served] == [f"v1-{DAY}"] * 2
    assert np.array_equal(np.asarray(served[0].table.ad_ids), np.asarray(served[1].table.ad_ids))

    # The run report (the DAG's render_report), from the run's config and records in the bucket, to the bucket.
    config_uri = storage.join(remote.run_dir(DAY), "config.json")
    storage.write_text(config_uri, dataclasses.replace(cluster_cfg, storage=remote.storage).to_json())
    assert render(config_uri, str(DAY)) == remote.run_report(DAY)
    page = storage.read_text(remote.run_report(DAY))
    assert f'<div class="headline pass">Published v1-{DAY} for {DAY}' in page
    assert "data:image/png;base64," in page and ">Data Docs</a>" in page  # attention panels, links into the bucket's docs
    assert "unreadable:" not in page and "outside the served reports folder" not in page

