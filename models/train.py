"""Training loop, prediction, metrics and model files (kept apart from the modules).

    metrics = train(cfg, spec, train_df, valid_df, images, out_dir)

* The training rows are an in-memory table or a features.example_stream.ExampleStream (the train
  stage's: the examples table read a chunk of whole ad groups at a time). Either way they are
  taken in chunks (train.chunk_rows), re-cut into batches, encoded and given their images one
  chunk ahead on a thread; only a chunk's rows and its ads' images are in memory at a time.
* Batches are consecutive row ranges cut at ad-group boundaries (models.batching), each unique
  ad image embedded once per batch (cfg.train.grouped); chunking does not change them (a batch
  that a chunk boundary would cut is carried into the next chunk: models.batching.batch_chunks).
* Adam; early stopping on the validation split's AUC (evaluated every train.eval_every steps, or
  once per epoch); the best weights are kept. The validation rows are carved from the window
  (features.examples.validation_split, train.validation_fraction), never the run date's holdout
  day: model selection must not see the day the gates and benchmarks score.
* A checkpoint (model, optimizer, AMP scaler, step, epoch and step within it, early-stopping
  state, RNG states) every train.checkpoint_every steps to <out_dir>/checkpoint.pt; with
  resume=True a killed run goes on from it (reading past the batches done in its epoch) and ends
  with the same weights as an uninterrupted run.
* CUDA + AMP when present (train.device = auto), CPU otherwise. Under ``models.launch`` (env RANK and
  WORLD_SIZE) it runs DistributedDataParallel (nccl on CUDA, gloo on CPU): every rank builds the
  same global batch plan and takes a disjoint contiguous share of each global batch's groups;
  the per-rank loss is scaled so that DDP's gradient average equals the single-process gradient
  of the global batch. Global batches with fewer groups than ranks are skipped (logged).
  BatchNorm statistics stay per rank, as usual with DDP. Rank 0 scores the validation rows and
  broadcasts the metrics; rank 0 writes checkpoints and the model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from core.config import ModelConfig, PipelineConfig, build
from core.files import replace_file
from core.metrics import auc
from features.encoder import FeatureEncoder
from features.spec import FeatureSpec
from features.example_stream import ExampleStream, prefetched, table_chunks
from models.batching import (EncodedData, ImageTable, batch_chunks, encode_examples, make_batch, plan_batches,
                             preprocess_images, shard_range, to_arrow)
from models.ctr import CTRModel
from models.warm_start import warm_start

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
MODEL_FILE = "model.pt"
LOG_EVERY_S = 10.0  # seconds between progress lines


# --------------------------------------------------------------------------- metrics


def auc_score(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC (ties count one half); NaN when only one class is present."""
    labels = np.asarray(labels)
    if labels.size == 0 or labels.astype(bool).all() or not labels.astype(bool).any():
        return float("nan")
    return auc(labels, scores)


def compute_metrics(labels: np.ndarray, preds: np.ndarray, is_cold: np.ndarray | None = None) -> dict[str, float]:
    """AUC (all and cold ads), log loss and calibration of predicted CTRs."""
    labels = np.asarray(labels, dtype=np.float64)
    preds = np.asarray(preds, dtype=np.float64)
    p = np.clip(preds, 1e-7, 1 - 1e-7)
    out = {
        "n": int(len(labels)),
        "auc": auc_score(labels, preds),
        "logloss": float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))) if len(labels) else float("nan"),
        "mean_pred": float(preds.mean()) if len(preds) else float("nan"),
        "observed_ctr": float(labels.mean()) if len(labels) else float("nan"),
    }
    out["calibration"] = out["mean_pred"] / out["observed_ctr"] if out["observed_ctr"] > 0 else float("nan")
    if is_cold is not None:
        cold = np.asarray(is_cold, dtype=bool)
        out["n_cold"] = int(cold.sum())
        out["auc_cold"] = auc_score(labels[cold], preds[cold])
    return out


# --------------------------------------------------------------------------- devices, seeds


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' -> CUDA when present, else CPU; 'cuda' without a GPU is an error."""
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"bad device {name!r}; allowed: auto, cpu, cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(_tuplify(state["python"]))
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuplify(x: Any) -> Any:
    return tuple(_tuplify(v) for v in x) if isinstance(x, (list, tuple)) else x


