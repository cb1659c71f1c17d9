"""Landing images are read only from plainly inside the landing area: a symlink on an image's
path (to a file, a folder, nothing) is quarantined as image_uri_escapes and never followed."""

from __future__ import annotations

import hashlib
import os
import threading

import pytest
from pyspark.sql import functions as F

from core.paths import Paths
from spark_jobs import ingest
from tests.ingest.landing_fixture import DAY, _png, ad, impression, write_day


def _ad_reasons(spark, paths) -> dict[int, str]:
    q = spark.read.format("delta").load(paths.quarantine).where(F.col("source") == "ads")
    return {int(r.key): r.reason for r in q.collect()}


def test_symlinks_and_escaping_uris_are_quarantined_without_reading_outside(spark, tmp_cfg, tmp_path):
    paths = Paths.of(tmp_cfg)
    landing = paths.landing
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    secret_png = _png((123, 45, 67))
    (outside / "real.png").write_bytes(secret_png)
    (outside / "notes.txt").write_text("not an image, outside the landing area")
    (outside / "dir" / "5.png").write_bytes(secret_png)
    fifo = outside / "probe.png"
    os.mkfifo(fifo)

    uris = {
        1: "images/0/1.png",  # a plain file: accepted
        2: "images/0/2.png",  # -> an outside image
        3: "images/0/3.png",  # -> an outside non-image
        4: "images/0/4.png",  # -> an outside path that does not exist
        5: "images/linked/5.png",  # images/linked -> an outside folder
        6: "images/0/6.png",  # -> an outside FIFO: opening it would wake the probe below
        7: "images/0/7.png",  # -> 1.png, inside, yet a symlink too
        8: str(outside / "real.png"),  # absolute
        9: "images/../../../outside/real.png",  # '..'
        10: "images/%2e%2e/%2e%2e/%2e%2e/outside/real.png",  # encoded '..': a literal folder name, absent
        11: "images/0/1.png\x00.txt",  # NUL
    }
    write_day(landing, [impression(0, ad_id=1)], [ad(a, image_uri=u) for a, u in uris.items()],
              {"images/0/1.png": _png((200, 10, 10))})
    img0 = os.path.join(landing, "images", "0")
    for ad_id, target in ((2, outside / "real.png"), (3, outside / "notes.txt"), (4, outside / "missing.png"),
                          (6, fifo), (7, "1.png")):
        os.symlink(target, os.path.join(img0, f"{ad_id}.png"))
    os.symlink(outside / "dir", os.path.join(landing, "images", "linked"))

    opened = threading.Event()

    def probe():
        with open(fifo, "wb") as f:  # returns once some process opens the FIFO to read it
            opened.set()
            try:
                f.write(secret_png)
            except BrokenPipeError:
                pass

    watcher = threading.Thread(target=probe, daemon=True)
    watcher.start()
    record = ingest.run(tmp_cfg, spark, DAY)
    assert not opened.is_set(), "ingest opened a file outside the landing area"
    release = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    watcher.join(10)
    os.close(release)
    assert opened.is_set()  # the probe does see a reader

    reasons = _ad_reasons(spark, paths)
    assert reasons == {**{a: "image_uri_escapes" for a in (2, 3, 4, 5, 6, 7, 8, 9, 11)}, 10: "image_missing"}
    assert record["reasons"]["ads"] == {"image_uri_escapes": 9, "image_missing": 1}
    images = spark.read.format("delta").load(paths.bronze_images).collect()
    assert [r.ad_id for r in images] == [1]
    assert hashlib.sha256(secret_png).hexdigest() not in {r.sha256 for r in images}


def test_read_inside_refuses_every_symlink_and_reads_plain_files(tmp_path):
    root = tmp_path / "landing"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "x.png").write_bytes(b"inside")
    (root / "a" / "dir.png").mkdir()
    os.symlink("b", root / "a" / "alias")
    os.symlink("x.png", root / "a" / "b" / "y.png")
    os.symlink(tmp_path / "nowhere", root / "a" / "dangling.png")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert ingest.read_inside(fd, "a/b/x.png") == b"inside"
        assert ingest.read_inside(fd, "a/./b//x.png") == b"inside"
        for absent in ("a/b/none.png", "a/none/x.png", "a/b/x.png/z", "a/dir.png"):
            assert ingest.read_inside(fd, absent) is None, absent
        for refused in ("a/alias/x.png", "a/b/y.png", "a/dangling.png", "a/../a/b/x.png", ""):
            with pytest.raises(ingest._PathRefused):
                ingest.read_inside(fd, refused)
    finally:
        os.close(fd)
