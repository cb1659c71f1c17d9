"""The tiny simulated world the whole-DAG tests run on: conf/tiny.toml (bench/daily_overhead.py
runs the same world), with each test's storage root."""

from __future__ import annotations

import datetime as dt
import tomllib
from pathlib import Path

TINY_TOML = Path(__file__).resolve().parents[2] / "conf" / "tiny.toml"
EPOCH = dt.date.fromisoformat(tomllib.loads(TINY_TOML.read_text())["world"]["epoch"])

# Format with root=<storage root>: conf/tiny.toml has no [storage] table of its own.
CONFIG = '[storage]\nroot = "{root}"\n\n' + TINY_TOML.read_text().replace("{", "{{").replace("}", "}}")