def _init_distributed(device_name: str) -> tuple[int, int, torch.device, bool]:
    """(rank, world size, device, whether we created the process group)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    created = False
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        created = True
    return rank, world, device, created


# --------------------------------------------------------------------------- model files


def save_model(model: nn.Module, path: str | os.PathLike) -> None:
    """Write weights, feature spec and model config to ``path`` (atomically)."""
    model = _unwrap(model)
    payload = {"state_dict": model.state_dict(), "spec": model.spec.to_json(),
               "model_config": json.dumps(dataclasses.asdict(model.cfg)),
               "backbone_frozen": bool(model.tower is not None and model.tower.backbone_frozen)}
    _atomic_save(payload, Path(path))


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> CTRModel:
    """The CTRModel saved by ``save_model`` (in eval mode); loads with weights_only=True."""
    payload = torch.load(path, map_location=map_location, weights_only=True)
    spec = FeatureSpec.from_json(payload["spec"])
    cfg = build(ModelConfig, json.loads(payload["model_config"]), "model")
    model = CTRModel(spec, cfg)
    if payload.get("backbone_frozen") and model.tower is not None:
        model.tower.freeze_backbone()
    model.load_state_dict(payload["state_dict"])
    return model.to(map_location).eval()


def _atomic_save(obj: Any, path: Path) -> None:
    with replace_file(path, "wb") as f:
        torch.save(obj, f)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# --------------------------------------------------------------------------- pretraining


def image_statistics(x: torch.Tensor) -> torch.Tensor:
    """Per-channel mean and standard deviation of preprocessed images (N, 3, H, W) -> (N, 6)."""
    return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)  # (N, 6)


def pretrain_backbone(tower: nn.Module, images: np.ndarray, categories: np.ndarray, steps: int,
                      batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
                      device: str | torch.device = "cpu") -> dict[str, float]:
    """Pretrain ``tower`` (backbone + projection) on uint8 images (N, H, W, 3) for variant
    cnn_fixed, which then freezes the backbone: a generic task standing in for ImageNet
    pretraining, two temporary linear heads on the tower's output trained jointly,

      * classify the image's category (cross-entropy), and
      * regress its colour statistics, per-channel mean and standard deviation (``image_statistics``,
        mean squared error).

    The second head keeps the low-level statistics (brightness, colour, contrast) in the frozen
    features, as a generic backbone keeps them: category labels alone teach features that ignore
    whatever does not tell the categories apart (the ablation's cnn_fixed then fell below dcn).

    Returns the mean losses and accuracy over the last 10% of steps."""
    categories = np.asarray(categories, dtype=np.int64)
    if len(images) != len(categories) or len(images) == 0:
        raise ValueError(f"need as many images as categories (> 0), got {len(images)} and {len(categories)}")
    device = torch.device(device)
    tower.to(device).train()
    dtype = next(tower.parameters()).dtype
    head = nn.Linear(tower.proj.out_features, int(categories.max()) + 1).to(device, dtype)
    stats_head = nn.Linear(tower.proj.out_features, 6).to(device, dtype)
    opt = torch.optim.Adam([*tower.parameters(), *head.parameters(), *stats_head.parameters()], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    class_losses, stats_losses, accs = [], [], []
    for _ in range(steps):
        idx = torch.randint(len(images), (min(batch_size, len(images)),), generator=gen).numpy()
        x = preprocess_images(torch.from_numpy(images[idx]).to(device), dtype)  # (b, 3, H, W)
        y = torch.from_numpy(categories[idx]).to(device)
        out = tower(x, y)  # (b, visual_dim); the plain backbone ignores y
        logits = head(out)  # (b, n_classes)
        class_loss = F.cross_entropy(logits, y)
        stats_loss = F.mse_loss(stats_head(out), image_statistics(x))
        opt.zero_grad(set_to_none=True)
        (class_loss + stats_loss).backward()
        opt.step()
        class_losses.append(class_loss.item())
        stats_losses.append(stats_loss.item())
        accs.append((logits.argmax(1) == y).float().mean().item())
    tail = max(1, steps // 10)

    def last(values: list[float]) -> float:
        return float(np.mean(values[-tail:])) if values else float("nan")

    return {"loss": last(class_losses), "accuracy": last(accs), "stats_loss": last(stats_losses)}


# --------------------------------------------------------------------------- prediction


class _Prepared:
    """Encoded examples with their images laid out once."""

    def __init__(self, data: Any, spec: FeatureSpec, images: Mapping[int, np.ndarray] | None,
                 uses_images: bool, require_label: bool = True) -> None:
        self.data: EncodedData = encode_examples(data, spec, require_label=require_label)
        self.pixels = self.row_ad = None
        if uses_images:
            if images is None:
                raise ValueError("this model variant needs the ad image lookup, got images=None")
            table = ImageTable(images, self.data.ad_id)
            self.pixels, self.row_ad = table.pixels, table.row_ad

    def batch(self, start: int, end: int, grouped: bool = True):
        return make_batch(self.data, self.pixels, self.row_ad, start, end, grouped)


def _predict_prepared(model: nn.Module, prep: _Prepared, batch_size: int, device: torch.device,
                      amp: bool = False) -> np.ndarray:
    model = _unwrap(model)
    was_training = model.training
    model.eval()
    dtype = next(model.parameters()).dtype
    out = np.empty(len(prep.data), np.float64)
    with torch.no_grad(), torch.autocast(device.type, enabled=amp and device.type == "cuda"):
        for start, end in plan_batches(prep.data.group_id, batch_size):
            batch = prep.batch(start, end).to(device, dtype)
            out[start:end] = torch.sigmoid(model(batch).float()).cpu().numpy()
    model.train(was_training)
    return out


def predict(model: nn.Module, data: Any, images: Mapping[int, np.ndarray] | None,
            batch_size: int = 1024) -> np.ndarray:
    """pCTR (n,) for encoded examples ``data`` in row order, on the model's device, eval mode."""
    model = _unwrap(model)
    device = next(model.parameters()).device
    prep = _Prepared(data, model.spec, images, model.uses_images, require_label=False)
    return _predict_prepared(model, prep, batch_size, device)


def score_model(model_path: str | os.PathLike, data: Any, images: Mapping[int, np.ndarray] | None,
                batch_size: int = 1024) -> dict[str, float]:
    """compute_metrics of the model file at ``model_path`` on encoded examples ``data`` (with label
    and is_cold): how a benchmark scores a test day, once, after training chose its weights."""
    preds = predict(load_model(model_path), data, images, batch_size)
    return compute_metrics(np.asarray(data["label"]), preds, np.asarray(data["is_cold"]).astype(bool))


def embed_images(model: nn.Module, images: np.ndarray, categories: np.ndarray, batch_size: int = 512,
                 keys: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
    """Visual embeddings x_v (N, visual_dim) of uint8 images (N, H, W, 3) with their category ids
    (N,) and, for CSCNN priors beyond the category (hierarchical, or model.prior_fields), ``keys``:
    the images' encoded ids of the model's ``key_fields`` (e.g. {"parent_category_id": (N,)})."""
    model = _unwrap(model)
    if model.tower is None:
        raise ValueError(f"variant {model.cfg.variant!r} has no visual tower to embed images with")
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(images), batch_size):
            x = preprocess_images(torch.from_numpy(np.ascontiguousarray(images[s:s + batch_size])).to(device),
                                  dtype)  # (b, 3, H, W)
            c = torch.as_tensor(np.asarray(categories[s:s + batch_size], dtype=np.int64), device=device)
            ids = {f: torch.as_tensor(np.asarray(v[s:s + batch_size], dtype=np.int64), device=device)
                   for f, v in (keys or {}).items()}
            out.append(model.tower(x, model.prior_keys(c, ids)).float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, model.cfg.visual_dim), np.float32)


