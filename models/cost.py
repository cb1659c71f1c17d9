"""Parameters and FLOPs of ResNet18, +CBAM, +CSCNN and our CSCNN options at the paper's Table 2 settings.

    python -m models.cost [--out bench/results/table2.json]

Settings: 224x224 input, |K| = 3310 categories, C' = 20, H' = W' = 6, reduction 4, attention
after all 16 conv layers of the ResNet18 BasicBlocks (the paper's "(120k + 68k) * 16 layers";
conv1 and the three 1x1 shortcut convs get none), torchvision's 1000-way classifier on top.

Convention: torch.utils.flop_counter.FlopCounterMode counts 2 FLOPs per multiply-accumulate;
the paper's 1.8206 "GFLOPs" for ResNet18 is the multiply-accumulate count (torchvision lists
1.81 GFLOPS for it the same way), so ``gflops`` here is FlopCounterMode's total / 2 / 1e9.
FlopCounterMode counts matrix products and convolutions only, not element-wise products,
pooling, sigmoids or the bilinear resize: the attention modules' extra cost is mostly such
element-wise work, so our +CBAM/+CSCNN increments are smaller than the paper's.

``cscnn+parent`` (model.prior_hierarchy "parent") adds, per attentive layer, a parent prior
table of (C' + H'*W') entries per parent category. The paper does not give its tree's number of
parents; the row assumes n_parents = 828, a quarter of the 3310 leaves (the simulator's default
ratio, 6 parents for 24 leaves). Its extra work per image is two embedding lookups and two
additions per layer, element-wise: FlopCounterMode counts none of it.

``cscnn+brand`` and ``cscnn+shop`` (model.prior_fields ["category", "brand"] / ["category",
"shop"]) add, per attentive layer, a prior table of (C' + H'*W') entries per brand (shop), C' * C/r
inputs of the channel MLP's first layer and one more input map of the 7x7 spatial conv: the MLP
and conv widening is counted work (a few MFLOPs). The paper gives no brand or shop count; the rows
assume 10,000 of each (n_brands, n_shops), so read their parameter deltas per entity too: 16 x
(C' + H'*W') = 896 parameters per brand or shop.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from core.config import ModelConfig
from core.files import write_json
from models.visual import RESNET18_ATTENTIVE_CONVS, build_visual_tower

PAPER_TABLE2 = {
    "resnet18": {"params_m": 17.9961, "gflops": 1.8206},
    "cbam": {"params_m": 18.6936, "gflops": 1.8322},
    "cscnn": {"params_m": 21.6791, "gflops": 1.8329},
}
TABLE2_SETTINGS = {"image_size": 224, "n_categories": 3310, "prior_channels": 20, "prior_spatial": 6,
                   "reduction": 4, "attention_layers": RESNET18_ATTENTIVE_CONVS, "num_classes": 1000,
                   "n_parents": 828, "n_brands": 10_000, "n_shops": 10_000}


class _Classifier(nn.Module):
    """ResNet18 backbone (+ attention) with torchvision's pooled 1000-way classifier."""

    def __init__(self, attention: str, s: dict[str, Any], hierarchy: str = "none",
                 fields: tuple[str, ...] = ()) -> None:
        super().__init__()
        cfg = ModelConfig(variant="cscnn", backbone="resnet18", prior_channels=s["prior_channels"],
                          prior_spatial=s["prior_spatial"], reduction=s["reduction"],
                          attention_layers=s["attention_layers"], prior_hierarchy=hierarchy,
                          prior_fields=("category",) + fields)
        sizes = {f: s[f"n_{f}s"] for f in fields}
        self.backbone = build_visual_tower(cfg, s["n_categories"], attention=attention,
                                           n_parents=s["n_parents"], field_sizes=sizes).backbone
        self.fc = nn.Linear(self.backbone.out_channels, s["num_classes"])

    def forward(self, x: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        return self.fc(self.backbone(x, category).mean(dim=(2, 3)))  # (N, num_classes)


def measure(attention: str, settings: dict[str, Any] | None = None, hierarchy: str = "none",
            fields: tuple[str, ...] = ()) -> dict[str, float]:
    """Parameters (millions) and forward GFLOPs (multiply-accumulates) of one image; ``fields``:
    CSCNN prior fields beyond the category ("brand", "shop")."""
    s = {**TABLE2_SETTINGS, **(settings or {})}
    model = _Classifier(attention, s, hierarchy, fields).eval()
    x = torch.zeros(1, 3, s["image_size"], s["image_size"])
    width = 1 + (hierarchy == "parent") + len(fields) if attention == "cscnn" else 1
    keys = torch.zeros((1, width) if width > 1 else 1, dtype=torch.long)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x, keys)
    flops = counter.get_total_flops()
    return {"params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "gflops": flops / 2 / 1e9, "flop_counter_gflops": flops / 1e9}


def table2(settings: dict[str, Any] | None = None) -> dict[str, dict[str, float]]:
    """Ours next to the paper's figures for resnet18, cbam and cscnn; our options without a paper figure."""
    names = {"resnet18": "none", "cbam": "cbam", "cscnn": "cscnn"}
    out = {}
    for name, attention in names.items():
        ours = measure(attention, settings)
        out[name] = {**ours, "paper_params_m": PAPER_TABLE2[name]["params_m"],
                     "paper_gflops": PAPER_TABLE2[name]["gflops"]}
    out["cscnn+parent"] = {**measure("cscnn", settings, hierarchy="parent"), "paper_params_m": None,
                           "paper_gflops": None}
    for field in ("brand", "shop"):
        out[f"cscnn+{field}"] = {**measure("cscnn", settings, fields=(field,)), "paper_params_m": None,
                                 "paper_gflops": None}
    return out


NOTES = [
    "gflops = FlopCounterMode total / 2 (multiply-accumulates), the convention of the paper's 1.8206 for ResNet18.",
    "FlopCounterMode counts convolutions and matrix products only; element-wise gating, pooling, sigmoid and the "
    "bilinear resize are not counted, so the +CBAM/+CSCNN FLOP increments are below the paper's (+0.0116, +0.0123).",
    "Parameter increments match the paper: +CBAM = 16 bias-free shared MLPs (2*C*C/4) + 7x7 spatial convs; "
    "+CSCNN adds per layer C'*|K| + H'*W'*|K| prior entries, C'*C/4 MLP inputs and a third spatial input map.",
    "cscnn+parent (model.prior_hierarchy 'parent') adds 16 layers x (C' + H'*W') x n_parents parent-prior entries; "
    "n_parents = 828 is an assumption (a quarter of the leaves; the paper gives no parent count). Its extra work is "
    "embedding lookups and additions, which FlopCounterMode does not count.",
    "cscnn+brand / cscnn+shop (model.prior_fields) add 16 layers x (C' + H'*W') x n_brands (n_shops) prior "
    "entries, plus C'*C/4 channel-MLP inputs and one more 7x7 spatial-conv input map per layer (counted FLOPs); "
    "n_brands = n_shops = 10,000 is an assumption (the paper gives neither): 896 parameters per brand or shop.",
    "Our ResNet18 base is torchvision's (11.69M with the 1000-way classifier); the paper's base of 17.9961M is "
    "not explained in the paper, so absolute parameter counts differ by that constant offset.",
]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="", help="write the table as JSON to this path")
    args = parser.parse_args(argv)
    result = {"settings": TABLE2_SETTINGS, "table2": table2(), "notes": NOTES}
    t = result["table2"]
    print(f"{'model':<13} {'params/M':>9} {'paper':>9} {'d vs base':>10} {'paper d':>9} "
          f"{'GFLOPs':>8} {'paper':>8}")
    def cell(x: float | None, width: int) -> str:
        return f"{x:>{width}.4f}" if x is not None else f"{'-':>{width}}"

    for name, row in t.items():
        paper_delta = None if row["paper_params_m"] is None else \
            row["paper_params_m"] - PAPER_TABLE2["resnet18"]["params_m"]
        print(f"{name:<13} {row['params_m']:>9.4f} {cell(row['paper_params_m'], 9)} "
              f"{row['params_m'] - t['resnet18']['params_m']:>10.4f} {cell(paper_delta, 9)} "
              f"{row['gflops']:>8.4f} {cell(row['paper_gflops'], 8)}")
    for note in NOTES:
        print("-", note)
    if args.out:
        write_json(args.out, result, sort_keys=False)
    return result


if __name__ == "__main__":
    main()
