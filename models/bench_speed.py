"""Training-speed benchmark.

    python -m models.bench_speed --out bench/results/training_speed.json [--device cuda]

1. Grouped vs per-impression training throughput (impressions/s, forward + backward + Adam) of
   the CSCNN model (light backbone, 64x64 images, default DCN widths) on synthetic batches shaped
   like the default world: ad groups of 8..25 impressions.
2. Visual-tower images/s (forward + backward, 64x64, batch 64) of ResNet18, +CBAM and +CSCNN
   (attention after all 16 conv layers, |K| = 3310 categories drawn at random per image, the
   Table 2 setting), measured in interleaved rounds after warm-up; the median round counts, and
   the CSCNN ratios are also given per round (``*_paired``: median over rounds of the ratio).
   The attention's plain-autograd form (``reference_forward``) runs in the same rounds
   (``images_per_s_reference``), so the fused Functions' gain is measured, not assumed.
3. Table 2 parameters and GFLOPs (models.cost).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Callable

import numpy as np
import torch

from core.config import ModelConfig
from core.files import write_json
from models.attention import CBAM, CSCNNAttention
from models.batching import ImageTable, encode_examples, make_batch, plan_batches
from models.cost import table2
from models.ctr import CTRModel
from models.synthetic import make_examples, make_spec
from models.train import resolve_device
from models.visual import RESNET18_ATTENTIVE_CONVS, build_visual_tower


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], None], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def grouped_vs_per_impression(device: torch.device, batch_size: int, steps: int, image_size: int = 64,
                              seed: int = 0) -> dict[str, float]:
    """Impressions/s of CSCNN training steps in both modes on the same batches."""
    spec = make_spec(n_categories=24, vocab=1000)
    df, images = make_examples(spec, n_ads=(steps + 1) * batch_size // 12, impressions_per_ad=(8, 25),
                               image_size=image_size, seed=seed)
    data = encode_examples(df, spec)
    table = ImageTable(images, data.ad_id)
    plan = plan_batches(data.group_id, batch_size)[: steps + 1]  # the first batch warms up
    out = {}
    for grouped in (True, False):
        torch.manual_seed(seed)
        model = CTRModel(spec, ModelConfig(variant="cscnn", backbone="light")).to(device).train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step(rng: tuple[int, int]) -> None:
            batch = make_batch(data, table.pixels, table.row_ad, *rng, grouped=grouped).to(device)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch), batch.labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        # cuDNN autotunes once per new input shape (U varies per batch): on CUDA warm up on every batch.
        for rng in (plan if device.type == "cuda" else plan[:1]):
            step(rng)
        elapsed = sum(_timed(lambda r=r: step(r), device) for r in plan[1:])
        out["grouped" if grouped else "per_impression"] = sum(e - s for s, e in plan[1:]) / elapsed
    out["images_per_batch_grouped"] = float(np.mean([len(np.unique(data.ad_id[s:e])) for s, e in plan[1:]]))
    out["impressions_per_batch"] = float(np.mean([e - s for s, e in plan[1:]]))
    return out


def _use_reference_forward(tower: torch.nn.Module) -> torch.nn.Module:
    """``tower`` with every attention module running its plain-autograd ``reference_forward``."""
    for module in tower.modules():
        if isinstance(module, (CBAM, CSCNNAttention)):
            module.forward = module.reference_forward
    return tower


def tower_round_times(device: torch.device, batch: int, rounds: int, warmup: int = 2, image_size: int = 64,
                      attention_layers: int = RESNET18_ATTENTIVE_CONVS, n_categories: int = 3310,
                      seed: int = 0, reference: bool = False) -> dict[str, list[float]]:
    """Seconds per forward+backward step of the ResNet18 tower with no attention, CBAM and CSCNN
    (and with ``reference`` their plain-autograd forms, "cbam_reference" / "cscnn_reference"),
    one step of each per round, ``rounds`` rounds."""
    torch.manual_seed(seed)
    cfg = ModelConfig(variant="cscnn", backbone="resnet18", attention_layers=attention_layers)
    kinds = [("resnet18", "none"), ("cbam", "cbam"), ("cscnn", "cscnn")]
    kinds += [("cbam_reference", "cbam"), ("cscnn_reference", "cscnn")] if reference else []
    towers = {name: build_visual_tower(cfg, n_categories, attention=att).to(device).train() for name, att in kinds}
    for name in towers:
        if name.endswith("_reference"):
            _use_reference_forward(towers[name])
    x = torch.randn(batch, 3, image_size, image_size, device=device)
    cats = torch.randint(n_categories, (batch,), device=device)

    def step(tower: torch.nn.Module) -> None:
        tower.zero_grad(set_to_none=True)
        tower(x, cats).square().mean().backward()

    for tower in towers.values():
        for _ in range(warmup):
            step(tower)
    times: dict[str, list[float]] = {name: [] for name in towers}
    for _ in range(rounds):  # interleaved, so load from other processes hits all variants alike
        for name, tower in towers.items():
            times[name].append(_timed(lambda t=tower: step(t), device))
    return times


def images_per_s(times: dict[str, list[float]], batch: int) -> dict[str, float]:
    """images/s of each variant from its median step time."""
    return {name: batch / statistics.median(ts) for name, ts in times.items()}


def paired_speed_ratio(times: dict[str, list[float]], variant: str, reference: str) -> float:
    """images/s of ``variant`` over ``reference`` per round (time(reference) / time(variant)),
    median over rounds: the steps of one round ran back to back, so a machine whose speed drifts
    between rounds (other tenants) moves both alike and the ratio less than either median."""
    return statistics.median(r / v for v, r in zip(times[variant], times[reference]))


def machine(device: torch.device) -> str:
    """A one-line description of where the benchmark ran."""
    cpu = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (host: {cpu}), torch {torch.__version__}"
    return f"CPU {cpu}, torch {torch.__version__}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench/results/training_speed.json")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.add_argument("--batch-size", type=int, default=0, help="impressions per training batch "
                        "(default 512 on CPU, 1024 on CUDA)")
    parser.add_argument("--steps", type=int, default=0, help="timed training steps per mode (default 3 CPU, 20 CUDA)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a shared 2-core machine OpenMP spin-waiting "
                             "under load made 2-thread timings 5-10x slower and erratic; 0 = torch's default)")
    parser.add_argument("--rounds", type=int, default=0, help="timed tower rounds (default 9 CPU, 30 CUDA)")
    parser.add_argument("--no-reference", action="store_true",
                        help="leave out the towers whose attention runs the plain-autograd reference_forward "
                             "(measured by default beside the fused attention, images_per_s_reference)")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as models.train does on CUDA
    gpu = device.type == "cuda"
    batch_size = args.batch_size or (1024 if gpu else 512)
    speed = grouped_vs_per_impression(device, batch_size, args.steps or (20 if gpu else 3))
    tower_times = tower_round_times(device, 64, args.rounds or (30 if gpu else 9), reference=not args.no_reference)
    reference_times = {name: tower_times.pop(name) for name in list(tower_times) if name.endswith("_reference")}
    images = images_per_s(tower_times, 64)
    reference = {}
    if reference_times:
        both = {**tower_times, **reference_times}
        reference = {"images_per_s_reference": images_per_s(reference_times, 64),
                     "cscnn_reference_vs_resnet18_paired": paired_speed_ratio(both, "cscnn_reference", "resnet18"),
                     "cbam_reference_vs_resnet18_paired": paired_speed_ratio(both, "cbam_reference", "resnet18")}
    costs = table2()
    # On a GPU, batch 64 of 64x64 images is bound by kernel launches; batch 256 shows the compute side.
    images_256 = images_per_s(tower_round_times(device, 256, args.rounds or 30), 256) if gpu else None
    result = {
        "machine": machine(device),
        "grouped_impressions_per_s": speed["grouped"],
        "per_impression_impressions_per_s": speed["per_impression"],
        "grouped_speedup": speed["grouped"] / speed["per_impression"],
        "grouped_setup": {"batch_impressions": speed["impressions_per_batch"],
                          "unique_images_per_batch": speed["images_per_batch_grouped"],
                          "model": "cscnn, light backbone, 64x64, deep_dims 1024/512/256"},
        "images_per_s": images,
        "images_per_s_setup": "ResNet18 tower forward+backward, 64x64, batch 64, attention after all 16 convs, "
                              "|K|=3310, median of interleaved rounds after warm-up",
        "cscnn_vs_cbam": images["cscnn"] / images["cbam"],
        "cscnn_vs_resnet18": images["cscnn"] / images["resnet18"],
        # The same ratios per round (steps of one round ran back to back), median over rounds.
        "cscnn_vs_cbam_paired": paired_speed_ratio(tower_times, "cscnn", "cbam"),
        "cscnn_vs_resnet18_paired": paired_speed_ratio(tower_times, "cscnn", "resnet18"),
        "tower_rounds": len(tower_times["cscnn"]),
        # The same towers with the attention's plain-autograd form (models.attention reference_forward).
        **reference,
        **({"images_per_s_batch256": images_256} if images_256 else {}),
        "table2": {name: {"params_m": row["params_m"], "gflops": row["gflops"],
                          "paper_params_m": row["paper_params_m"], "paper_gflops": row["paper_gflops"]}
                   for name, row in costs.items()},
    }
    print(json.dumps(result, indent=2))
    if args.out:
        write_json(args.out, result, sort_keys=False)
    return result


if __name__ == "__main__":
    main()
