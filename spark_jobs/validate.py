"""Gates of run date D: nothing is published unless every gate passes.

    python spark_jobs/validate.py --date 2026-02-02 [--config FILE | --config-json JSON] [--set k=v]

Gates (each a verdict: name, passed, value, threshold, note), all on the holdout day D:

  auc_floor       holdout AUC of the new model (full model, CNN on every image) >= gates.auc_floor
  auc_vs_live     new AUC >= live AUC - gates.live_tolerance; the live (published `current`) model
                  scores the same holdout rows re-encoded with its own encoder (encoder.npz of its
                  version) through its own CNN. Passes with a note when nothing is live yet.
  score_match     for holdout rows whose ad is in the table: |serving score - reference score| <=
                  gates.score_match_tol, where serving = the Predictor's path (lookup table rows
                  decoded from the serving files + model head) and reference = the full model's
                  DCN on x_v = reduction.roundtrip(CNN x_v now). For reduction "none" the
                  reference is exactly the full CNN model's score; for float16/pca it applies the
                  table's own quantisation to fresh CNN embeddings, so the gate checks the files,
                  index, decoding and head rather than the (intended) quantisation error, which
                  the note reports as max |serving - CNN model| and the table-path AUC.
  coverage        share of holdout impressions whose ad is in the table >= gates.coverage_min
  lookup_quality  the GX lookup suite (expectations/lookup.py) on the Delta table rows of D:
                  unique ad ids, no NaN/Inf, `dims` values each, L2 norms in
                  [gates.norm_min, gates.norm_max]

Not a gate, recorded beside them: ``precision_check``, per reduced serving precision (bf16) the max
|score - fp32 serving score| over the covered holdout rows against its tolerance, and
``serving_precisions``, fp32 plus those within tolerance; the predictor serves a published version
only in those (serving.predictor).

The record is written to <artifacts>/runs/D/validation.json before GateFailed is raised, and the
run report's calibration bins and attention panels (spark_jobs/report_inputs.py) under
<artifacts>/runs/D/report_data/ before any gate is evaluated.

torch (models.*, serving.predictor) is imported inside the functions that score, and Great
Expectations (expectations.*) inside the one that runs the lookup suite, so that a bad argument is
reported without loading them (tests/test_cli_errors.py).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from pyspark.sql import functions as F

from core import storage
from core.cli import run_cli, run_stage
from core.config import PipelineConfig
from core.paths import Paths
from core.spark import get_spark
from core.timing import phase
from features.encoder import ENCODER_FILE, load_encoder_file
from features.spec import MULTI_FIELDS, SINGLE_FIELDS
from features.tables import AD_COUNTS_TABLE, load_examples
from serving.lookup import MANIFEST_FILE, coverage_curve, sha256_file
from serving.registry import read_current, verify_version, version_dir
from serving.requests import EncodedRequests
from spark_jobs.build_lookup import candidates_uri, model_files, read_images, stack_images
from spark_jobs.feature_transforms import with_catalog
from spark_jobs.report_inputs import category_ids_of, write_report_data

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from pyspark.sql import SparkSession

log = logging.getLogger("validate")


class GateFailed(RuntimeError):
    """At least one gate failed; the message lists them and names the validation record."""


@dataclass(frozen=True)
class Verdict:
    name: str
    passed: bool
    value: float | None
    threshold: float | None
    note: str = ""


# --------------------------------------------------------------------------- pure gate logic


def gate_auc_floor(auc: float, floor: float) -> Verdict:
    ok = not math.isnan(auc) and auc >= floor
    return Verdict("auc_floor", ok, _num(auc), floor, "" if not math.isnan(auc) else "holdout has one class only")


def gate_auc_vs_live(auc: float, live_auc: float | None, tolerance: float, live_name: str | None) -> Verdict:
    if live_auc is None:
        return Verdict("auc_vs_live", True, _num(auc), None, "nothing is live yet: gate skipped")
    threshold = live_auc - tolerance
    ok = not math.isnan(auc) and auc >= threshold
    return Verdict("auc_vs_live", ok, _num(auc), threshold,
                   f"live {live_name} has holdout AUC {live_auc:.5f}; tolerance {tolerance}")


def gate_coverage(in_table: np.ndarray, minimum: float) -> Verdict:
    cov = float(np.mean(in_table)) if len(in_table) else float("nan")
    ok = not math.isnan(cov) and cov >= minimum
    return Verdict("coverage", ok, _num(cov), minimum,
                   f"{int(np.sum(in_table))} of {len(in_table)} holdout impressions")


def gate_score_match(serving: np.ndarray, reference: np.ndarray, in_table: np.ndarray, tol: float,
                     note: str = "") -> Verdict:
    if not np.any(in_table):
        return Verdict("score_match", False, None, tol, "no holdout impression has its ad in the table")
    diff = float(np.max(np.abs(serving[in_table].astype(np.float64) - reference[in_table].astype(np.float64))))
    return Verdict("score_match", diff <= tol, diff, tol, note)


def holdout_coverage_curve(table_ads: np.ndarray, window_impressions: np.ndarray, holdout_ads: np.ndarray,
                           points: int = 6) -> list[dict[str, float]]:
    """Coverage of the holdout impressions by the table's top-b ads (frequency control order) for
    budgets b = n / 2^k, k = points-1 .. 0 (n = table rows)."""
    n = len(table_ads)
    budgets = sorted({max(1, n >> k) for k in range(points)}) if n else []
    return coverage_curve(window_impressions, table_ads, holdout_ads, budgets)


def _num(x: float) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


# --------------------------------------------------------------------------- scoring helpers


def reference_scores(model: Any, holdout: "pd.DataFrame", images: dict[int, np.ndarray], reduction: Any,
                     batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(full model pCTR, pCTR with x_v = reduction.roundtrip(CNN x_v)) per holdout row, both (n,)."""
    import torch

    from models.batching import encode_examples
    from models.train import embed_images, predict

    full = predict(model, holdout, images, batch_size=batch_size)
    data = encode_examples(holdout, model.spec, require_label=False)
    ads, first = np.unique(data.ad_id, return_index=True)  # (A,), (A,)
    pixels = stack_images(images, ads, blank_missing=True)  # (A, H, W, 3), grey for ads without an image
    x_v = embed_images(model, pixels, data.category[first], batch_size,
                       keys={f: v[first] for f, v in data.keys.items()})  # (A, visual_dim)
    x_q = reduction.roundtrip(x_v)[np.searchsorted(ads, data.ad_id)]  # (n, visual_dim)
    out = np.empty(len(data), np.float64)
    with torch.inference_mode():
        for s in range(0, len(data), batch_size):
            e = min(s + batch_size, len(data))
            single = torch.from_numpy(data.single[s:e])
            values = {k: torch.from_numpy(v[o[s]:o[e]]) for k, (v, o) in data.multi.items()}
            offsets = {k: torch.from_numpy(o[s:e] - o[s]) for k, (v, o) in data.multi.items()}
            x_nv = model.embedding(single, values, offsets)  # (b, D_nv)
            out[s:e] = torch.sigmoid(model.dcn(x_nv, torch.from_numpy(x_q[s:e]))).numpy()
    return full, out


