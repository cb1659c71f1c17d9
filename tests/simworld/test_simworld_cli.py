"""`python -m simworld`: config file, --set and the shortcut flags, a progress line per day."""

from __future__ import annotations

import json
import os

import pyarrow.parquet as pq
from simworld_helpers import TINY_WORLD

from simworld.__main__ import main


def _tiny_sets() -> list[str]:
    return [a for k, v in TINY_WORLD.items() if k != "world.impressions_per_day" for a in ("--set", f"{k}={v}")]


def test_cli_writes_each_day_and_prints_progress(tmp_path, capsys):
    config = tmp_path / "world.json"
    config.write_text(json.dumps({"world": {"seed": 3, "base_ctr": 0.05}}))
    rc = main(["--start", "2026-01-01", "--end", "2026-01-02", "--impressions-per-day", "700", "--seed", "11",
               "--config", str(config), "--root", str(tmp_path / "var"), *_tiny_sets()])
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines[:2]] == ["2026-01-01", "2026-01-02"]
    assert "700 impressions" in lines[0] and lines[0].endswith(" s")
    for day, rows in (("2026-01-01", 700), ("2026-01-02", round(700 * 1.04))):
        landing = tmp_path / "var" / "landing" / day
        assert os.path.isfile(landing / "_SUCCESS")
        assert pq.read_metadata(landing / "impressions.parquet").num_rows == rows
    assert os.path.isfile(tmp_path / "var" / "truth" / "2026-01-01" / "truth.parquet")


def test_cli_seed_flag_wins_over_the_config_file(tmp_path):
    config = tmp_path / "world.json"
    config.write_text(json.dumps({"world": {"seed": 3}}))
    common = ["--start", "2026-01-01", "--end", "2026-01-01", "--impressions-per-day", "300", *_tiny_sets()]
    assert main([*common, "--config", str(config), "--root", str(tmp_path / "a")]) == 0
    assert main([*common, "--seed", "3", "--root", str(tmp_path / "b")]) == 0
    assert main([*common, "--config", str(config), "--seed", "4", "--root", str(tmp_path / "c")]) == 0
    read = lambda r: pq.read_table(tmp_path / r / "landing" / "2026-01-01" / "impressions.parquet")  # noqa: E731
    assert read("a").equals(read("b"))
    assert not read("a").equals(read("c"))


def test_cli_reports_bad_input_clearly(tmp_path, capsys):
    assert main(["--start", "2026-01-01", "--end", "2026-01-02", "--root", str(tmp_path),
                 "--set", "world.colour=3"]) == 2
    assert "unknown config key(s) 'colour' in section 'world'" in capsys.readouterr().err
    assert main(["--start", "2026-01-03", "--end", "2026-01-01", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "end date 2026-01-01 is before start date 2026-01-03" in err
    assert main(["--start", "2025-12-01", "--end", "2025-12-01", "--root", str(tmp_path)]) == 2
    assert "before world.epoch" in capsys.readouterr().err
