"""Lookup-table serving benchmark: build speed, bytes per ad, AUC cost of the reductions, coverage by
budget, predictor latency against the compute floor, and the CNN-online alternative.

    python -m bench.lookup_serving [--quick] [--rounds N]
    python -m bench.lookup_serving --predictor-only      # predictor latency only (~1 min), printed

Writes bench/results/lookup_serving.json (not with --predictor-only). Everything runs on one core
(torch.set_num_threads(1)).

* coverage_curve: the simulated world itself (simworld, default WorldConfig): 32 window days of
  traffic rank the ads alive on day D (frequency control), coverage = share of day D's
  impressions whose ad is kept. Budget 0 (the default) keeps every ad with an image.
* auc_cost: a small CSCNN model trained on synthetic examples (models.synthetic shapes) whose
  click rate depends on each ad's image brightness, scored through the predictor with each
  reduction; cost = AUC(float32 table) - AUC(reduced table) on held-out impressions.
* predictor / cnn_online: the paper's DCN dimensions (deep 1024-512-256, d_e 4, x_v 150, 18
  fields) with random weights (latency does not depend on the weights); the table holds 100k ads
  (float16). batch100_floor_ms = FLOPs of the head for 100 requests / this core's fp32 rate on a
  2048x2048 matmul, measured in the same run. The top-level batch*_ms figures are the predictor's
  precision a version validated in every precision gets on this machine ("auto": bf16 where the CPU
  has native bf16, else fp32); precisions.<fp32|bf16> time each precision at batch 100 and record
  its max score difference to the fp32 model (on a
  variance-preserving head, and in auc_precision_max_score_diff on the trained auc_cost model).
  cnn_online runs the default visual tower (cscnn, light backbone, 64x64 images) plus the head on
  the same batch.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import tempfile
import time
from typing import Any

import numpy as np
import torch

from bench.common import machine, write_result
from core.config import load_config
from features.encoder import VOCAB_FIELDS, FeatureEncoder
from features.spec import MULTI_FIELDS, NUMERIC_FIELDS, SINGLE_FIELDS, FeatureSpec
from models.batching import Batch, encode_examples
from models.ctr import CTRModel
from models.synthetic import make_examples, make_spec
from models.train import auc_score, embed_images, load_model, train
from serving.lookup import LookupTable, Reduction, bytes_per_ad, coverage_curve, fallback_rows, make_reduction
from serving.predictor import (AUTO, PRECISION_TOLERANCE, PRECISIONS, ModelHead, Predictor, native_bf16,
                               resolve_precision)
from serving.requests import EncodedRequests, columns_from_records
from simworld.traffic import simulate_day
from simworld.world import active_ads
from spark_jobs.build_lookup import stack_images

PAPER_DIMS = {"model.deep_dims": [1024, 512, 256], "model.embedding_dim": 4, "model.visual_dim": 150,
              "model.head_dims": [256], "model.cross_layers": 3}


def percentiles(samples_s: list[float]) -> tuple[float, float]:
    ms = np.array(samples_s) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """This core's fp32 rate on an n x n matmul (best of ``repeats``), in GFLOP/s."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def head_flops(head: ModelHead, batch: int) -> int:
    """Multiply-adds x 2 of every Linear and the cross net for ``batch`` requests."""
    linear = sum(2 * m.in_features * m.out_features for m in head.modules() if isinstance(m, torch.nn.Linear))
    d_nv = head.embedding.out_dim
    cross = len(head.dcn.cross.weights) * 5 * d_nv  # dot product (2D) + scale, bias, residual (3D)
    return batch * (linear + cross)


# --------------------------------------------------------------------------- coverage (simulated world)


def simulated_coverage(budgets: list[int], window_days: int) -> dict[str, Any]:
    world = load_config().world
    epoch = dt.date.fromisoformat(world.epoch)
    counts: dict[int, int] = {}
    for i in range(window_days):
        ads = active_ads(world, i)
        traffic = simulate_day(world, epoch + dt.timedelta(days=i), i, ads)
        ids, n = np.unique(traffic.ad_id, return_counts=True)
        for a, c in zip(ids.tolist(), n.tolist()):
            counts[a] = counts.get(a, 0) + c
    d = window_days
    alive = active_ads(world, d)
    holdout = simulate_day(world, epoch + dt.timedelta(days=d), d, alive).ad_id
    cand = np.asarray(alive.ad_id, dtype=np.int64)  # ads with an image on D
    imps = np.array([counts.get(int(a), 0) for a in cand], dtype=np.int64)
    curve = coverage_curve(imps, cand, holdout, [*budgets, 0])
    curve[-1]["budget_ads"] = int(len(cand))  # budget 0 = every candidate
    return {"curve": curve, "candidates": int(len(cand)), "holdout_impressions": int(len(holdout))}


