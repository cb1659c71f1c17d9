"""core.storage, the artifacts' and reports' files by URI, on a local folder and on a real
S3-compatible server (moto's, tests/s3_server.py): the same calls give the same files."""

from __future__ import annotations

import json
import os

import pytest

from core import storage
from tests import s3_server
from tests.s3_server import s3_endpoint  # noqa: F401 (a fixture)

@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.slow)])
def root(request, tmp_path, monkeypatch):
    """A folder URI: a local path, or s3a://<bucket>/<test's own prefix> with the server's environment."""
    if request.param == "local":
        return str(tmp_path / "area")
    url = request.getfixturevalue("s3_endpoint")
    for k, v in s3_server.env(url).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("CSCNN_SCRATCH_DIR", str(tmp_path / "scratch"))
    return f"s3a://{s3_server.BUCKET}/{request.node.name.replace('[', '-').rstrip(']')}"


def test_files_round_trip(root):
    uri = storage.join(root, "runs/2026-01-02/validation.json")
    assert not storage.exists(uri)
    with pytest.raises(FileNotFoundError, match="validation.json"):
        storage.read_bytes(uri)
    storage.write_json(uri, {"passed": True, "auc": 0.75})
    assert storage.exists(uri) and not storage.exists(storage.join(root, "runs"))
    assert storage.read_json(uri) == {"passed": True, "auc": 0.75}
    storage.write_text(uri, "{broken")  # a second write replaces the file whole
    with pytest.raises(ValueError, match="validation.json is not valid JSON"):
        storage.read_json(uri)
    storage.write_bytes(storage.join(root, "runs/2026-01-02/model/model.pt"), b"\x00\x01")
    assert storage.list_files(storage.join(root, "runs")) == ["2026-01-02/model/model.pt",
                                                              "2026-01-02/validation.json"]
    candidates = [storage.join(root, p) for p in ("runs/2026-01-02/validation.json", "runs/2026-01-02/model",
                                                 "runs/2026-01-02/absent.json", "elsewhere/x.json")]
    assert storage.existing(candidates) == {candidates[0]}  # a folder is not a file
    assert storage.children(storage.join(root, "runs")) == ["2026-01-02"]
    assert storage.children(storage.join(root, "runs/2026-01-02")) == ["model", "validation.json"]
    storage.remove_tree(storage.join(root, "runs/2026-01-02/model"))
    assert storage.list_files(storage.join(root, "runs")) == ["2026-01-02/validation.json"]
    storage.remove_tree(storage.join(root, "nothing-here"))  # not there: nothing to do
    assert storage.list_files(storage.join(root, "nothing-here")) == storage.children(storage.join(root, "nothing-here")) == []


def test_folders_are_written_and_read_through_local_ones(root, tmp_path):
    uri = storage.join(root, "runs/2026-01-02/lookup")
    with storage.writing_folder(uri) as folder:
        (folder / "table.npy").write_bytes(b"rows")
        (folder / "sub").mkdir()
        (folder / "sub" / "enc.json").write_text("{}")
        (folder / "manifest.json").write_text(json.dumps({"files": 2}))
    assert storage.list_files(uri) == ["manifest.json", "sub/enc.json", "table.npy"]
    with storage.reading_folder(uri) as folder:
        assert (folder / "table.npy").read_bytes() == b"rows" and (folder / "sub" / "enc.json").read_text() == "{}"
        seen = folder
    assert seen.exists() == (not root.startswith("s3a://"))  # a downloaded copy is removed after the block
    with storage.reading_files(uri, ("manifest.json", "absent.bin")) as folder:
        assert json.loads((folder / "manifest.json").read_text()) == {"files": 2}
        assert not (folder / "absent.bin").exists()
    # A rewrite replaces the folder whole; a failed one leaves it as it was.
    with storage.writing_folder(uri) as folder:
        (folder / "manifest.json").write_text("{}")
    assert storage.list_files(uri) == ["manifest.json"]
    with pytest.raises(RuntimeError, match="boom"):
        with storage.writing_folder(uri, fresh=False) as folder:
            assert (folder / "manifest.json").read_text() == "{}"  # fresh=False starts from what is there
            (folder / "partial.bin").write_bytes(b"x")
            raise RuntimeError("boom")
    if root.startswith("s3a://"):
        assert storage.list_files(uri) == ["manifest.json"]
        assert os.listdir(tmp_path / "scratch") == []  # no scratch folder is left behind
    with pytest.raises(FileNotFoundError, match="no folder at .*elsewhere"):
        with storage.reading_folder(storage.join(root, "elsewhere")):
            pass


def test_an_uploaded_folder_has_its_completion_files_last(tmp_path):
    names = ["b/manifest.json", "a.npy", "_SUCCESS", "z.bin", "version.json"]
    assert storage._complete_last(names) == ["a.npy", "z.bin", "_SUCCESS", "b/manifest.json", "version.json"]


def test_a_mirror_pushes_what_changed_and_another_machine_gets_it(root, tmp_path, monkeypatch):
    """Great Expectations' way: files updated in place in a local mirror, the changes pushed back."""
    import time

    uri = storage.join(root, "reports/data_docs")
    folder = storage.mirror(uri)
    (folder / "old.html").write_text("old")
    os.utime(folder / "old.html", (1, 1))  # written long before this validation
    started = time.time()
    (folder / "index.html").write_text("index")
    (folder / "validations").mkdir()
    (folder / "validations" / "run.html").write_text("run")
    if not root.startswith("s3a://"):
        assert folder == tmp_path / "area" / "reports" / "data_docs" and storage.push(folder, uri, started) == 0
        return
    assert storage.push(folder, uri, started - 1.0) == 2
    assert storage.list_files(uri) == ["index.html", "validations/run.html"]
    monkeypatch.setenv("CSCNN_SCRATCH_DIR", str(tmp_path / "other-machine"))
    other = storage.mirror(uri)
    assert other != folder and (other / "validations" / "run.html").read_text() == "run"
    assert not (other / "old.html").exists()


def test_published_versions_default_under_the_artifacts_and_may_be_on_object_storage(tmp_path):
    from core.config import load_config
    from serving.registry import PublishError, on_object_store, published_root, version_uri

    cfg = load_config(overrides={"storage.root": "s3a://bucket/prefix"})
    assert cfg.storage.resolved().published_uri == "s3a://bucket/prefix/artifacts/published"
    assert on_object_store(cfg)
    assert version_uri(cfg, {"dir": "v3-2026-01-05"}) == "s3a://bucket/prefix/artifacts/published/v3-2026-01-05"
    with pytest.raises(PublishError, match=r"storage.published_uri is 's3a://bucket/prefix/artifacts/published'"):
        published_root(cfg)  # no local folder to give
    mounted = load_config(overrides={"storage.root": "s3a://bucket/prefix",
                                     "storage.published_uri": str(tmp_path / "published")})
    assert published_root(mounted) == tmp_path / "published" and not on_object_store(mounted)
