"""The chain of trust of a published version: current.json -> version.json -> every served file.

No Spark: versions are staged with serving.registry.stage_version and made live with
switch_current, as publish does (publish's Spark steps are covered by test_publish_crash).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from models.ctr import CTRModel
from models.warm_start import WarmStartError, id_keyed_tensors, warm_start
from serving import registry
from serving.lookup import IntegrityError, sha256_file
from serving.predictor import Predictor
from spark_jobs.train_model import live_model_path, load_checked_encoder
from tests.serving.helpers import requests_from_examples, small_cfg
from tests.serving.test_predictor import served  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[2]
DAY = dt.date(2026, 1, 3)


@pytest.fixture
def live(served, tmp_path):  # noqa: F811
    """(cfg, version folder, served fixture): one version, validated in fp32 only, made live."""
    _, model_path, lookup, _, _ = served
    cfg = small_cfg(tmp_path / "var")
    record = tmp_path / "validation.json"
    record.write_text(json.dumps({"passed": True, "serving_precisions": ["fp32"]}))
    entry = registry.stage_version(cfg, DAY, {"model/model.pt": model_path, "lookup": lookup,
                                              "validation.json": record}, {"model_version": "test"})
    registry.switch_current(cfg, entry)
    return cfg, registry.version_dir(cfg, entry), served


def _rewrite_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=2, sort_keys=True))


def _reseal_pointer(cfg, folder: Path) -> None:
    """What an attacker controlling version.json and the pointer would do: point at the new bytes."""
    current = registry.read_current(cfg)
    current["version_sha256"] = sha256_file(folder / registry.VERSION_FILE)
    (registry.published_root(cfg) / registry.CURRENT_FILE).write_text(json.dumps(current))


def test_the_live_version_verifies_and_serves(live):
    cfg, folder, (model, _, _, df, _) = live
    info = registry.verify_version(folder, registry.read_current(cfg)["version_sha256"])
    listed = set(info["files"])
    assert {"model/model.pt", "validation.json", "lookup/manifest.json", "lookup/embeddings.npy",
            "lookup/encoder.npz"} <= listed
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert on_disk - listed == {registry.VERSION_FILE}
    predictor = Predictor.from_current(cfg)
    assert np.isfinite(predictor.score_records(requests_from_examples(df.head(3))).scores).all()


def test_embeddings_rewritten_together_with_their_manifest_are_refused(live):
    cfg, folder, _ = live
    lookup = folder / "lookup"
    emb = np.load(lookup / "embeddings.npy")
    emb[0] += 1.0
    np.save(lookup / "embeddings.npy", emb)

    def fix(manifest):
        manifest["files"]["embeddings.npy"] = {"sha256": sha256_file(lookup / "embeddings.npy"),
                                               "bytes": (lookup / "embeddings.npy").stat().st_size}
    _rewrite_json(lookup / "manifest.json", fix)
    # The lookup folder alone vouches for itself (what serving checked before) ...
    Predictor.load(folder / "model" / "model.pt", lookup)
    # ... the version's chain does not.
    with pytest.raises(IntegrityError, match=r"^lookup/embeddings.npy: checksum mismatch with version.json"):
        Predictor.from_current(cfg)


def test_a_file_missing_from_the_list_is_refused(live):
    cfg, folder, _ = live
    _rewrite_json(folder / registry.VERSION_FILE, lambda v: v["files"].pop("lookup/embeddings.npy"))
    with pytest.raises(IntegrityError, match=r"^version.json: .* does not match the sha256 its pointer records"):
        Predictor.from_current(cfg)
    _reseal_pointer(cfg, folder)  # even a list consistent with its pointer must name every file
    with pytest.raises(IntegrityError, match=r"^lookup/embeddings.npy: present in .* but not listed in version.json"):
        Predictor.from_current(cfg)


def test_a_file_the_loader_needs_but_the_list_lacks_is_refused(live):
    cfg, folder, _ = live
    (folder / "lookup" / "embeddings.npy").unlink()
    _rewrite_json(folder / registry.VERSION_FILE, lambda v: v["files"].pop("lookup/embeddings.npy"))
    _reseal_pointer(cfg, folder)
    with pytest.raises(IntegrityError, match=r"^lookup/embeddings.npy: not listed in version.json"):
        Predictor.from_current(cfg)


def test_an_unlisted_extra_file_is_refused(live):
    cfg, folder, _ = live
    (folder / "lookup" / "pca_mean.npy").write_bytes(b"not listed")
    with pytest.raises(IntegrityError, match=r"^lookup/pca_mean.npy: present in .* but not listed"):
        Predictor.from_current(cfg)


def test_an_edited_validation_record_is_refused(live):
    cfg, folder, _ = live
    with pytest.raises(ValueError, match="precision 'bf16' was not validated"):
        Predictor.from_current(cfg, precision="bf16")
    _rewrite_json(folder / "validation.json", lambda r: r.update(serving_precisions=["fp32", "bf16"]))
    with pytest.raises(IntegrityError, match=r"^validation.json: checksum mismatch with version.json"):
        Predictor.from_current(cfg, precision="bf16")


def test_a_pointer_naming_a_folder_outside_the_published_root_is_refused(live):
    cfg, _, _ = live
    path = registry.published_root(cfg) / registry.CURRENT_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), "dir": "../../runs"}))
    with pytest.raises(IntegrityError, match=r"dir '../../runs' is not a version folder name"):
        Predictor.from_current(cfg)


def _tamper_model(path: Path) -> None:
    payload = torch.load(path, weights_only=True)
    key = next(k for k in payload["state_dict"] if k.startswith("dcn."))
    payload["state_dict"][key] = payload["state_dict"][key] + 1.0
    torch.save(payload, path)


def test_warm_start_refuses_a_tampered_live_model(live):
    cfg, folder, (model, _, _, _, _) = live
    path, sha = live_model_path(cfg)
    assert Path(path) == folder / "model" / "model.pt" and sha == sha256_file(path)
    fresh = CTRModel(model.spec, model.cfg)
    live_version = registry.live_model(cfg)
    assert live_version.encoder == folder / "lookup" / "encoder.npz"
    assert live_version.encoder_sha256 == sha256_file(live_version.encoder)
    # untampered: every tensor copied but the id-keyed ones (no encoders given here)
    assert set(warm_start(fresh, path, sha).fresh) == set(id_keyed_tensors(fresh))
    _tamper_model(folder / "model" / "model.pt")
    # the train stage's look-up of the live model verifies the chain ...
    with pytest.raises(IntegrityError, match=r"^model/model.pt: checksum mismatch with version.json"):
        live_model_path(cfg)
    # ... and warm start checks the bytes it loads against the published sha256
    with pytest.raises(WarmStartError, match=r"model.pt: sha256 .* differs from the .* its published version records"):
        warm_start(CTRModel(model.spec, model.cfg), path, sha)


def test_a_version_published_before_checksums_still_serves_in_fp32_only(served, tmp_path, caplog):  # noqa: F811
    """A version folder and pointer as the earlier code wrote them (version.json without a file list)."""
    _, model_path, lookup, df, _ = served
    cfg = small_cfg(tmp_path / "var")
    folder = registry.published_root(cfg) / "v1-2026-01-03"
    (folder / "model").mkdir(parents=True)
    shutil.copy(model_path, folder / "model" / "model.pt")
    shutil.copytree(lookup, folder / "lookup")
    (folder / "validation.json").write_text(json.dumps({"serving_precisions": ["fp32", "bf16"]}))
    entry = {"version": 1, "run_date": "2026-01-03", "dir": folder.name, "model_version": "test"}
    (folder / registry.VERSION_FILE).write_text(json.dumps(entry))
    (registry.published_root(cfg) / registry.CURRENT_FILE).write_text(json.dumps(entry))

    predictor = Predictor.from_current(cfg, precision="auto")
    assert predictor.precision == "fp32" and predictor.version["version"] == 1
    assert "published before published versions carried checksums" in caplog.text
    assert "python spark_jobs/publish.py --date 2026-01-03" in caplog.text
    assert np.isfinite(predictor.score_records(requests_from_examples(df.head(3))).scores).all()
    with pytest.raises(ValueError, match="precision 'bf16' was not validated"):
        Predictor.from_current(cfg, precision="bf16")
    assert live_model_path(cfg) == (str(folder / "model" / "model.pt"), sha256_file(model_path))
    emb = np.load(folder / "lookup" / "embeddings.npy")
    emb[0] += 1.0
    np.save(folder / "lookup" / "embeddings.npy", emb)
    with pytest.raises(IntegrityError, match=r"^embeddings.npy: checksum mismatch"):
        Predictor.from_current(cfg)


def test_registry_cli_takes_config_and_set_after_the_command(live):
    cfg, folder, _ = live
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "serving.registry", "list", "--config", "conf/demo.toml",
                          "--set", f"storage.root={cfg.storage.root}"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"* v1  run_date {DAY}") and "legacy" not in out.stdout
    out = subprocess.run([sys.executable, "-m", "serving.registry", "rollback", "--to-version", "1",
                          "--config", "conf/no-such-file.toml"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and "config file not found: 'conf/no-such-file.toml'" in out.stderr
    assert "unrecognized arguments" not in out.stderr


def test_warm_start_refuses_a_live_encoder_that_differs_from_its_published_checksum(live):
    cfg, _, _ = live
    live_version = registry.live_model(cfg)
    load_checked_encoder(live_version.encoder, live_version.encoder_sha256)  # as published: loads
    with pytest.raises(IntegrityError, match=r"encoder.npz: sha256 .* differs from the 0000000000000000\.\.\."):
        load_checked_encoder(live_version.encoder, "0" * 64)