# --------------------------------------------------------------------------- AUC cost


def auc_cost(quick: bool) -> dict[str, Any]:
    spec = make_spec(n_categories=8, vocab=40)
    n_ads = 120 if quick else 300
    df, images = make_examples(spec, n_ads=n_ads, impressions_per_ad=(20, 40), image_size=32, seed=5)
    rng = np.random.default_rng(5)
    ads = np.unique(df["ad_id"].to_numpy())
    level = dict(zip(ads.tolist(), rng.random(len(ads))))
    images = {a: np.clip(rng.normal(40 + 180 * level[a], 25, size=(32, 32, 3)), 0, 255).astype(np.uint8)
              for a in ads.tolist()}
    df["label"] = (rng.random(len(df)) < 0.03 + 0.3 * df["ad_id"].map(level).to_numpy()).astype(np.int32)
    df["f_ad_id"] = 0  # the image, not an id embedding, must carry the ad's effect
    hold = df.groupby("ad_id").cumcount().to_numpy() % 3 == 0
    train_df, hold_df = df[~hold].reset_index(drop=True), df[hold].reset_index(drop=True)
    cfg = load_config(overrides={**PAPER_DIMS, "model.backbone": "light", "train.batch_size": 256,
                                 "train.lr": 3e-3, "train.epochs": 1 if quick else 3, "train.device": "cpu",
                                 "train.checkpoint_every": 0})
    with tempfile.TemporaryDirectory() as tmp:
        train(cfg, spec, train_df, None, images, tmp)
        model = load_model(f"{tmp}/model.pt")
    cats = df.groupby("ad_id")["category_idx"].first().loc[ads].to_numpy()
    x_v = embed_images(model, stack_images(images, ads), cats)  # (A, 150)
    head = ModelHead(model.spec, model.cfg)
    head.load_state_dict({k: v for k, v in model.state_dict().items() if k.startswith(("embedding.", "dcn."))})
    data = encode_examples(hold_df, spec)
    enc = EncodedRequests(data.single, {k: v for k, (v, _) in data.multi.items()},
                          {k: o[:-1] for k, (_, o) in data.multi.items()}, data.ad_id, data.category)
    out: dict[str, Any] = {}
    diffs: dict[str, float] = {}  # max |score - fp32 score| of each reduced precision, float32 table
    for method in ("none", "float16", "pca"):
        red = make_reduction(x_v, method, 32)
        stored = red.encode(x_v)
        fb_cats, fb_means = fallback_rows(stored, cats)
        table = LookupTable(ads, stored, cats.astype(np.int32), fb_cats, fb_means, red)
        scores = Predictor(head.eval(), table, None).score_encoded(enc).scores
        out[method] = auc_score(data.label, scores)
        if method == "none":  # reduced-precision heads against fp32 on a trained model
            diffs = {p: float(np.abs(Predictor(head, table, None, precision=p).score_encoded(enc).scores
                                     - scores).max()) for p in PRECISIONS if p != "fp32"}
    return {"auc": out, "cost": {"float16": out["none"] - out["float16"], "pca": out["none"] - out["pca"]},
            "holdout_impressions": int(len(hold_df)), "precision_max_score_diff": diffs}


# --------------------------------------------------------------------------- latency


def paper_predictor(n_ads: int, vocab: int = 10_000) -> tuple[Predictor, FeatureEncoder, FeatureSpec]:
    spec = FeatureSpec(single={n: vocab for n in SINGLE_FIELDS}, multi={n: vocab for n in MULTI_FIELDS})
    for n in NUMERIC_FIELDS:
        spec.single[n] = 18
    cfg = load_config(overrides={**PAPER_DIMS, "model.variant": "cscnn"})
    torch.manual_seed(0)
    head = ModelHead(spec, cfg.model).eval()
    rng = np.random.default_rng(0)
    ads = np.arange(10_000, 10_000 + n_ads, dtype=np.int64)
    cats = rng.integers(1, 100, n_ads)
    x_v = rng.normal(size=(n_ads, 150)).astype(np.float32)
    red = Reduction("float16")
    stored = red.encode(x_v)
    fb_cats, fb_means = fallback_rows(stored, cats)
    table = LookupTable(ads, stored, cats.astype(np.int32), fb_cats, fb_means, red)
    entries = {n: {v: v for v in range(1, vocab)} for n in VOCAB_FIELDS}
    entries["ad_id"] = {int(a): 1 + i % (vocab - 1) for i, a in enumerate(ads)}
    encoder = FeatureEncoder.from_entries(entries, {n: [float(k) for k in range(1, 17)] for n in NUMERIC_FIELDS})
    return Predictor(head, table, encoder), encoder, spec


