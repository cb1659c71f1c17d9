"""pyproject.toml's import-linter contracts catch an import against the layers.

Each case runs `lint-imports` with the project's own [tool.importlinter] table on a temporary
tree of the same root packages, whose modules make every import the contracts allow, plus one
import they forbid; the contract named in the case must be reported broken, naming that import.
(Whether the real packages keep the contracts is `lint-imports` in .ci/run.)"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
CONTRACT_NAMES = {c["id"]: c["name"] for c in CONFIG["contracts"]}

# importer -> imported, as the layout allows them (a clean tree keeps every contract)
ALLOWED = [
    ("dags", "spark_jobs"), ("dags", "reports"), ("dags", "expectations"), ("dags", "core"),
    ("spark_jobs", "serving"), ("spark_jobs", "models"),
    ("spark_jobs", "features"), ("spark_jobs", "expectations"), ("spark_jobs", "simworld"),
    ("reports", "core"), ("serving", "models"), ("models", "features"), ("features", "core"),
    ("expectations", "features"), ("expectations", "core"), ("simworld", "core"),
]
# (importer, imported, the contract that forbids it)
FORBIDDEN = [
    ("core", "dags", "layers"), ("core", "features", "layers"), ("features", "models", "layers"),
    ("models", "serving", "layers"), ("serving", "spark_jobs", "layers"),
    ("spark_jobs", "dags", "layers"), ("models", "spark_jobs", "layers"),
    ("reports", "spark_jobs", "reports"), ("reports", "serving", "reports"), ("reports", "models", "reports"),
    ("reports", "features", "reports"), ("reports", "dags", "reports"), ("reports", "expectations", "reports"),
    ("spark_jobs", "reports", "report-callers"), ("serving", "reports", "report-callers"),
    ("core", "reports", "report-callers"),
    ("expectations", "models", "expectations"), ("expectations", "dags", "expectations"),
    ("simworld", "features", "simworld"), ("simworld", "spark_jobs", "simworld"),
    ("models", "expectations", "below-the-jobs"), ("core", "simworld", "below-the-jobs"),
]


def _tree(root: Path, imports: list[tuple[str, str]]) -> None:
    for package in CONFIG["root_packages"]:
        (root / package).mkdir()
        (root / package / "__init__.py").write_text("")
        lines = [f"import {imported}.mod\n" for importer, imported in imports if importer == package]
        (root / package / "mod.py").write_text("".join(lines))
    (root / "pyproject.toml").write_text((REPO_ROOT / "pyproject.toml").read_text())


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--config", "pyproject.toml",
                           "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_the_contracts_cover_every_root_package():
    assert set(CONFIG["root_packages"]) == {p for pair in ALLOWED for p in pair}
    assert set(CONTRACT_NAMES) == {contract for *_, contract in FORBIDDEN}


def test_the_allowed_imports_keep_every_contract(tmp_path):
    _tree(tmp_path, ALLOWED)
    proc = _lint(tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert f"Contracts: {len(CONTRACT_NAMES)} kept, 0 broken." in proc.stdout, proc.stdout[-4000:]


@pytest.mark.parametrize("importer,imported,contract", FORBIDDEN, ids=[f"{a}->{b}" for a, b, _ in FORBIDDEN])
def test_an_import_against_the_layers_breaks_its_contract(tmp_path, importer, imported, contract):
    _tree(tmp_path, [*ALLOWED, (importer, imported)])
    proc = _lint(tmp_path)
    assert proc.returncode != 0, proc.stdout[-4000:]
    assert f"{CONTRACT_NAMES[contract]} BROKEN" in proc.stdout, proc.stdout[-4000:]
    assert f"{importer}.mod -> {imported}.mod" in proc.stdout, proc.stdout[-4000:]