def holdout_requests(model_spec: Any, holdout: "pd.DataFrame") -> Any:
    """The holdout rows as the predictor's encoded requests (serving.requests.EncodedRequests)."""
    from models.batching import encode_examples

    data = encode_examples(holdout, model_spec, require_label=False)
    multi_values = {k: v for k, (v, _) in data.multi.items()}
    multi_offsets = {k: o[:-1] for k, (_, o) in data.multi.items()}
    return EncodedRequests(data.single, multi_values, multi_offsets, data.ad_id, data.category)


def serving_scores(predictor: Any, requests: Any) -> tuple[np.ndarray, np.ndarray]:
    """(pCTR, in-table mask) of encoded holdout requests through the predictor's table + head."""
    res = predictor.score_encoded(requests)
    return res.scores.astype(np.float64), res.in_table


def check_precisions(predictor: Any, requests: Any, fp32_scores: np.ndarray, in_table: np.ndarray
                     ) -> dict[str, dict[str, Any]]:
    """Per reduced serving precision: max |score - fp32 serving score| over the covered holdout rows
    against its tolerance (serving.predictor.PRECISION_TOLERANCE). Not a gate: a version whose bf16
    scores drift further is still served, in fp32."""
    from serving.predictor import PRECISION_TOLERANCE, PRECISIONS, Predictor

    out = {}
    for precision in PRECISIONS:
        if precision == "fp32":
            continue
        reduced = Predictor(predictor.head, predictor.table, None, precision=precision)
        scores, _ = serving_scores(reduced, requests)
        diff = float(np.max(np.abs(scores[in_table] - fp32_scores[in_table]))) if in_table.any() else float("nan")
        tol = PRECISION_TOLERANCE[precision]
        out[precision] = {"max_abs_score_diff": _num(diff), "tolerance": tol, "passed": bool(diff <= tol)}
    return out


