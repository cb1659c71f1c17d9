"""The project as an installed package: stages import it without PYTHONPATH or sys.path edits,
and the --py-files zip for a cluster holds every import package and nothing else."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest

from core import exit_codes

REPO_ROOT = Path(__file__).resolve().parents[1]
STAGES = sorted(p.name for p in (REPO_ROOT / "spark_jobs").glob("*.py")
                if 'if __name__ == "__main__":' in p.read_text())


def _project_packages() -> set[str]:
    """Top-level import packages that pyproject.toml installs and that exist in the checkout."""
    include = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    return {name for name in include if "." not in name and (REPO_ROOT / name / "__init__.py").exists()}


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}


# Top-level folders with Python files that are not import packages: run as scripts or loaded by path.
NOT_PACKAGES = {"tests", "scripts", "plugins"}


def test_every_package_folder_is_installed():
    """A folder of modules without __init__.py is a namespace package: it imports from a checkout
    (the repo root is on sys.path there) but setuptools leaves it out of the install and the zip."""
    folders = {p.parent.name for p in REPO_ROOT.glob("*/*.py")} - NOT_PACKAGES
    missing_init = sorted(f for f in folders if not (REPO_ROOT / f / "__init__.py").exists())
    assert not missing_init, f"add __init__.py to {missing_init} (or list them in NOT_PACKAGES)"
    assert folders <= _project_packages(), sorted(folders - _project_packages())


@pytest.mark.parametrize("stage", STAGES)
def test_no_stage_script_shadows_a_package(stage):
    """spark-submit runs spark_jobs/<stage> as a script, so spark_jobs/ comes first on sys.path:
    a stage named like a top-level package would be imported in its place."""
    assert Path(stage).stem not in _project_packages(), (
        f"spark_jobs/{stage} shadows the package {Path(stage).stem}/ when spark-submit runs it; rename the stage")


@pytest.mark.slow  # a spark-submit (JVM) per stage
@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_imports_the_installed_project_under_spark_submit(stage, tmp_path):
    """No PYTHONPATH, run from another folder: the stage's imports come from the venv's install
    (they run before argument parsing, so a bad date exits 2 only once they all worked)."""
    spark_submit = Path(sys.executable).parent / "spark-submit"
    proc = subprocess.run([str(spark_submit), str(REPO_ROOT / "spark_jobs" / stage), "--date", "2026-13-01",
                           "--config", str(REPO_ROOT / "conf" / "demo.toml")],
                          cwd=tmp_path, env=_clean_env(), capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr  # spark-submit passes the Python process's stderr on as stdout
    assert proc.returncode == exit_codes.USAGE, output[-4000:]
    assert "error: argument --date: bad date '2026-13-01'" in output, output[-4000:]


@pytest.mark.slow  # builds the zip, imports every job
def test_the_py_files_zip_alone_provides_the_project(tmp_path):
    """scripts/build_pyfiles.sh's zip, on sys.path of an interpreter without the editable install
    (python -S: no .pth files) and with only the venv's third-party packages, imports every job."""
    zip_path = tmp_path / "out" / "cscnn_pipeline.zip"
    proc = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "build_pyfiles.sh"), str(zip_path)],
                          cwd=tmp_path, env=_clean_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with zipfile.ZipFile(zip_path) as zf:
        names = zf.namelist()
    top = {n.split("/", 1)[0] for n in names if "/" in n and not n.split("/", 1)[0].endswith(".dist-info")}
    assert top == _project_packages(), sorted(top ^ _project_packages())
    assert all(n.endswith(".py") or ".dist-info/" in n for n in names), [n for n in names if not n.endswith(".py")]

    jobs = sorted(Path(n).with_suffix("").as_posix().replace("/", ".") for n in names
                  if n.startswith(("spark_jobs/", "features/")) and not n.endswith("__init__.py"))
    assert "spark_jobs.ingest" in jobs, jobs
    code = textwrap.dedent("""
        import importlib, json, sys
        zip_path, site_packages, modules = sys.argv[1], sys.argv[2], sys.argv[3:]
        sys.path[:] = [zip_path] + [p for p in sys.path if p] + [site_packages]
        files = {m: importlib.import_module(m).__file__ for m in modules}
        finders = [type(f).__name__ if not isinstance(f, type) else f.__name__ for f in sys.meta_path]
        print(json.dumps({"files": files, "finders": finders, "path": sys.path}))
    """)
    proc = subprocess.run([sys.executable, "-S", "-c", code, str(zip_path), sysconfig.get_paths()["purelib"], *jobs],
                          cwd=tmp_path, env=_clean_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not any("editable" in f.lower() for f in out["finders"]), out["finders"]
    assert str(REPO_ROOT) not in out["path"], out["path"]
    outside = {m: f for m, f in out["files"].items() if not f.startswith(str(zip_path) + os.sep)}
    assert not outside, outside
