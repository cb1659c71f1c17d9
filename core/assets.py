"""The pipeline's published outputs as Airflow Assets, declared once.

The DAG's `publish` task lists them as `outlets`; downstream DAGs (online predictor refresh,
monitoring) schedule on them. This module imports only `airflow.sdk` and the standard library
so that DAG files can import it without loading Spark, torch or Great Expectations.

What a consumer reads:

    cscnn_model         <artifacts>/published/: current.json names the live version folder
                        v<N>-<D>/ and the sha256 of its version.json, which lists the sha256 of
                        every file (serving.registry.verify_version checks the chain)
    cscnn_lookup_table  the Delta table <warehouse>/lookup_table, written by publish only after
                        every gate passed: one partition per published version (columns version,
                        run_date, ad_id, category_id, category_idx, embedding); the live version is
                        current.json's `version`. The ungated rows build_lookup writes go to
                        <warehouse>/lookup_candidates, which consumers do not read.

URIs come from the environment so that a cluster can point them at its real stores:

    CSCNN_MODEL_ASSET_URI         default file://<repo>/var/artifacts/published/model
    CSCNN_LOOKUP_TABLE_ASSET_URI  default file://<repo>/var/warehouse/lookup_table
"""

from __future__ import annotations

import os
from pathlib import Path

from airflow.sdk import Asset

_REPO_ROOT = Path(__file__).resolve().parents[1]

MODEL_ASSET_URI_ENV = "CSCNN_MODEL_ASSET_URI"
LOOKUP_TABLE_ASSET_URI_ENV = "CSCNN_LOOKUP_TABLE_ASSET_URI"


def _asset_uri(env_name: str, default_path: Path) -> str:
    """The URI from `env_name`, or a `file://` URI of `default_path`; rejects an empty scheme."""
    uri = os.environ.get(env_name, "").strip()
    if not uri:
        return default_path.as_uri()
    if "://" not in uri:
        raise ValueError(f"bad value for environment variable {env_name}: {uri!r}; "
                         "allowed: a URI with a scheme, e.g. file:///data/model or s3://bucket/model")
    return uri


MODEL_ASSET = Asset(
    name="cscnn_model",
    uri=_asset_uri(MODEL_ASSET_URI_ENV, _REPO_ROOT / "var" / "artifacts" / "published" / "model"),
    group="model",
    extra={"description": "the published CTR model (DCN + CSCNN) of the latest promoted run date"},
)

LOOKUP_TABLE_ASSET = Asset(
    name="cscnn_lookup_table",
    uri=_asset_uri(LOOKUP_TABLE_ASSET_URI_ENV, _REPO_ROOT / "var" / "warehouse" / "lookup_table"),
    group="model",
    extra={"description": "the published ad_id -> visual embedding lookup table: gated versions only, one "
                          "partition per version; the live one is current.json's version"},
)