def random_requests(n: int, rng: np.random.Generator, ad_range: tuple[int, int]) -> list[dict]:
    reqs = []
    for _ in range(n):
        r: dict[str, Any] = {name: int(rng.integers(1, 9_999)) for name in SINGLE_FIELDS}
        r["ad_id"] = int(rng.integers(*ad_range))
        r["price"] = float(rng.random() * 100)
        r["review_count"] = int(rng.integers(0, 500))
        for name in MULTI_FIELDS:
            r[name] = [int(x) for x in rng.integers(1, 9_999, int(rng.integers(0, 6)))]
        reqs.append(r)
    return reqs


def latency(fn, rounds: int) -> tuple[float, float]:
    for _ in range(5):
        fn()
    return percentiles([_timed(fn) for _ in range(rounds)])


def rotated_latency(fns: dict[str, Any], rounds: int, block: int = 100, warmup: int = 5) -> dict[str, np.ndarray]:
    """Per-call seconds of each of ``fns``, ``rounds`` calls each, timed in blocks of ``block``
    consecutive calls with the variants taking turns block by block, so that load on a shared
    machine hits every variant alike while each block runs as a server would: one model whose
    weights stay in cache (one call of each in turn would make every call evict the other
    variants' weights first). Each block starts with ``warmup`` untimed calls; garbage collection
    is off while timing."""
    samples = {name: np.empty(rounds) for name in fns}
    gc.collect()
    gc.disable()
    try:
        for start in range(0, rounds, block):
            stop = min(start + block, rounds)
            for name, fn in fns.items():
                for _ in range(warmup):
                    fn()
                for i in range(start, stop):
                    t = time.perf_counter()
                    fn()
                    samples[name][i] = time.perf_counter() - t
    finally:
        gc.enable()
    return samples


def _summary_ms(samples_s: np.ndarray) -> dict[str, float]:
    ms = samples_s * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "min_ms": float(ms.min())}


def variance_preserving_head(head: ModelHead, seed: int = 0) -> ModelHead:
    """A copy of ``head`` with He-initialised Linear weights, biases N(0, 0.1) and embeddings N(0, 0.5):
    activations keep their scale through the layers (the default init shrinks them, which would make
    any precision look exact), a harder case for reduced precision than the default init."""
    scaled = ModelHead(head.spec, head.cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in scaled.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.normal_(0, (2 / m.in_features) ** 0.5, generator=gen)
                m.bias.normal_(0, 0.1, generator=gen)
            elif isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag)):
                m.weight.normal_(0, 0.5, generator=gen)
        scaled.dcn.out.weight.mul_(0.1)  # logits of a CTR model's range, not hundreds
    return scaled.eval()


def precision_score_diffs(predictor: Predictor, encoded: list[Any]) -> dict[str, float]:
    """Max |score - fp32 ModelHead score| of each precision over ``encoded`` request batches."""
    reference = []
    for enc in encoded:
        x_v, _ = predictor.table.lookup(enc.ad_id, enc.category)
        with torch.inference_mode():
            logits = predictor.head(torch.from_numpy(enc.single),
                                    {k: torch.from_numpy(v) for k, v in enc.multi_values.items()},
                                    {k: torch.from_numpy(v) for k, v in enc.multi_offsets.items()},
                                    torch.from_numpy(x_v))
        reference.append(torch.sigmoid(logits).numpy())
    out = {}
    for precision in PRECISIONS:
        variant = Predictor(predictor.head, predictor.table, predictor.encoder, precision=precision)
        out[precision] = max(float(np.abs(variant.score_encoded(enc).scores - ref).max())
                             for enc, ref in zip(encoded, reference))
    return out