def raw_holdout(cfg: PipelineConfig, spark: "SparkSession", run_date: dt.date) -> Any:
    """The holdout day's raw joined rows (bronze impressions of D + their catalog rows) as Arrow."""
    paths = Paths.of(cfg)
    imp_df = spark.read.format("delta").load(paths.bronze_impressions).where(F.col("dt") == F.lit(run_date))
    ads_df = spark.read.format("delta").load(paths.bronze_ads)
    return (imp_df.transform(with_catalog(ads_df))
            .select(F.lit("holdout").alias("split"), "impression_id", "event_ts", "click",
                    *SINGLE_FIELDS, *MULTI_FIELDS).toArrow())


def live_model_auc(cfg: PipelineConfig, spark: "SparkSession", run_date: dt.date, live: dict[str, Any],
                   batch_size: int) -> float:
    """Holdout AUC of the live version: its encoder on the raw holdout rows, its full model (with CNN)."""
    from models.train import auc_score, load_model, predict

    folder = version_dir(cfg, live)
    verify_version(folder, live.get("version_sha256"))  # the live files, checked from the pointer down
    model = load_model(folder / "model" / "model.pt")
    encoder = load_encoder_file(folder / "lookup" / "encoder.npz")
    raw = raw_holdout(cfg, spark, run_date)
    encoded = pa.Table.from_batches([encoder.encode_batch(b) for b in raw.to_batches()]) if raw.num_rows else None
    if encoded is None:
        return float("nan")
    ad_ids = np.asarray(encoded.column("ad_id").to_numpy(), dtype=np.int64)
    images = read_images(spark, Paths.of(cfg), ad_ids) if model.uses_images else None
    preds = predict(model, encoded, images, batch_size=batch_size)
    return auc_score(np.asarray(encoded.column("label").to_numpy()), preds)


# --------------------------------------------------------------------------- the job


