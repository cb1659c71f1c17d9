"""core.jars: Delta's jars resolved once per machine under a lock, then named by path."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from core.config import SparkConfig
from core.jars import JarsError, delta_jars, manifest_path
from core.spark import DEFAULT_IVY_DIR


def test_a_complete_manifest_is_used_without_resolving(tmp_path):
    jar = tmp_path / "a.jar"
    jar.write_bytes(b"PK")
    manifest = manifest_path("g:a:1", str(tmp_path))
    os.makedirs(os.path.dirname(manifest))
    with open(manifest, "w") as f:
        f.write(f"{jar}\n")
    assert delta_jars("g:a:1", str(tmp_path)) == [str(jar)]


def test_two_first_starts_at_once_resolve_once_and_agree(tmp_path, spark):
    """A copy of this machine's ivy cache (the session fixture filled it) without the manifest:
    two processes ask at the same moment; one resolves with Spark's resolver, the other waits."""
    ivy = tmp_path / "ivy"
    shutil.copytree(os.path.join(DEFAULT_IVY_DIR, "cache"), ivy / "cache", copy_function=os.link)
    package = SparkConfig().delta_package
    code = textwrap.dedent(f"""
        from core.jars import delta_jars
        print("\\n".join(delta_jars({package!r}, {str(ivy)!r})))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    assert outs[0][0] == outs[1][0]
    jars = outs[0][0].split()
    assert any(os.path.basename(j).startswith("io.delta_delta-spark_") for j in jars), jars
    assert all(j.startswith(str(ivy)) and os.path.isfile(j) for j in jars), jars
    assert sum(o[1].count("core.jars: resolving") for o in outs) == 1, [o[1] for o in outs]
    assert open(manifest_path(package, str(ivy))).read().split() == jars


@pytest.mark.slow  # a spark-submit (JVM) asks Maven Central
def test_an_unknown_package_is_named(tmp_path):
    with pytest.raises(JarsError, match="could not resolve io.delta:no-such-artifact_2.13:0.0.1"):
        delta_jars("io.delta:no-such-artifact_2.13:0.0.1", str(tmp_path / "ivy"))
