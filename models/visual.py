"""The visual tower: a backbone (ResNet18 or a light CNN) whose last L' conv layers
each get an attention plug-in (models.attention), global average pooling and a linear
projection to the visual embedding x_v.

Every attentive conv is ``conv -> BatchNorm -> attention(feat, category)``; the stem conv
(conv1) never gets attention. ResNet18 has 16 such convs (2 per BasicBlock; the 1x1 downsample
convs of the shortcuts are not counted, as in the paper's "16 conv layers"); the light
backbone has 4.

ResNet18 is built here (He et al. 2016, the 18-layer ImageNet layout) with the parameter names,
shapes and initialisation of torchvision's ``resnet18(weights=None)``, so models saved by earlier
versions load unchanged; tests/models/test_modules.py checks both against torchvision. Importing
torchvision costs about 4 s more than torch alone (its ops import torch._dynamo), which every
stage that loads a model paid for two layers it used.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from core.config import ConfigError, ModelConfig
from models.attention import make_attention

AttentionFactory = Callable[[int], nn.Module]  # channels -> attention module

RESNET18_ATTENTIVE_CONVS = 16
# (out_channels, stride) of the light backbone: a stem, then 4 attentive convs (64x64 -> 8x8).
LIGHT_STEM = (32, 2)
LIGHT_CONVS = ((32, 1), (64, 2), (64, 1), (128, 2))


def _check_attention_layers(n: int, available: int, backbone: str) -> None:
    if not 0 <= n <= available:
        raise ConfigError(f"bad value for 'model.attention_layers': {n}; allowed: 0..{available} "
                          f"for backbone {backbone!r} (attention goes on its last L' conv layers, never conv1)")


# (out_channels, stride of the first block) of ResNet18's four stages, two BasicBlocks each.
RESNET18_STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)


class AttentiveBasicBlock(nn.Module):
    """ResNet's BasicBlock (two 3x3 convs and a shortcut) with an attention plug-in after each
    conv's BatchNorm; the shortcut is a 1x1 conv + BatchNorm where the shape changes."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, att1: nn.Module, att2: nn.Module) -> None:
        super().__init__()
        self.conv1, self.bn1, self.att1 = _conv3x3(in_ch, out_ch, stride), nn.BatchNorm2d(out_ch), att1
        self.conv2, self.bn2, self.att2 = _conv3x3(out_ch, out_ch), nn.BatchNorm2d(out_ch), att2
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.att1(self.bn1(self.conv1(x)), category))
        out = self.att2(self.bn2(self.conv2(out)), category)
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class ResNet18Backbone(nn.Module):
    """ResNet18 without its classifier: stem (7x7 conv, BatchNorm, ReLU, max pool) and 8 BasicBlocks."""

    out_channels = 512

    def __init__(self, attention: AttentionFactory, attention_layers: int) -> None:
        super().__init__()
        _check_attention_layers(attention_layers, RESNET18_ATTENTIVE_CONVS, "resnet18")
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1))
        blocks, in_ch = [], 64
        for out_ch, stride in RESNET18_STAGES:
            for s in (stride, 1):
                blocks.append(AttentiveBasicBlock(in_ch, out_ch, s, nn.Identity(), nn.Identity()))
                in_ch = out_ch
        self.blocks = nn.ModuleList(blocks)
        for m in self.modules():  # torchvision's initialisation of resnet18(weights=None)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        first = RESNET18_ATTENTIVE_CONVS - attention_layers  # index of the first attentive conv
        for i, block in enumerate(self.blocks):  # attention modules keep their own initialisation
            for j, name in enumerate(("att1", "att2")):
                channels = block.conv1.out_channels
                setattr(block, name, attention(channels) if 2 * i + j >= first else make_attention("none", channels))

    def forward(self, x: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (N, 64, H/4, W/4)
        for block in self.blocks:
            x = block(x, category)
        return x  # (N, 512, H/32, W/32)


class ConvBNAttention(nn.Module):
    """conv3x3 -> BatchNorm -> attention -> ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, attention: nn.Module) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.att = attention

    def forward(self, x: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        return F.relu(self.att(self.bn(self.conv(x)), category))


class LightBackbone(nn.Module):
    """A 5-conv CNN for small images on CPU (stem + 4 attentive convs, /8 resolution)."""

    out_channels = LIGHT_CONVS[-1][0]

    def __init__(self, attention: AttentionFactory, attention_layers: int) -> None:
        super().__init__()
        _check_attention_layers(attention_layers, len(LIGHT_CONVS), "light")
        stem_ch, stem_stride = LIGHT_STEM
        self.stem = nn.Sequential(nn.Conv2d(3, stem_ch, 3, stride=stem_stride, padding=1, bias=False),
                                  nn.BatchNorm2d(stem_ch), nn.ReLU(inplace=True))
        first = len(LIGHT_CONVS) - attention_layers
        layers, in_ch = [], stem_ch
        for i, (out_ch, stride) in enumerate(LIGHT_CONVS):
            att = attention(out_ch) if i >= first else make_attention("none", out_ch)
            layers.append(ConvBNAttention(in_ch, out_ch, stride, att))
            in_ch = out_ch
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (N, 32, H/2, W/2)
        for layer in self.layers:
            x = layer(x, category)
        return x  # (N, 128, H/8, W/8)


class VisualTower(nn.Module):
    """images (N, 3, H, W) float + category (N,) long -> x_v (N, visual_dim)."""

    def __init__(self, backbone: nn.Module, visual_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.proj = nn.Linear(backbone.out_channels, visual_dim)
        self.backbone_frozen = False

    def features(self, images: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        """Globally pooled backbone features (N, C)."""
        return self.backbone(images, category).mean(dim=(2, 3))  # (N, C)

    def forward(self, images: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        return self.proj(self.features(images, category))  # (N, visual_dim)

    def freeze_backbone(self) -> None:
        """Fix the backbone (variant cnn_fixed): no gradients, BatchNorm in eval mode for good.

        The projection to x_v stays trainable."""
        self.backbone_frozen = True
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.backbone.eval()

    def train(self, mode: bool = True) -> "VisualTower":
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        return self


def attention_kind(variant: str) -> str:
    """The attention plug-in of a Table 8 variant."""
    return {"cbam": "cbam", "cscnn": "cscnn"}.get(variant, "none")


def build_visual_tower(cfg: ModelConfig, n_categories: int, attention: str | None = None,
                       n_parents: int = 0, field_sizes: dict[str, int] | None = None) -> VisualTower:
    """The tower for ``cfg`` (backbone, attention of cfg.variant unless ``attention`` is given).

    ``n_parents``: the parent-category vocabulary of hierarchical CSCNN priors (used when
    cfg.prior_hierarchy is "parent"); ``field_sizes``: the vocabulary of each item field of
    cfg.prior_fields beyond the category (e.g. {"brand": 500}). With either, the tower takes (N, K)
    id rows (see models.attention.CSCNNAttention) instead of (N,) category ids."""
    kind = attention_kind(cfg.variant) if attention is None else attention
    parents = n_parents if cfg.prior_hierarchy == "parent" else 0
    if kind == "cscnn" and cfg.prior_hierarchy == "parent" and n_parents < 1:
        raise ValueError("model.prior_hierarchy 'parent' needs the parent-category vocabulary size (n_parents >= 1)")
    extra = cfg.extra_prior_fields
    sizes = dict(field_sizes or {})
    if kind == "cscnn" and any(sizes.get(f, 0) < 1 for f in extra):
        raise ValueError(f"model.prior_fields {list(cfg.prior_fields)} needs the vocabulary size of "
                         f"{', '.join(extra)}; got {sizes}")
    fields = {f: sizes[f] for f in extra} if kind == "cscnn" else {}

    def factory(channels: int) -> nn.Module:
        return make_attention(kind, channels, n_categories=n_categories, prior_channels=cfg.prior_channels,
                              prior_spatial=cfg.prior_spatial, reduction=cfg.reduction, n_parents=parents,
                              fields=fields)

    layers = cfg.attention_layers if kind != "none" else 0
    backbone_cls = {"resnet18": ResNet18Backbone, "light": LightBackbone}[cfg.backbone]
    return VisualTower(backbone_cls(factory, layers), cfg.visual_dim)