def run(cfg: PipelineConfig, spark: "SparkSession", run_date: dt.date) -> dict[str, Any]:
    """Evaluate every gate of run date D, write validation.json, raise GateFailed if any failed."""
    from models.train import compute_metrics, load_model
    from serving.predictor import Predictor

    started = time.monotonic()
    gc, bs = cfg.gates, cfg.inference.batch_size
    paths = Paths.of(cfg)
    with model_files(cfg, run_date) as (model_path, _), \
            storage.reading_folder(paths.run_lookup_dir(run_date)) as lookup_dir:
        model = load_model(model_path)
        # Verifies the files as serving will. The score-match gate compares the table path with the CNN
        # in the model's own arithmetic (fp32); reduced serving precisions are checked against fp32 below.
        predictor = Predictor.load(model_path, lookup_dir, precision="fp32")
        holdout = load_examples(cfg, spark, run_date, "holdout")
        if holdout.empty:
            raise RuntimeError(f"the holdout of {run_date} has no rows; nothing to validate against (no record written)")
        images = read_images(spark, paths, holdout["ad_id"].to_numpy())

        full, reference = reference_scores(model, holdout, images, predictor.table.reduction, bs)
        metrics = compute_metrics(holdout["label"].to_numpy(), full, holdout["is_cold"].to_numpy())
        # The report's calibration and attention panels, from this model on this holdout (report only renders).
        write_report_data(cfg, run_date, model, holdout, images, full, category_ids_of(str(lookup_dir / ENCODER_FILE)))
        requests = holdout_requests(model.spec, holdout)
        serving, in_table = serving_scores(predictor, requests)
        table_metrics = compute_metrics(holdout["label"].to_numpy(), serving)
        precision_check = check_precisions(predictor, requests, serving, in_table)

        live = read_current(cfg)
        live_auc = live_model_auc(cfg, spark, run_date, live, bs) if live is not None else None
        live_name = f"v{live['version']} ({live['run_date']})" if live else None

        reduction = predictor.table.reduction.method
        if reduction == "none":  # float32 rows: compare with the full CNN model itself
            reference = full
        drift = float(np.max(np.abs(serving[in_table] - full[in_table]))) if in_table.any() else float("nan")
        match_note = (f"reduction {reduction}: serving vs full-model scores on covered ads; "
                      if reduction == "none" else
                      f"reduction {reduction}: serving vs model on the table's dequantised x_v; quantisation moves "
                      f"scores by up to {drift:.2e} vs the CNN; ") + f"table-path AUC {table_metrics['auc']:.5f}"
        table_df = (spark.read.format("delta").load(candidates_uri(cfg))
                    .where(f"run_date = DATE'{run_date.isoformat()}'"))
        with phase("imports"):
            from expectations.lookup import build_lookup_suite, project_lookup
            from expectations.runner import validate
        gx = validate(cfg, project_lookup(table_df), build_lookup_suite(predictor.table.manifest["dims"], gc.norm_min,
                                                                         gc.norm_max), "lookup_table", run_date.isoformat())
        verdicts = [
            gate_auc_floor(metrics["auc"], gc.auc_floor),
            gate_auc_vs_live(metrics["auc"], live_auc, gc.live_tolerance, live_name),
            gate_score_match(serving, reference, in_table, gc.score_match_tol, match_note),
            gate_coverage(in_table, gc.coverage_min),
            Verdict("lookup_quality", not gx.failed_critical, float(len(gx.failed_critical)), 0.0,
                    ("; ".join(gx.failed_critical) + "; " if gx.failed_critical else "") + f"report {gx.report_path}"),
        ]
        counts = (spark.read.format("delta").load(paths.table(AD_COUNTS_TABLE))
                  .where(f"run_date = DATE'{run_date.isoformat()}'").select("ad_id", "impressions").toArrow())
        impressions_of = dict(zip(counts.column("ad_id").to_pylist(), counts.column("impressions").to_pylist()))
        table_ads = np.asarray(predictor.table.ad_ids)
        window_imps = np.array([impressions_of.get(a, 0) for a in table_ads.tolist()], dtype=np.int64)
        record = {
            "run_date": run_date.isoformat(), "passed": all(v.passed for v in verdicts),
            "coverage_curve": holdout_coverage_curve(table_ads, window_imps, holdout["ad_id"].to_numpy()),
            "gates": [asdict(v) for v in verdicts],
            "metrics": {**{k: _num(v) if isinstance(v, float) else v for k, v in metrics.items()},
                        "table_auc": _num(table_metrics["auc"]), "coverage": verdicts[3].value,
                        "live_auc": _num(live_auc) if live_auc is not None else None},
            "precision_check": precision_check,
            "serving_precisions": ["fp32", *(p for p, c in precision_check.items() if c["passed"])],
            "live_version": live, "model_sha256": sha256_file(model_path),
            "lookup_manifest_sha256": sha256_file(lookup_dir / MANIFEST_FILE),
            "model_version": predictor.table.manifest.get("model_version"), "config_hash": cfg.config_hash(),
            "data_docs": gx.report_path, "validated_at": dt.datetime.now(dt.timezone.utc).isoformat(),
            "seconds": time.monotonic() - started,
        }
    storage.write_json(paths.validation_record(run_date), record)
    for v in verdicts:
        log.info("gate %-15s %s value=%s threshold=%s %s", v.name, "PASS" if v.passed else "FAIL", v.value,
                 v.threshold, v.note)
    for p, c in precision_check.items():
        log.info("serving precision %s: max score difference %s vs fp32 (tolerance %g): %s", p,
                 c["max_abs_score_diff"], c["tolerance"], "allowed" if c["passed"] else "not allowed, fp32 only")
    failed = [v for v in verdicts if not v.passed]
    if failed:
        lines = "\n".join(f"  {v.name}: value {v.value} vs threshold {v.threshold} {v.note}" for v in failed)
        raise GateFailed(f"{len(failed)} gate(s) failed for {run_date} (record {paths.validation_record(run_date)}):\n{lines}")
    return record


def main(argv: list[str] | None = None) -> int:
    def job(cfg: PipelineConfig, run_date: dt.date, args) -> dict[str, Any]:
        record = run(cfg, get_spark(cfg.spark), run_date)
        return {"run_date": record["run_date"], "passed": record["passed"]}

    return run_stage("Evaluate the publication gates of a run date.", job, argv, log_name="validate",
                     task="validate_gates")


if __name__ == "__main__":
    sys.exit(run_cli(main))
