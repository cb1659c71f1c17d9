"""Published versions on object storage, against a real S3-compatible server (moto's,
tests/s3_server.py): the registry table is the pointer, the lock a lease object.

Publishes and rollbacks run in processes of their own (tests/serving/s3_registry_driver.py,
`python -m serving.registry`), on a Spark Connect server with hadoop-aws; three publishes are
stopped with SIGKILL at a step of their transaction (mid-upload, after the table rows, after the
pointer moved). This process checks the bucket with pyarrow only, as the predictor reads it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from core import object_lock, spark_server, storage
from core.delta_log import live_files
from core.paths import Paths
from serving import registry
from serving.lookup import AD_IDS_FILE, CATEGORIES_FILE, CATEGORY_IDS_FILE, EMBEDDINGS_FILE, MANIFEST_FILE
from tests import s3_server
from tests.s3_server import s3_endpoint  # noqa: F401 (a fixture)
from tests.serving.helpers import ROOT, kill_at, small_cfg

DAY = "2026-01-05"


@pytest.fixture
def s3_env(s3_endpoint, tmp_path, monkeypatch):  # noqa: F811
    for k, v in {**s3_server.env(s3_endpoint), "CSCNN_SCRATCH_DIR": str(tmp_path / "scratch")}.items():
        monkeypatch.setenv(k, v)
    return s3_endpoint


def _sources(folder: Path, seed: int, n: int = 6) -> Path:
    """A fabricated version's files: model.pt and lookup/ with the serving arrays."""
    rng = np.random.default_rng(seed)
    (folder / "lookup").mkdir(parents=True)
    (folder / "model.pt").write_bytes(rng.bytes(4096))
    np.save(folder / "lookup" / AD_IDS_FILE, np.arange(1, n + 1, dtype=np.int64) + 100 * seed)
    np.save(folder / "lookup" / EMBEDDINGS_FILE, rng.standard_normal((n, 4)).astype(np.float32))
    np.save(folder / "lookup" / CATEGORIES_FILE, (np.arange(n) % 2).astype(np.int32))
    np.save(folder / "lookup" / CATEGORY_IDS_FILE, (np.arange(n) % 2 + 10).astype(np.int32))
    (folder / "lookup" / MANIFEST_FILE).write_text(json.dumps({"seed": seed}))
    return folder


def _run(cfg, argv: list[str], tmp_path: Path) -> str:
    """Run ``argv`` (with the config) to its end; its stdout."""
    log = tmp_path / f"run-{time.monotonic_ns()}.log"
    stdout = log.with_suffix(".out")
    with open(log, "w") as err, open(stdout, "w") as out:
        proc = subprocess.Popen([sys.executable, *argv, "--config-json", cfg.to_json()], cwd=ROOT,
                                env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=out, stderr=err)
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    assert "botocore" not in log.read_text()  # quiet logs: the project's own lines
    return stdout.read_text()


def _publish(cfg, folder: Path, tmp_path: Path, pause_at: str | None = None) -> None:
    """Publish ``folder`` in a process of its own; with ``pause_at``, SIGKILLed at that step."""
    argv = ["-m", "tests.serving.s3_registry_driver", str(folder), DAY, folder.name]
    if pause_at:
        kill_at(cfg, pause_at, argv, tmp_path)
    else:
        _run(cfg, argv, tmp_path)


def _table_versions(cfg) -> set[int]:
    return {int(f.partition["version"]) for f in live_files(Paths.of(cfg).lookup_table)}


def _states(cfg) -> list[tuple[int, str, str]]:
    return [(r["version"], r["action"], r["state"]) for r in registry._registry_rows(Paths.of(cfg).registry)]