def bench_predictor(quick: bool, rounds: int | None = None) -> dict[str, Any]:
    """Latency of every precision at batch 100 (rotated blocks), batch 1 and the records path of the
    default precision, the compute floor, and each precision's max score difference."""
    predictor, _, _ = paper_predictor(20_000 if quick else 100_000)
    rng = np.random.default_rng(1)
    ad_range = (10_000, 10_000 + len(predictor.table))
    rounds = rounds or (300 if quick else 2000)
    reqs1 = [random_requests(1, rng, ad_range) for _ in range(200)]
    reqs100 = [random_requests(100, rng, ad_range) for _ in range(50)]
    cols1 = [columns_from_records(r) for r in reqs1]
    cols100 = [columns_from_records(r) for r in reqs100]
    variants = {p: Predictor(predictor.head, predictor.table, predictor.encoder, precision=p) for p in PRECISIONS}
    default_precision = resolve_precision(AUTO, PRECISIONS)  # what serving picks here for a version valid in all
    default = variants[default_precision]
    counter = iter(range(10 ** 9))

    def batch100(variant: Predictor):
        return lambda: variant.score_columns(cols100[next(counter) % len(cols100)])

    fns = {f"batch100_{p}": batch100(v) for p, v in variants.items()}
    fns["batch1"] = lambda: default.score_columns(cols1[next(counter) % len(cols1)])
    fns["batch100_records"] = lambda: default.score_records(reqs100[next(counter) % len(reqs100)])
    samples = rotated_latency(fns, rounds)
    gflops = matmul_gflops()
    floor_ms = head_flops(predictor.head, 100) / (gflops * 1e9) * 1000

    # Score differences on a head whose activations keep their scale (see variance_preserving_head).
    scaled = Predictor(variance_preserving_head(predictor.head), predictor.table, predictor.encoder)
    n_check = 1000 if quick else 5000
    check_rng = np.random.default_rng(4)
    encoded = [scaled.encode(columns_from_records(random_requests(100, check_rng, ad_range)))
               for _ in range(n_check // 100)]
    diffs = precision_score_diffs(scaled, encoded)

    b1, b100, rec = (_summary_ms(samples[k]) for k in ("batch1", f"batch100_{default_precision}", "batch100_records"))
    precisions = {}
    for p in PRECISIONS:
        stats = _summary_ms(samples[f"batch100_{p}"])
        precisions[p] = {"batch100_p50_ms": stats["p50_ms"], "batch100_p99_ms": stats["p99_ms"],
                         "batch100_min_ms": stats["min_ms"], "batch100_p99_over_floor": stats["p99_ms"] / floor_ms,
                         "max_abs_score_diff_vs_fp32_model": diffs[p], "tolerance": PRECISION_TOLERANCE[p]}
    return {"default_precision": default_precision, "native_bf16": native_bf16(),
            "batch1_p50_ms": b1["p50_ms"], "batch1_p99_ms": b1["p99_ms"],
            "batch100_p50_ms": b100["p50_ms"], "batch100_p99_ms": b100["p99_ms"], "batch100_min_ms": b100["min_ms"],
            "batch100_floor_ms": floor_ms, "batch100_p99_over_floor": b100["p99_ms"] / floor_ms,
            "batch100_records_p50_ms": rec["p50_ms"], "batch100_records_p99_ms": rec["p99_ms"],
            "precisions": precisions, "rounds": rounds, "score_diff_requests": n_check,
            "matmul_2048_gflops": gflops, "head_mflops_per_request": head_flops(predictor.head, 1) / 1e6,
            "table_ads": len(predictor.table)}


def bench_cnn_online(quick: bool) -> dict[str, Any]:
    predictor, _, spec = paper_predictor(1000)
    spec.single["category_id"] = 24
    cfg = load_config(overrides={**PAPER_DIMS, "model.variant": "cscnn", "model.backbone": "light"})
    model = CTRModel(spec, cfg.model).eval()
    rng = np.random.default_rng(2)
    size = cfg.world.image_size
    b = 100
    single = torch.from_numpy(rng.integers(1, 17, (b, len(spec.single))))
    values = {n: torch.from_numpy(rng.integers(1, 17, 3 * b)) for n in spec.multi}
    offsets = {n: torch.arange(0, 3 * b, 3) for n in spec.multi}
    images = torch.from_numpy(rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8))
    batch = Batch(single, values, offsets, images, torch.from_numpy(rng.integers(0, 24, b)), torch.arange(b),
                  torch.zeros(b))

    def run():
        with torch.inference_mode():
            model(batch)

    rounds = 10 if quick else 30
    p50, p99 = latency(run, rounds)
    return {"batch100_p50_ms": p50, "batch100_p99_ms": p99,
            "model": f"cscnn, light backbone, {size}x{size} images, one image per request"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run, not for the record)")
    ap.add_argument("--predictor-only", action="store_true",
                    help="run only the predictor latency part and print it as JSON (writes no result file)")
    ap.add_argument("--rounds", type=int, default=0,
                    help="timed rounds per predictor variant (default 2000, 300 with --quick)")
    args = ap.parse_args(argv)
    if args.rounds < 0:
        ap.error(f"--rounds must be >= 0 (0 = the default), got {args.rounds}")
    torch.set_num_threads(1)
    if args.predictor_only:
        pred = bench_predictor(args.quick, args.rounds or None)
        print(json.dumps({"machine": machine() + ", torch threads 1", "predictor": pred}, indent=2))
        return 0

    cfg = load_config()
    # Build speed: the default tower embedding 64x64 images (what build_lookup runs per ad).
    spec = make_spec(n_categories=24)
    model = CTRModel(spec, load_config(overrides=PAPER_DIMS).model).eval()
    n = 256 if args.quick else 2048
    rng = np.random.default_rng(3)
    imgs = rng.integers(0, 256, (n, cfg.world.image_size, cfg.world.image_size, 3), dtype=np.uint8)
    cats = rng.integers(0, 24, n)
    embed_images(model, imgs[:64], cats[:64])
    build_s = _timed(lambda: embed_images(model, imgs, cats, batch_size=cfg.inference.batch_size))

    coverage = simulated_coverage([250, 500, 1000, 2000, 4000], window_days=8 if args.quick else 32)
    cost = auc_cost(args.quick)
    pred = bench_predictor(args.quick, args.rounds or None)
    cnn = bench_cnn_online(args.quick)
    result = {
        "machine": machine() + ", torch threads 1",
        "build_ads_per_s": n / build_s,
        "bytes_per_ad": {m: bytes_per_ad(150, r, cfg.inference.pca_dims)
                         for m, r in (("float32", "none"), ("float16", "float16"), ("pca", "pca"))},
        "auc_cost": cost["cost"],
        "auc_precision_max_score_diff": cost["precision_max_score_diff"],
        "coverage_curve": coverage["curve"],
        "predictor": pred,
        "cnn_online": cnn,
        "table_vs_cnn_speedup_batch100_p50": cnn["batch100_p50_ms"] / pred["batch100_p50_ms"],
        "table_vs_cnn_speedup_batch100_p50_fp32": cnn["batch100_p50_ms"] / pred["precisions"]["fp32"]["batch100_p50_ms"],
        "notes": {
            "data": "coverage_curve: the simulated world (simworld, default WorldConfig), window of "
                    f"{8 if args.quick else 32} days, candidates = {coverage['candidates']} ads alive on D, "
                    f"{coverage['holdout_impressions']} holdout impressions; the last point is budget 0 "
                    "(default: every ad with an image). auc_cost: synthetic examples (models.synthetic shapes, "
                    "brightness-driven clicks), paper DCN dims, light CSCNN tower, "
                    f"{cost['holdout_impressions']} holdout impressions, AUCs {cost['auc']}; pca keeps "
                    f"{cfg.inference.pca_dims} of 150 dims.",
            "bytes_per_ad": "serving-file bytes per ad: stored row + int64 ad id + int32 category",
            "build_ads_per_s": f"embed_images on {n} random {cfg.world.image_size}x{cfg.world.image_size} images, "
                               "cscnn light tower (image decoding and Spark I/O not included)",
            "predictor": "batch*_ms: score_columns (validated request columns -> encode -> table lookup -> head) "
                         f"at the precision '{AUTO}' resolves to here ({pred['default_precision']}; native bf16: "
                         f"{pred['native_bf16']}); precisions.<p>: the same at batch 100 per "
                         "precision, max_abs_score_diff_vs_fp32_model over "
                         f"{pred['score_diff_requests']} random requests on a variance-preserving head "
                         "(He-initialised, see variance_preserving_head); batch100_records_*: score_records from "
                         "request dicts, validation included; every variant timed for "
                         f"{pred['rounds']} calls in blocks of 100 consecutive calls (5 untimed warm-up calls "
                         "each), the variants taking turns block by block, gc disabled while timing. "
                         "auc_precision_max_score_diff: the same difference on the trained auc_cost model's holdout",
            "quick": bool(args.quick),
        },
    }
    write_result("lookup_serving.json", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
