"""Delta Lake's jars: resolved from Maven Central once per machine, then named by local path.

`spark.jars.packages` makes every JVM start resolve the Maven coordinates again through ivy
(seconds even with a warm cache, and a screen of resolution lines in every task log), and two
first starts on a fresh machine race on the ivy cache (one reads a half-written descriptor and
fails). Here the first caller resolves, under an exclusive file lock, with Spark's own resolver
(a spark-submit whose driver reports the `spark.jars` it was given), and writes the list to a
manifest; every later session or spark-submit gets `spark.jars` = those files.

    jars = delta_jars("io.delta:delta-spark_4.2_2.13:4.4.0", "~/.cache/cscnn-pipeline/ivy")

Standard library and core.files only at import time (the DAG file imports it); pyspark is located
only to resolve.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import urllib.parse
from pathlib import Path

from core.files import locked

SETTINGS = str(Path(__file__).resolve().parents[1] / "conf" / "spark" / "ivysettings.xml")  # Maven Central only
SPARK_CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf" / "spark")
DEFAULT_JARS_CACHE = "~/.cache/cscnn-pipeline/ivy"  # per machine; SparkConfig.ivy_dir / CSCNN_SPARK_IVY_DIR
RESOLVE_TIMEOUT_S = 900  # a fresh machine downloads ~60 MB from Maven Central

# The driver of the resolving spark-submit: connects to the gateway, prints what it was given.
_REPORTER = """
from pyspark import SparkContext
SparkContext._ensure_initialized()
print("CSCNN_JARS=" + (SparkContext._jvm.java.lang.System.getProperty("spark.jars") or ""))
"""


class JarsError(RuntimeError):
    """The Delta jars could not be resolved (the message names the package and the cause)."""


def manifest_path(package: str, ivy_dir: str) -> str:
    """Where the resolved file list of `package` is kept: <ivy_dir>/resolved/<group>_<artifact>-<version>.txt."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", package.replace(":", "_"))
    return os.path.join(os.path.expanduser(ivy_dir), "resolved", f"{name}.txt")


def _read_manifest(path: str) -> list[str] | None:
    """The manifest's jar paths when it exists and every file it names is there, else None."""
    try:
        with open(path, encoding="utf-8") as f:
            jars = [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        return None
    return jars if jars and all(os.path.isfile(j) for j in jars) else None


def delta_jars(package: str, ivy_dir: str) -> list[str]:
    """Local paths of `package` and its runtime dependencies, resolving them first if needed.

    A manifest whose files all exist is used as is (a file read); otherwise one process at a
    time resolves into `ivy_dir` and writes the manifest. JarsError when resolution fails.
    """
    ivy_dir = os.path.expanduser(ivy_dir)
    path = manifest_path(package, ivy_dir)
    jars = _read_manifest(path)
    if jars is not None:
        return jars
    with locked(os.path.join(ivy_dir, ".resolve.lock")):
        jars = _read_manifest(path)  # another process may have resolved while this one waited
        if jars is None:
            jars = _resolve(package, ivy_dir)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.tmp-{os.getpid()}"
            with open(tmp, "w", encoding="utf-8") as f:
                f.write("\n".join(jars) + "\n")
            os.replace(tmp, path)
    return jars


def _spark_submit() -> str:
    import pyspark  # only here: resolving is the one step that needs the Spark distribution

    return os.path.join(os.path.dirname(pyspark.__file__), "bin", "spark-submit")


def _resolve(package: str, ivy_dir: str) -> list[str]:
    print(f"core.jars: resolving {package} from Maven Central into {ivy_dir} (once per machine)",
          file=sys.stderr, flush=True)
    env = dict(os.environ, SPARK_LOCAL_IP=os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
               PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable,
               SPARK_CONF_DIR=os.environ.get("SPARK_CONF_DIR") or SPARK_CONF_DIR)
    with tempfile.TemporaryDirectory(prefix="cscnn-jars-") as tmp:
        script = os.path.join(tmp, "report_jars.py")
        with open(script, "w", encoding="utf-8") as f:
            f.write(_REPORTER)
        cmd = [_spark_submit(), "--master", "local[1]", "--conf", f"spark.jars.packages={package}",
               "--conf", f"spark.jars.ivy={ivy_dir}", "--conf", f"spark.jars.ivySettings={SETTINGS}", script]
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=RESOLVE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise JarsError(f"resolving {package} took over {RESOLVE_TIMEOUT_S} s; is Maven Central "
                            "(https://repo1.maven.org) reachable?") from None
    line = next((x for x in proc.stdout.splitlines() if x.startswith("CSCNN_JARS=")), None)
    if proc.returncode != 0 or not line:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise JarsError(f"could not resolve {package} into {ivy_dir} (spark-submit exit {proc.returncode}): {tail}")
    jars = [urllib.parse.unquote(urllib.parse.urlparse(u).path) if u.startswith("file:") else u
            for u in line[len("CSCNN_JARS="):].split(",") if u]
    missing = [j for j in jars if not os.path.isfile(j)]
    if not jars or missing:
        raise JarsError(f"resolving {package} named no jars or missing files: {missing or jars}")
    return jars
