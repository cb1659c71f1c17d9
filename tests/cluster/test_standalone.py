"""The daily stages on a real Spark standalone cluster give the outputs they give on `local[*]`.

The cluster is core/standalone.py's: a master and a worker started from the Spark pyspark ships,
on 127.0.0.1, with each application's executors in JVMs of their own. A tiny world's day D runs
twice, in two storage roots: once with the tiny config's `local[2]` and once with `spark.master`
set to the cluster's URL. The world's days and the history before D are made once and copied.
Each stage is the command the DAG's task runs, in the DAG's order: a Spark stage as
`python -m core.stage_runner run spark_jobs.<stage> --date D --config FILE` (a fork of the warm
stage runner, as the DAG's StageOperator runs it), training through models.launch. Then the examples table, the
vocabularies, the stable-id registry, the bins, the lookup table and the model's scores on day D
must match.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core import spark_server, standalone
from core.config import load_config
from core.paths import Paths, local_path
from features.examples import SPLITS, examples_location, read_example_files
from features.tables import BINS_TABLE, EXAMPLES_TABLE, ID_REGISTRY_TABLE, VOCAB_TABLE
from models.train import load_model, predict
from spark_jobs.train_model import read_snapshot
from tests.dags.conftest import REPO_ROOT
from tests.dags.tiny_world import CONFIG, EPOCH

pytestmark = pytest.mark.slow

DAY = EPOCH + dt.timedelta(days=2)
# The DAG's Spark stages before and after training (dags/cscnn_daily.py), in its order.
BEFORE_TRAINING = ("ingest", "check_quality", "build_window", "check_examples", "export_snapshot")
AFTER_TRAINING = ("build_lookup", "validate", "publish")
STAGE_TIMEOUT_S = 600


def _run(args: list[str]) -> None:
    proc = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=STAGE_TIMEOUT_S)
    assert proc.returncode == 0, f"{' '.join(args)} exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-4000:]}"


def _config(root: Path, master: str) -> Path:
    """The tiny world's config with its storage under `root` and `master` as spark.master."""
    config_file = root / "run.toml"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    text = CONFIG.format(root=root / "var")
    assert 'master = "local[2]"' in text
    config_file.write_text(text.replace('master = "local[2]"', f'master = "{master}"'))
    return config_file


def _history(config_file: Path) -> None:
    """Generate the tiny world and ingest the days before D (the window's history)."""
    config = str(config_file)
    _run(["-m", "simworld", "--config", config, "--start", str(EPOCH), "--end", str(DAY)])
    _run(["-m", "spark_jobs.ingest", "--config", config, "--date", str(EPOCH),
          "--end-date", str(DAY - dt.timedelta(days=1))])


def _run_day(config_file: Path) -> None:
    """Day D's stages, as the DAG runs them."""
    config = str(config_file)
    for stage in BEFORE_TRAINING:
        _run(["-m", "core.stage_runner", "run", f"spark_jobs.{stage}", "--date", str(DAY), "--config", config])
    _run(["-m", "models.launch", "--nproc-per-node", "1", "-m", "spark_jobs.train_model",
          "--date", str(DAY), "--config", config])
    for stage in AFTER_TRAINING:
        _run(["-m", "core.stage_runner", "run", f"spark_jobs.{stage}", "--date", str(DAY), "--config", config])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    folder = tmp_path_factory.mktemp("standalone")
    running = standalone.ensure_cluster(cores=2, memory="2g", folder=folder)
    yield running
    standalone.stop(folder)
    assert standalone.running(folder) is None


@pytest.mark.timeout(2 * 12 * STAGE_TIMEOUT_S)
def test_the_daily_stages_on_a_standalone_cluster_match_local(spark, cluster, tmp_path):
    assert cluster.url.startswith("spark://127.0.0.1:")
    local_file, cluster_file = _config(tmp_path / "local", "local[2]"), _config(tmp_path / "cluster", cluster.url)
    local_cfg, cluster_cfg = load_config(local_file), load_config(cluster_file)
    # One history for both (landing days and bronze tables, copied before day D runs anywhere).
    _history(local_file)
    shutil.copytree(local_cfg.storage.root, cluster_cfg.storage.root)
    _run_day(local_file)
    try:
        _run_day(cluster_file)
    finally:  # the stages' Spark Connect server for the cluster: its master goes away with the module
        spark_server.stop(cluster_cfg.spark)
    assert cluster_cfg.spark.master == cluster.url and local_cfg.spark.master == "local[2]"

    # The stages' Spark ran on the cluster: its worker started executors (JVMs of their own) for it.
    apps = sorted((cluster.folder / "work").glob("app-*"))
    assert apps and all((app / "0" / "stderr").exists() for app in apps), apps

    local, remote = Paths.of(local_cfg), Paths.of(cluster_cfg)
    # The run date's examples, split by split, in the trainer's row order.
    for split in SPLITS:
        a, b = (read_example_files(examples_location(p.table(EXAMPLES_TABLE), DAY), split) for p in (local, remote))
        assert a.num_rows > 0 and a.equals(b), split
    # Vocabularies, the stable-id registry, the bins and the lookup table: the same rows.
    def table(p: Paths, name: str) -> str:
        return p.lookup_table if name == "lookup_table" else p.table(name)

    for name in (VOCAB_TABLE, ID_REGISTRY_TABLE, BINS_TABLE, "lookup_table"):
        x, y = (spark.read.format("delta").load(table(p, name)) for p in (local, remote))
        assert x.count() > 0 and x.count() == y.count(), name
        assert x.exceptAll(y).count() == 0 and y.exceptAll(x).count() == 0, name
    # The trained models score day D alike.
    _, _, holdout, images, _ = read_snapshot(local_cfg, DAY)
    scores = [predict(load_model(os.path.join(local_path(p.run_model_dir(DAY)), "model.pt")), holdout, images)
              for p in (local, remote)]
    assert holdout.num_rows > 0 and np.abs(scores[0] - scores[1]).max() <= 1e-6

