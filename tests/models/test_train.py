"""Training loop tests: metrics, model files, resume after a kill, warm start, cnn_fixed,
1 and 2 processes under models.launch (and the sockets they listen on)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from core.config import load_config
from models.batching import preprocess_images, shard_range
from models.ctr import CTRModel
from models.synthetic import make_examples, make_spec
from models.train import (auc_score, compute_metrics, embed_images, image_statistics, load_model, predict,
                          pretrain_backbone, seed_everything, train)
from models.visual import build_visual_tower
from models.warm_start import warm_start

# This folder's helpers: pytest puts tests/models on sys.path (the folder has no __init__.py).
from ddp_worker import DDP_OVERRIDES, ddp_data
from listeners import is_loopback, listeners_while_running

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

SMALL = {"model.deep_dims": [16, 8, 4], "model.head_dims": [8], "model.visual_dim": 6,
         "model.prior_channels": 3, "model.prior_spatial": 3, "model.attention_layers": 2,
         "train.batch_size": 48, "train.lr": 0.01, "train.device": "cpu", "train.pretrain_steps": 3}


@pytest.fixture(scope="module")
def world():
    spec = make_spec(n_categories=4, vocab=13)
    train_df, images = make_examples(spec, n_ads=12, impressions_per_ad=(4, 10), image_size=32, seed=1)
    hold_df, hold_images = make_examples(spec, n_ads=6, impressions_per_ad=(4, 10), image_size=32, seed=2)
    return spec, train_df, hold_df, {**images, **hold_images}


def cfg_with(**overrides):
    return load_config(overrides={**SMALL, **{k.replace("__", "."): v for k, v in overrides.items()}})


def weights(path):
    return torch.load(path, weights_only=True)["state_dict"]


def test_auc_and_metrics_by_hand():
    assert auc_score(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    assert auc_score(np.array([0, 1]), np.array([0.5, 0.5])) == pytest.approx(0.5)
    m = compute_metrics(np.array([0, 1, 0, 1]), np.array([0.2, 0.6, 0.4, 0.8]), np.array([True, True, False, False]))
    assert m["auc"] == pytest.approx(1.0)
    assert m["mean_pred"] == pytest.approx(0.5) and m["observed_ctr"] == pytest.approx(0.5)
    assert m["calibration"] == pytest.approx(1.0) and m["auc_cold"] == pytest.approx(1.0)
    assert m["logloss"] == pytest.approx(-np.mean(np.log([0.8, 0.6, 0.6, 0.8])))


def test_train_writes_a_model_that_predicts_like_training(world, tmp_path):
    spec, train_df, hold_df, images = world
    metrics = train(cfg_with(model__variant="cscnn"), spec, train_df, hold_df, images, tmp_path)
    for key in ("auc", "auc_cold", "logloss", "mean_pred", "observed_ctr", "calibration", "impressions_per_s",
                "first_batch_s"):
        assert key in metrics
    assert metrics["steps"] > 0 and 0.0 <= metrics["auc"] <= 1.0
    model = load_model(tmp_path / "model.pt")
    preds = predict(model, hold_df, images)
    assert preds.shape == (len(hold_df),) and ((preds > 0) & (preds < 1)).all()
    again = compute_metrics(hold_df["label"].to_numpy(), preds, hold_df["is_cold"].to_numpy())
    assert again["logloss"] == pytest.approx(metrics["logloss"], rel=1e-5)
    ads = np.array(sorted(images))[:5]
    emb = embed_images(model, np.stack([images[a] for a in ads]), np.zeros(5, np.int64))
    assert emb.shape == (5, 6)


@pytest.mark.parametrize("chunk_rows", [65_536, 7])  # one chunk; many, with batches cut across them
def test_resume_after_kill_gives_the_same_weights(world, tmp_path, chunk_rows):
    spec, train_df, hold_df, images = world
    common = dict(model__variant="cscnn", train__checkpoint_every=2, train__epochs=2, train__eval_every=3,
                  train__chunk_rows=chunk_rows, train__batch_size=20)
    train(cfg_with(**common), spec, train_df, hold_df, images, tmp_path / "full")
    # "kill" after step 3: the last checkpoint is step 2, the run is redone from there
    train(cfg_with(**common, train__max_steps=3), spec, train_df, hold_df, images, tmp_path / "killed")
    ckpt = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 2
    resumed = train(cfg_with(**common), spec, train_df, hold_df, images, tmp_path / "killed")
    full, again = weights(tmp_path / "full" / "model.pt"), weights(tmp_path / "killed" / "model.pt")
    assert resumed["steps"] > 3
    for name in full:
        assert torch.equal(full[name], again[name]), name
    fresh = train(cfg_with(**common, train__max_steps=3), spec, train_df, hold_df, images, tmp_path / "fresh",
                  resume=False)
    assert fresh["steps"] == 3


def test_warm_start_copies_matching_tensors_only(world, tmp_path):
    spec, train_df, hold_df, images = world
    train(cfg_with(model__variant="dcn", train__max_steps=2), spec, train_df, hold_df, images, tmp_path / "a")
    src = weights(tmp_path / "a" / "model.pt")
    model = CTRModel(spec, cfg_with(model__variant="cbam").model)
    before = model.state_dict()["embedding.single.user_id.weight"].clone()
    skipped = warm_start(model, tmp_path / "a" / "model.pt").fresh
    own = model.state_dict()
    assert torch.equal(own["dcn.cross.weights.0"], src["dcn.cross.weights.0"])
    # without encoders an id-keyed table is never copied by position: it stays fresh
    assert "embedding.single.user_id.weight" in skipped
    assert torch.equal(own["embedding.single.user_id.weight"], before)
    assert "dcn.deep.0.weight" in skipped  # input width grew by visual_dim
    assert any(k.startswith("tower.") for k in skipped)
    metrics = train(cfg_with(model__variant="cbam", train__max_steps=1), spec, train_df, hold_df, images,
                    tmp_path / "b", init_from=tmp_path / "a" / "model.pt")
    assert metrics["steps"] == 1


def test_cnn_fixed_pretrains_then_keeps_the_backbone_fixed(world, tmp_path):
    spec, train_df, hold_df, images = world
    train(cfg_with(model__variant="cnn_fixed", train__max_steps=3, train__pretrain_steps=0), spec, train_df,
          hold_df, images, tmp_path / "nopre")
    seed_everything(1)  # train() seeds with train.seed = 1 before building the model
    initial = CTRModel(spec, cfg_with(model__variant="cnn_fixed").model).state_dict()
    trained = weights(tmp_path / "nopre" / "model.pt")
    backbone = [k for k in trained if k.startswith("tower.backbone.")]
    assert backbone and all(torch.equal(initial[k], trained[k]) for k in backbone)
    assert not torch.equal(initial["tower.proj.weight"], trained["tower.proj.weight"])
    train(cfg_with(model__variant="cnn_fixed", train__max_steps=1), spec, train_df, hold_df, images,
          tmp_path / "pre")
    pre = weights(tmp_path / "pre" / "model.pt")
    assert not torch.equal(initial["tower.backbone.stem.0.weight"], pre["tower.backbone.stem.0.weight"])
    assert load_model(tmp_path / "pre" / "model.pt").tower.backbone_frozen


def test_shards_are_disjoint_and_cover_the_batch():
    groups = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3, 4, 4])
    parts = [shard_range(groups, 2, 12, r, 3) for r in range(3)]  # rows 2.. start mid-group 0
    assert parts[0][0] == 2 and parts[-1][1] == 12
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
    for lo, hi in parts:
        assert hi > lo and (lo == 2 or groups[lo] != groups[lo - 1])
    assert shard_range(groups, 0, 3, 0, 2) is None  # one group, two ranks


def launch(nproc, out_dir, log_path):
    """Train the ddp_worker setup under models.launch; (exit status, every socket its tree listened on)."""
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "models.launch", "--nproc-per-node", str(nproc),
           os.path.join(HERE, "ddp_worker.py"), str(out_dir)]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            seen = listeners_while_running(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=300)
    return proc.returncode, seen


def test_the_socket_sampler_sees_a_grandchild_listening_on_every_interface(tmp_path):
    listen = "import socket, time; s = socket.create_server(('0.0.0.0', 0)); time.sleep(1.5)"
    parent = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {listen!r}])"
    proc = subprocess.Popen([sys.executable, "-c", parent])
    seen = listeners_while_running(proc)
    assert proc.returncode == 0
    assert [addr for addr, _ in seen] == ["0.0.0.0"] and not is_loopback("0.0.0.0")
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("::")


def test_one_process_trains_without_listening_at_all(tmp_path):
    spec, df, holdout, images = ddp_data()
    single = train(load_config(overrides=DDP_OVERRIDES), spec, df, holdout, images, tmp_path / "here", resume=False)
    status, seen = launch(1, tmp_path / "one", tmp_path / "one.log")
    assert status == 0, (tmp_path / "one.log").read_text()[-3000:]
    assert seen == set()
    metrics = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert metrics["world_size"] == 1 and metrics["logloss"] == pytest.approx(single["logloss"], abs=1e-5)


def test_two_processes_match_one_process_and_listen_on_loopback_only(tmp_path):
    spec, df, holdout, images = ddp_data()
    single = train(load_config(overrides=DDP_OVERRIDES), spec, df, holdout, images, tmp_path / "one", resume=False)
    status, seen = launch(2, tmp_path / "two", tmp_path / "two.log")
    assert status == 0, (tmp_path / "two.log").read_text()[-3000:]
    assert seen, "the launcher's store listens while the workers run"
    assert all(is_loopback(addr) for addr, _ in seen), seen
    one, two = weights(tmp_path / "one" / "model.pt"), weights(tmp_path / "two" / "model.pt")
    two_metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two_metrics["world_size"] == 2
    # each rank saw only its share: together exactly the single process's impressions
    assert two_metrics["train_impressions"] == single["train_impressions"]
    assert two_metrics["logloss"] == pytest.approx(single["logloss"], abs=1e-5)
    assert single["steps"] == 4 and single["world_size"] == 1
    seed_everything(load_config(overrides=DDP_OVERRIDES).train.seed)
    initial = CTRModel(spec, load_config(overrides=DDP_OVERRIDES).model).state_dict()
    for name in one:
        assert torch.allclose(one[name], two[name], atol=2e-5, rtol=1e-4), name
    assert not torch.allclose(one["dcn.out.weight"], initial["dcn.out.weight"], atol=1e-3)  # it trained


def test_a_failing_worker_stops_the_other_and_fails_the_launch(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text("import os, sys, time\n"
                      "if os.environ['RANK'] == '1':\n    sys.exit(3)\n"
                      "time.sleep(120)\n")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "models.launch", "--nproc-per-node", "2", str(script)],
                          env={**os.environ, "PYTHONPATH": ROOT}, cwd=ROOT, capture_output=True, text=True,
                          timeout=100)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "worker 1 exited with status 3" in proc.stderr
    assert time.monotonic() - started < 60  # rank 0 was stopped, not waited for


def test_workers_die_with_a_launcher_killed_by_sigkill(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text("import os, sys, time\n"
                      f"open(os.path.join({str(tmp_path)!r}, 'pid' + os.environ['RANK']), 'w').write(str(os.getpid()))\n"
                      "time.sleep(120)\n")
    launcher = subprocess.Popen([sys.executable, "-m", "models.launch", "--nproc-per-node", "2", str(script)],
                                env={**os.environ, "PYTHONPATH": ROOT}, cwd=ROOT)
    pid_files = [tmp_path / "pid0", tmp_path / "pid1"]
    deadline = time.monotonic() + 90
    while not all(p.exists() and p.read_text() for p in pid_files):
        assert time.monotonic() < deadline and launcher.poll() is None, "the workers did not start"
        time.sleep(0.1)
    workers = [int(p.read_text()) for p in pid_files]
    launcher.send_signal(signal.SIGKILL)
    launcher.wait(timeout=10)
    deadline = time.monotonic() + 10
    while any(os.path.exists(f"/proc/{pid}") and "(Z)" not in _state(pid) for pid in workers):
        assert time.monotonic() < deadline, "a worker outlived its killed launcher"
        time.sleep(0.1)


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return "(" + f.read().rsplit(")", 1)[1].split()[0] + ")"
    except OSError:
        return "(gone)"


def test_pretraining_learns_the_colour_statistics_it_keeps_for_cnn_fixed():
    rng = np.random.default_rng(0)
    n = 256
    level = rng.random(n)  # each image's brightness, independent of its category
    categories = rng.integers(0, 3, n)
    images = np.clip(rng.normal(40 + 180 * level[:, None, None, None], 20, (n, 16, 16, 3)), 0, 255).astype(np.uint8)
    torch.manual_seed(0)
    tower = build_visual_tower(cfg_with(model__variant="cnn_fixed", model__backbone="light").model, 3)
    stats = pretrain_backbone(tower, images, categories, steps=150, batch_size=32, lr=3e-3, seed=0)
    targets = image_statistics(preprocess_images(images))  # (n, 6)
    baseline = float(targets.var(dim=0, unbiased=False).mean())  # MSE of always predicting the mean
    assert set(stats) == {"loss", "accuracy", "stats_loss"}
    assert stats["stats_loss"] < 0.25 * baseline, (stats, baseline)


def test_cpu_training_repeats_bit_for_bit(tmp_path):
    """train.deterministic (default): the same data, seed and config give the same weights. At this
    size the grouped gather's backward summed in a varying order without it (a different loss
    after one epoch of the light tower)."""
    cfg = load_config(overrides={"model.variant": "cnn_finetune", "train.device": "cpu", "train.warm_start": False,
                                 "train.checkpoint_every": 0})
    spec = make_spec(n_categories=8, vocab=20)
    df, images = make_examples(spec, n_ads=300, impressions_per_ad=(20, 60), seed=4)
    runs = [weights(train(cfg, spec, df, None, images, tmp_path / f"run{i}", resume=False)["model_path"])
            for i in range(2)]
    for name, tensor in runs[0].items():
        assert torch.equal(tensor, runs[1][name]), name
    assert not torch.are_deterministic_algorithms_enabled()  # the process-wide switch is restored
