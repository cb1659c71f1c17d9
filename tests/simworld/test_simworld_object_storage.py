"""The simulator writes its landing days and truth straight to object storage (a real
S3-compatible server, moto's: tests/s3_server.py), the same files as on a local folder."""

from __future__ import annotations

import pytest
from simworld_helpers import DAYS, tiny_cfg

from core import storage
from core.paths import Paths
from simworld.generate import generate_range
from simworld.truth import oracle_auc
from tests import s3_server
from tests.s3_server import s3_endpoint  # noqa: F401 (a fixture)

BAD = {"world__bad_data__corrupt_image_rate": 0.05, "world__bad_data__missing_image_rate": 0.05}


def _files(uri: str) -> dict[str, bytes]:
    return {name: storage.read_bytes(storage.join(uri, name)) for name in storage.list_files(uri)}


@pytest.mark.slow
def test_days_written_to_a_bucket_equal_days_written_locally(s3_endpoint, tmp_path, monkeypatch):  # noqa: F811
    for k, v in {**s3_server.env(s3_endpoint), "CSCNN_SCRATCH_DIR": str(tmp_path / "scratch")}.items():
        monkeypatch.setenv(k, v)
    local = tiny_cfg(tmp_path / "local", **BAD)
    remote = tiny_cfg(f"s3a://{s3_server.BUCKET}/simworld", **BAD)
    days = DAYS[:2]
    made = [generate_range(c, days[0], days[-1]) for c in (local, remote)]
    # The second day draws only the images of the ads born that day, in the bucket as locally.
    assert [d["new_images"] for d in made[0]] == [d["new_images"] for d in made[1]]
    assert made[0][1]["new_images"] < made[0][0]["new_images"]
    assert made[1][0]["injected"]["image_corrupt"]["count"] > 0
    for area in ("landing", "truth"):
        a, b = (_files(getattr(c.storage.resolved(), f"{area}_uri")) for c in (local, remote))
        assert a and a == b, area
    assert oracle_auc(local, days[1]) == oracle_auc(remote, days[1])
    # Regenerating a day replaces it whole: the same files, _SUCCESS uploaded last, nothing drawn twice.
    again = generate_range(remote, days[1], days[1])
    assert again[0]["new_images"] == 0
    assert _files(Paths.of(remote).landing_day(days[1])) == _files(Paths.of(local).landing_day(days[1]))
    assert list((tmp_path / "scratch").iterdir()) == []  # no scratch folder left behind