# --------------------------------------------------------------------------- training


@dataclasses.dataclass
class _EarlyStop:
    best_auc: float = -math.inf
    best_step: int = -1
    bad_evals: int = 0
    stopped: bool = False


def _fingerprint(cfg: PipelineConfig, n_rows: int, world: int) -> str:
    """What a checkpoint must agree on to be resumed (max_steps and patience may change)."""
    key = json.dumps({"model": dataclasses.asdict(cfg.model), "batch_size": cfg.train.batch_size,
                      "lr": cfg.train.lr, "wd": cfg.train.weight_decay, "seed": cfg.train.seed,
                      "grouped": cfg.train.grouped, "rows": n_rows, "world": world}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def train(cfg: PipelineConfig, spec: FeatureSpec, train_data: Any, valid_data: Any | None,
          images: Mapping[int, np.ndarray] | None, out_dir: str | os.PathLike, resume: bool = True,
          init_from: str | os.PathLike | Mapping[str, torch.Tensor] | None = None,
          init_sha256: str | None = None, init_encoder: FeatureEncoder | None = None,
          encoder: FeatureEncoder | None = None,
          on_checkpoint: Callable[[Path], None] | None = None) -> dict[str, Any]:
    """Train the CTR model of ``cfg.model`` on encoded examples; see the module docstring.

    ``train_data``: a pandas DataFrame, pyarrow Table or dict of columns in training order, or an
    ExampleStream; ``images``: ad id -> uint8 (H, W, 3), a dict or models.batching.EncodedImages.

    ``init_from`` (with ``train.warm_start``, and no checkpoint to resume) is the model to warm-start
    from; ``init_encoder`` and ``encoder`` are the encoders of its run and of this one, through which
    models.warm_start remaps embedding and prior rows by value.
    ``valid_data`` (rows of the window, never the test day) picks the best weights and stops early;
    None: the last step's weights are kept.
    Writes <out_dir>/model.pt (best weights, rank 0) and <out_dir>/checkpoint.pt, and then calls
    ``on_checkpoint(path)`` on rank 0 (the stage copies it to object storage); returns validation
    metrics (auc, auc_cold, logloss, mean_pred, observed_ctr, calibration; none without
    ``valid_data``) plus run facts, with ``warm_start`` (models.warm_start.WarmStart.summary) when it
    warm-started."""
    tc = cfg.train
    out_dir = Path(out_dir)
    rank, world, device, created_pg = _init_distributed(tc.device)
    deterministic = tc.deterministic and device.type == "cpu"
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    if deterministic:
        torch.use_deterministic_algorithms(True)
    try:
        return _train(cfg, spec, train_data, valid_data, images, out_dir, resume, init_from,
                      rank, world, device, init_sha256, init_encoder, encoder, on_checkpoint)
    finally:
        if deterministic:
            torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        if created_pg:
            dist.destroy_process_group()


class _Source:
    """Training rows as chunks of whole ad groups in row order: an ExampleStream read from the
    examples table, or an in-memory table (pandas, pyarrow, dict of columns) cut the same way."""

    def __init__(self, data: Any, chunk_rows: int) -> None:
        self._stream = data if isinstance(data, ExampleStream) else None
        self._table = None if self._stream is not None else to_arrow(data)
        self.chunk_rows = chunk_rows
        self.num_rows = self._stream.num_rows if self._stream is not None else self._table.num_rows

    def chunks(self) -> Iterator[Any]:
        return iter(self._stream) if self._stream is not None else table_chunks(self._table, self.chunk_rows)


def _epoch(source: _Source, spec: FeatureSpec, images: Mapping[int, np.ndarray] | None, uses_images: bool,
           batch_size: int, skip: int) -> Iterator[tuple[_Prepared, int, int, bool]]:
    """One epoch's batches after the first `skip`: (prepared rows, start, end, last of the epoch).

    The rows are read, cut, encoded and given their images one table ahead on a thread."""
    def produce() -> Iterator[tuple[_Prepared, list[tuple[int, int]]]]:
        left = skip
        for table, plan in batch_chunks(source.chunks(), batch_size):
            if left >= len(plan):
                left -= len(plan)
                continue
            plan, left = plan[left:], 0
            yield _Prepared(table, spec, images, uses_images), plan

    pending = None
    for prep, plan in prefetched(produce, 1, "batches"):
        for start, end in plan:
            if pending is not None:
                yield (*pending, False)
            pending = (prep, start, end)
    if pending is not None:
        yield (*pending, True)


def param_groups(model: nn.Module, tc) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: everything at train.lr; CSCNN's prior tables
    (models.attention) at lr x train.prior_lr_scale. With hierarchical priors a category's prior
    is the sum of its own table row and its parent's, and Adam moves each by about its learning
    rate per update, so those two tables get half the prior rate each: a category's prior then
    moves about as fast as a flat one, and the option adds borrowing, not a faster prior."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    priors = [(n, p) for n, p in named if "_prior." in n]
    hierarchical = any("parent_" in n for n, _ in priors)
    summed = [p for n, p in priors if hierarchical and "field_" not in n]
    single = [p for n, p in priors if not (hierarchical and "field_" not in n)]
    groups: list[dict[str, Any]] = [{"params": [p for n, p in named if "_prior." not in n]}]
    if single:
        groups.append({"params": single, "lr": tc.lr * tc.prior_lr_scale})
    if summed:
        groups.append({"params": summed, "lr": tc.lr * tc.prior_lr_scale / 2})
    return groups


def _train(cfg, spec, train_data, valid_data, images, out_dir, resume, init_from, rank, world, device,
           init_sha256=None, init_encoder=None, encoder=None, on_checkpoint=None):
    tc, mc = cfg.train, cfg.model
    seed_everything(tc.seed)
    model = CTRModel(spec, mc)
    uses_images = model.uses_images
    if uses_images and images is None:
        raise ValueError("this model variant needs the ad image lookup, got images=None")
    source = _Source(train_data, tc.chunk_rows)
    valid_set = _Prepared(valid_data, spec, images, uses_images) if valid_data is not None else None
    if source.num_rows == 0:
        raise ValueError("no training examples")
    ckpt_path = out_dir / CHECKPOINT_FILE
    fingerprint = _fingerprint(cfg, source.num_rows, world)
    ckpt = None
    if resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if ckpt.get("fingerprint") != fingerprint:
            log.warning("checkpoint %s was written for other data or settings; starting fresh", ckpt_path)
            ckpt = None
        elif "epoch_step" not in ckpt:
            log.warning("checkpoint %s predates streamed training (no position in its epoch); starting fresh",
                        ckpt_path)
            ckpt = None

    warm = ckpt is None and init_from is not None and tc.warm_start
    warm_result = None
    if warm:
        warm_result = warm_start(model, init_from, init_sha256, old_encoder=init_encoder,
                                 new_encoder=encoder).summary()
    if mc.variant == "cnn_fixed":
        if ckpt is None and not warm:
            pixels, categories = _ad_images(source, images)
            stats = pretrain_backbone(model.tower, pixels, categories, tc.pretrain_steps,
                                      lr=tc.lr, seed=tc.seed, device=device)
            del pixels
            log.info("cnn_fixed backbone pretrained (categories + colour statistics): %s", stats)
        model.tower.freeze_backbone()
    model.to(device)
    if device.type == "cuda":
        # Fixed image sizes: let cuDNN pick the fastest conv algorithms (measured 2-3x on the tower).
        torch.backends.cudnn.benchmark = True
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.Adam(param_groups(model, tc), lr=tc.lr, weight_decay=tc.weight_decay)
    use_amp = tc.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    early = _EarlyStop()
    best_state: dict[str, torch.Tensor] | None = None
    step = epoch = epoch_step = 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        step, epoch, epoch_step = int(ckpt["step"]), int(ckpt["epoch"]), int(ckpt["epoch_step"])
        early = _EarlyStop(**ckpt["early_stop"])
        best_state = ckpt["best_state"] or None
        _set_rng_state(ckpt["rng"])
        warm_result = ckpt.get("warm_start") or None
        log.info("resumed from %s at step %d (epoch %d, its step %d)", ckpt_path, step, epoch + 1, epoch_step)

    def evaluate() -> dict[str, Any]:
        # Rank 0 scores the validation rows and shares the result, so every rank takes the same
        # early-stopping decision (and snapshots the same, synchronised weights).
        metrics = None
        if rank == 0:
            preds = _predict_prepared(model, valid_set, tc.batch_size, device, use_amp)
            metrics = compute_metrics(valid_set.data.label, preds, valid_set.data.is_cold)
        if world > 1:
            box = [metrics]
            dist.broadcast_object_list(box, src=0)
            metrics = box[0]
        return metrics

    def save_checkpoint() -> None:
        if rank == 0:
            _atomic_save({"fingerprint": fingerprint, "model": model.state_dict(), "optimizer": opt.state_dict(),
                          "scaler": scaler.state_dict(), "step": step, "epoch": epoch, "epoch_step": epoch_step,
                          "early_stop": dataclasses.asdict(early), "best_state": best_state or {},
                          "rng": _rng_state(), "warm_start": warm_result or {}}, ckpt_path)
            if on_checkpoint is not None:
                on_checkpoint(ckpt_path)

    net.train()
    t0, last_log, seen, loss_acc, loss_n, skipped = time.time(), time.time(), 0, 0.0, 0, 0
    first_batch_s = None  # the wait for the first chunk: reported apart, not in impressions/s
    done = early.stopped or epoch >= tc.epochs or bool(tc.max_steps and step >= tc.max_steps)
    while not done:
        for prep, start, end, epoch_end in _epoch(source, spec, images, uses_images, tc.batch_size, epoch_step):
            if first_batch_s is None:
                first_batch_s = time.time() - t0
                t0 = last_log = time.time()
            in_epoch = epoch + 1
            share = shard_range(prep.data.group_id, start, end, rank, world)
            if share is None:
                skipped += 1
            else:
                batch = prep.batch(*share, grouped=tc.grouped).to(device)
                with torch.autocast(device.type, enabled=use_amp):
                    logits = net(batch)
                loss_sum = F.binary_cross_entropy_with_logits(logits.float(), batch.labels, reduction="sum")
                # DDP averages gradients over ranks: scale so the average is the global batch mean.
                loss = loss_sum * (world / (end - start))
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                seen += share[1] - share[0]
                loss_acc = loss_acc + loss_sum.detach()  # summed on the device: no sync per step
                loss_n += share[1] - share[0]
            step += 1
            epoch_step += 1
            if epoch_end:
                epoch, epoch_step = epoch + 1, 0
            final = epoch >= tc.epochs or bool(tc.max_steps and step >= tc.max_steps)
            now = time.time()
            if rank == 0 and (now - last_log >= LOG_EVERY_S or final):
                log.info("step %d (epoch %d/%d) loss %.4f impressions/s %.0f (all ranks, estimated from rank 0)",
                         step, in_epoch, tc.epochs,
                         float(loss_acc) / max(loss_n, 1), seen * world / max(now - t0, 1e-9))
                last_log, loss_acc, loss_n = now, 0.0, 0
            due = step % tc.eval_every == 0 if tc.eval_every else epoch_end
            if valid_set is not None and (due or final):
                auc = evaluate()["auc"]
                if not math.isnan(auc) and auc > early.best_auc:
                    early.best_auc, early.best_step, early.bad_evals = auc, step, 0
                    best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                else:
                    early.bad_evals += 1
                    early.stopped = early.bad_evals >= tc.early_stopping_patience
                if rank == 0:
                    log.info("step %d validation auc %.4f (best %.4f at step %d)", step, auc, early.best_auc,
                             early.best_step)
            if tc.checkpoint_every and step % tc.checkpoint_every == 0:
                save_checkpoint()
            if final or early.stopped:
                done = True
                break
    if skipped:
        log.warning("skipped %d global batches with fewer ad groups than the %d ranks", skipped, world)
    elapsed = time.time() - t0
    if best_state:
        model.load_state_dict(best_state)
    metrics: dict[str, Any] = evaluate() if valid_set is not None else {}
    total_seen = seen
    if world > 1:
        count = torch.tensor([seen], dtype=torch.int64, device=device)
        dist.all_reduce(count)
        total_seen = int(count.item())
    metrics.update({"steps": step, "best_step": early.best_step, "early_stopped": early.stopped,
                    "train_impressions": total_seen, "impressions_per_s": total_seen / max(elapsed, 1e-9),
                    "first_batch_s": round(first_batch_s or 0.0, 3),
                    "device": str(device), "world_size": world, "model_path": str(out_dir / MODEL_FILE)})
    if warm_result:
        metrics["warm_start"] = warm_result
    if rank == 0:
        save_model(model, out_dir / MODEL_FILE)
    if world > 1:
        dist.barrier()
    return metrics


def _ad_images(source: _Source, images: Mapping[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(pixels (A, H, W, 3), category (A,)) of every ad of the training rows, in ad id order: the
    cnn_fixed backbone's pretraining set (one pass over the rows; the pixels of all ads in memory)."""
    ads, cats = [], []
    for chunk in source.chunks():
        ad, first = np.unique(np.asarray(chunk.column("ad_id").to_numpy(), np.int64), return_index=True)
        ads.append(ad)
        cats.append(np.asarray(chunk.column("category_idx").to_numpy(), np.int64)[first])
    ad_id, first = np.unique(np.concatenate(ads), return_index=True)
    table = ImageTable(images, ad_id)
    return table.pixels, np.concatenate(cats)[first]