@pytest.mark.slow
def test_publish_rollback_and_crashes_on_object_storage(s3_env, tmp_path):
    prefix = f"s3a://{s3_server.BUCKET}/registry"
    cfg = small_cfg(tmp_path / "var", **{"storage.warehouse_uri": f"{prefix}/warehouse",
                                         "storage.published_uri": f"{prefix}/published",
                                         "spark.packages": [s3_server.HADOOP_AWS],
                                         "spark.extra_conf": s3_server.s3a_conf(s3_env)})
    published = registry.published_uri(cfg)
    assert registry.on_object_store(cfg) and registry.read_current(cfg) is None
    first, second = _sources(tmp_path / "src" / "first", 1), _sources(tmp_path / "src" / "second", 2)
    try:
        _publish(cfg, first, tmp_path)
        current = registry.read_current(cfg)
        assert (current["version"], current["dir"], current["model_version"]) == (1, f"v1-{DAY}", "first")
        copy = storage.read_json(storage.join(published, registry.CURRENT_FILE))
        assert (copy["version"], copy["txn"]) == (1, current["txn"])
        folder = registry.version_dir(cfg, current)  # a local copy, checked from the registry's checksum down
        info = registry.verify_version(folder, current["version_sha256"])
        assert (folder / "model" / "model.pt").read_bytes() == (first / "model.pt").read_bytes()
        assert sorted(info["files"]) == sorted(["model/model.pt", *(f"lookup/{p.name}" for p in
                                                                    (first / "lookup").iterdir())])
        assert registry.live_model(cfg).model_sha256 == info["files"]["model/model.pt"]["sha256"]
        assert _table_versions(cfg) == {1}
        assert not storage.exists(storage.join(published, registry.LOCK_FILE))  # released
        assert not (tmp_path / "var").exists()  # nothing written under the local storage root

        # Killed mid-upload: an incomplete v2 folder (no version.json), the lock object left behind.
        _publish(cfg, second, tmp_path, "publish:copy")
        assert storage.list_files(storage.join(published, f"v2-{DAY}")) == ["model/model.pt"]
        assert storage.exists(storage.join(published, registry.LOCK_FILE))
        assert registry.read_current(cfg)["version"] == 1 and _states(cfg) == [(1, "publish", "live")]
        # Killed after its table rows: the next publish took over the dead holder's lock and removed
        # the incomplete folder first (v2 is staged again); a pending row, rows in the table.
        _publish(cfg, second, tmp_path, "publish:table")
        assert registry.read_current(cfg)["version"] == 1
        assert _states(cfg) == [(1, "publish", "live"), (2, "publish", "pending")] and _table_versions(cfg) == {1, 2}
        # Killed right after the pointer moved (the live commit), before current.json's copy.
        _publish(cfg, second, tmp_path, "publish:pointer")
        current = registry.read_current(cfg)
        assert (current["version"], current["model_version"]) == (3, "second")
        assert storage.read_json(storage.join(published, registry.CURRENT_FILE))["version"] == 1  # behind
        report = json.loads(_run(cfg, ["-m", "serving.registry", "doctor"], tmp_path))
        assert report["problems"] == [] and report["live"] == f"v3-{DAY}"
        assert storage.read_json(storage.join(published, registry.CURRENT_FILE))["txn"] == current["txn"]
        assert _states(cfg) == [(1, "publish", "live"), (2, "publish", "abandoned"), (3, "publish", "live")]
        assert [name for _, _, name in registry.list_version_dirs(cfg)] == [f"v1-{DAY}", f"v3-{DAY}"]
        assert _table_versions(cfg) == {1, 3}
        registry.verify_version(registry.version_dir(cfg, current), current["version_sha256"])

        # A rollback is one live row: the pointer is v1 again, and its copy follows.
        _run(cfg, ["-m", "serving.registry", "rollback", "--to-version", "1"], tmp_path)
        assert registry.read_current(cfg)["version"] == 1 and _states(cfg)[-1] == (1, "rollback", "live")
        assert storage.read_json(storage.join(published, registry.CURRENT_FILE))["version"] == 1
        listing = _run(cfg, ["-m", "serving.registry", "list"], tmp_path)
        assert f"* v1  run_date {DAY}" in listing and f"  v3  run_date {DAY}" in listing
        assert not (tmp_path / "var").exists()
    finally:
        spark_server.stop(cfg.spark)


def test_the_object_lock_waits_for_a_live_holder_and_takes_over_a_dead_one(s3_env, monkeypatch):
    uri = f"s3a://{s3_server.BUCKET}/locks/.lock"
    client = s3_server.client(s3_env)
    monkeypatch.setattr(object_lock, "POLL_S", 0.05)
    monkeypatch.setattr(object_lock, "LEASE_S", 1.0)  # renewed every 1/3 s
    order: list[str] = []

    def take() -> None:
        with object_lock.held(uri):
            order.append("taken")

    with object_lock.held(uri):  # held for 2.5 leases: its renewals keep the waiter out
        waiter = threading.Thread(target=take)
        waiter.start()
        time.sleep(2.5)
        order.append("released")
    waiter.join(timeout=30)
    assert order == ["released", "taken"]
    assert not storage.exists(uri)

    def lease(pid: int, host: str, renewal: int = 0) -> None:
        client.put_object(Bucket=s3_server.BUCKET, Key="locks/.lock",
                          Body=json.dumps({"owner": "x", "host": host, "pid": pid, "renewal": renewal}).encode())

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lease(dead.pid, socket.gethostname())  # this host's, its process gone: taken at once
    take()
    lease(1, "another-host")  # another host's lease that nobody renews: taken after a lease of the waiter's clock
    started = time.monotonic()
    take()
    assert time.monotonic() - started >= 1.0
    assert order == ["released", "taken", "taken", "taken"]
    # Another host's holder that renews (whatever its clock says) is waited for, however long.
    lease(1, "another-host")
    waiter = threading.Thread(target=take)
    waiter.start()
    for renewal in range(1, 9):
        time.sleep(0.3)
        lease(1, "another-host", renewal)
    assert waiter.is_alive() and len(order) == 4
    client.delete_object(Bucket=s3_server.BUCKET, Key="locks/.lock")
    waiter.join(timeout=10)
    assert not waiter.is_alive() and len(order) == 5 and not storage.exists(uri)
