"""A real S3-compatible server for the tests: moto's server mode (`moto_server`, from PyPI), in a
process of its own on 127.0.0.1, with one empty bucket; stopped when the module's tests end.

Spark reaches it through hadoop-aws (`spark.packages`, resolved from Maven Central once per
machine like Delta's jars) with the endpoint and path-style access as `spark.extra_conf`
settings (`s3a_conf`); pyarrow (the trainer's reads) through its S3 filesystem with
AWS_ENDPOINT_URL. The credentials are only ever in the environment (`env`).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from core.spark_server import _answers, _free_port

BUCKET = "cscnn-test"
HADOOP_AWS = "org.apache.hadoop:hadoop-aws:3.5.0"  # the Hadoop of pyspark 4.2's jars (hadoop-client-api 3.5.0)
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test-key", "AWS_SECRET_ACCESS_KEY": "test-secret", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 with an empty bucket; its endpoint URL."""
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "moto_server"), "-H", "127.0.0.1",
                                 "-p", str(port)], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not _answers(port):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        client(url).create_bucket(Bucket=BUCKET)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def client(url: str):
    import boto3

    return boto3.client("s3", endpoint_url=url, aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")


def env(url: str) -> dict[str, str]:
    """The stages' environment for the server: credentials, and the endpoint for pyarrow."""
    return {**CREDENTIALS, "AWS_ENDPOINT_URL": url}


def s3a_conf(url: str) -> dict[str, str]:
    """spark.extra_conf for the server (no credentials: those come from the environment)."""
    return {"spark.hadoop.fs.s3a.endpoint": url, "spark.hadoop.fs.s3a.endpoint.region": "us-east-1",
            "spark.hadoop.fs.s3a.path.style.access": "true", "spark.hadoop.fs.s3a.connection.ssl.enabled": "false"}


def with_s3_warehouse(config_text: str, url: str, prefix: str) -> str:
    """A config's text with its warehouse at s3a://BUCKET/<prefix> and the s3a settings added."""
    text = config_text.replace("[storage]\n", f'[storage]\nwarehouse_uri = "s3a://{BUCKET}/{prefix}"\n', 1)
    text = text.replace("[spark]\n", f'[spark]\npackages = ["{HADOOP_AWS}"]\n', 1)
    return text + "\n[spark.extra_conf]\n" + "".join(f'"{k}" = "{v}"\n' for k, v in s3a_conf(url).items())


def with_s3_root(config_text: str, url: str, prefix: str) -> str:
    """A config's text with storage.root at s3a://BUCKET/<prefix> (every area on the bucket, the
    published versions included) and the s3a settings added."""
    text = with_s3_warehouse(config_text, url, f"{prefix}/warehouse")
    text, n = re.subn(r'(?m)^root = ".*"$', f'root = "s3a://{BUCKET}/{prefix}"', text, count=1)
    assert n == 1, "the config has no storage.root line"
    return text


def keys(url: str, prefix: str = "") -> list[str]:
    """Every object key in the bucket under `prefix`."""
    return [o["Key"] for page in client(url).get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
            for o in page.get("Contents", [])]


def upload_folder(url: str, folder: str, prefix: str) -> int:
    """Copy a local folder's files to s3://BUCKET/<prefix>/... (Delta tables name their files by
    relative path, so a copied table is the same table); the number of files copied."""
    s3, n = client(url), 0
    for dirpath, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(dirpath, name)
            s3.upload_file(path, BUCKET, f"{prefix}/{os.path.relpath(path, folder)}")
            n += 1
    return n
