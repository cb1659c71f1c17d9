"""The visual tower: a backbone (torchvision ResNet18 or a light CNN) whose last L' conv layers
each get an attention plug-in (models.attention), global average pooling and a linear
projection to the visual embedding x_v.

Every attentive conv is ``conv -> BatchNorm -> attention(feat, category)``; the stem conv
(conv1) never gets attention. ResNet18 has 16 such convs (2 per BasicBlock; the 1x1 downsample
convs of the shortcuts are not counted, as in the paper's "16 conv layers"); the light
backbone has 4.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18
from torchvision.models.resnet import BasicBlock

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


class AttentiveBasicBlock(nn.Module):
    """torchvision's BasicBlock with an attention plug-in after each conv's BatchNorm."""

    def __init__(self, block: BasicBlock, att1: nn.Module, att2: nn.Module) -> None:
        super().__init__()
        self.conv1, self.bn1, self.att1 = block.conv1, block.bn1, att1
        self.conv2, self.bn2, self.att2 = block.conv2, block.bn2, att2
        self.downsample = block.downsample

    def forward(self, x: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.att1(self.bn1(self.conv1(x)), category))
        out = self.att2(self.bn2(self.conv2(out)), category)
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class ResNet18Backbone(nn.Module):
    """torchvision ResNet18 (weights=None: never downloads) without its classifier."""

    out_channels = 512

    def __init__(self, attention: AttentionFactory, attention_layers: int) -> None:
        super().__init__()
        _check_attention_layers(attention_layers, RESNET18_ATTENTIVE_CONVS, "resnet18")
        net = resnet18(weights=None)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        first = RESNET18_ATTENTIVE_CONVS - attention_layers  # index of the first attentive conv

        def att(i: int, channels: int) -> nn.Module:
            return attention(channels) if i >= first else make_attention("none", channels)

        blocks = [b for layer in (net.layer1, net.layer2, net.layer3, net.layer4) for b in layer]
        self.blocks = nn.ModuleList(
            AttentiveBasicBlock(b, att(2 * i, b.conv1.out_channels), att(2 * i + 1, b.conv2.out_channels))
            for i, b in enumerate(blocks))

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


def build_visual_tower(cfg: ModelConfig, n_categories: int, attention: str | None = None) -> VisualTower:
    """The tower for ``cfg`` (backbone, attention of cfg.variant unless ``attention`` is given)."""
    kind = attention_kind(cfg.variant) if attention is None else attention

    def factory(channels: int) -> nn.Module:
        return make_attention(kind, channels, n_categories=n_categories, prior_channels=cfg.prior_channels,
                              prior_spatial=cfg.prior_spatial, reduction=cfg.reduction)

    layers = cfg.attention_layers if kind != "none" else 0
    backbone_cls = {"resnet18": ResNet18Backbone, "light": LightBackbone}[cfg.backbone]
    return VisualTower(backbone_cls(factory, layers), cfg.visual_dim)
