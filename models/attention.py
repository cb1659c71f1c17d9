"""Attention plug-ins for conv feature maps, all with one signature so that
"none / CBAM / CSCNN" is a config value:

    forward(feat: (B, C, H, W), category: (B,) long) -> (B, C, H, W)

Choices pinned here (public CBAM references disagree on them):
  * channel branch: avg- and max-pooled vectors go through ONE shared 2-layer MLP
    C(+C') -> C/r -> C with ReLU and NO biases (the paper's parameter count 2*C*C/r per layer
    for CBAM assumes bias-free layers); the two outputs are summed, then a sigmoid;
  * spatial branch: channel-wise [max, mean] (in that order, as eq. 11 and CBAM's ChannelPool),
    then for CSCNN the resized spatial prior as a third map, one 7x7 conv (padding 3) with a bias
    and NO BatchNorm: BatchNorm there makes the gate depend on the batch composition, which
    grouped batches skew (DESIGN.md "Gates"); the bias takes the role of BN's shift;
  * channel attention first, then spatial attention on the channel-refined map (eq. 8-9);
  * max pooling via ``max(...).values`` (index-based backward: a tie sends the gradient to one
    element) rather than ``amax`` (mask-based backward, measurably slower on CPU);
  * the spatial branch's 7x7 conv reads its few-channel input in channels-last layout: the same
    convolution, but oneDNN's channels-last kernels ran it forward + backward 1.1-2.7x faster on
    CPU than the NCHW ones for 2-3 input channels and one output channel (2.7x on 16x16 maps,
    where it was the attention's largest single cost).
The backbones (models.visual) apply the attention after a conv's BatchNorm so that the next
conv's BatchNorm renormalises the gated map: stacked sigmoid gates (~0.5 at init) then cannot
shrink the features layer after layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ATTENTIONS = ("none", "cbam", "cscnn")


class NoAttention(nn.Module):
    """Identity plug-in: the plain backbone."""

    def forward(self, feat: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        return feat


def _spatial_gate(conv: nn.Conv2d, maps: torch.Tensor) -> torch.Tensor:
    """sigmoid(conv(maps)) (B, 1, H, W) for the spatial branch's (B, 2 or 3, H, W) maps."""
    return torch.sigmoid(conv(maps.contiguous(memory_format=torch.channels_last)))


def _shared_mlp(in_dim: int, channels: int, reduction: int) -> nn.Sequential:
    hidden = max(1, channels // reduction)
    return nn.Sequential(nn.Linear(in_dim, hidden, bias=False), nn.ReLU(inplace=True),
                         nn.Linear(hidden, channels, bias=False))


class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al. 2018); ignores the category."""

    def __init__(self, channels: int, reduction: int, kernel_size: int = 7) -> None:
        super().__init__()
        self.mlp = _shared_mlp(channels, channels, reduction)
        self.spatial = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=True)

    def forward(self, feat: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        pooled = torch.stack([feat.mean(dim=(2, 3)), feat.flatten(2).max(dim=2).values])  # (2, B, C): avg, max
        m_c = torch.sigmoid(self.mlp(pooled).sum(dim=0))  # (B, C)
        feat = feat * m_c[:, :, None, None]  # (B, C, H, W)
        maps = torch.cat([feat.max(dim=1, keepdim=True).values, feat.mean(dim=1, keepdim=True)], dim=1)  # (B, 2, H, W)
        return feat * _spatial_gate(self.spatial, maps)  # (B, 1, H, W) gate broadcast over C


class CSCNNAttention(nn.Module):
    """Category-Specific CNN attention (paper eq. 8-11) for one conv layer.

    Holds this layer's category priors: A_c (K, C') and A'_s (K, H'*W'), zero-initialised
    (zero priors start the module as CBAM with extra zero inputs; they train fine, DESIGN.md).
    Priors are gathered per image with an embedding lookup and the spatial ones resized to the
    map's H x W in ONE bilinear call per forward for the whole batch: the cost is that of the
    batch's images (at most the batch's unique ads in grouped mode), never of all K categories.
    """

    def __init__(self, channels: int, n_categories: int, prior_channels: int, prior_spatial: int,
                 reduction: int, kernel_size: int = 7) -> None:
        super().__init__()
        if n_categories < 1:
            raise ValueError(f"CSCNN needs n_categories >= 1, got {n_categories}")
        self.prior_spatial = prior_spatial
        self.channel_prior = nn.Embedding(n_categories, prior_channels)
        self.spatial_prior = nn.Embedding(n_categories, prior_spatial * prior_spatial)
        nn.init.zeros_(self.channel_prior.weight)
        nn.init.zeros_(self.spatial_prior.weight)
        self.mlp = _shared_mlp(channels + prior_channels, channels, reduction)
        self.spatial = nn.Conv2d(3, 1, kernel_size, padding=kernel_size // 2, bias=True)

    def forward(self, feat: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        b, c, h, w = feat.shape
        if category.shape != (b,):
            raise ValueError(f"category must have shape ({b},), got {tuple(category.shape)}")
        a_c = self.channel_prior(category)  # (B, C')
        pooled = torch.stack([feat.mean(dim=(2, 3)), feat.flatten(2).max(dim=2).values])  # (2, B, C): avg, max
        mlp_in = torch.cat([pooled, a_c.unsqueeze(0).expand(2, -1, -1)], dim=2)  # (2, B, C + C')
        m_c = torch.sigmoid(self.mlp(mlp_in).sum(dim=0))  # (B, C)
        feat = feat * m_c[:, :, None, None]  # (B, C, H, W)

        p = self.prior_spatial
        a_s = self.spatial_prior(category).view(b, 1, p, p)  # (B, 1, H', W')
        a_s = F.interpolate(a_s, size=(h, w), mode="bilinear", align_corners=False)  # (B, 1, H, W)
        maps = torch.cat([feat.max(dim=1, keepdim=True).values, feat.mean(dim=1, keepdim=True), a_s], dim=1)  # (B, 3, H, W)
        return feat * _spatial_gate(self.spatial, maps)  # (B, 1, H, W) gate broadcast over C


def make_attention(kind: str, channels: int, *, n_categories: int = 0, prior_channels: int = 20,
                   prior_spatial: int = 7, reduction: int = 4) -> nn.Module:
    """The attention plug-in ``kind`` (one of ATTENTIONS) for a map with ``channels`` channels."""
    if kind == "none":
        return NoAttention()
    if kind == "cbam":
        return CBAM(channels, reduction)
    if kind == "cscnn":
        return CSCNNAttention(channels, n_categories, prior_channels, prior_spatial, reduction)
    raise ValueError(f"unknown attention {kind!r}; allowed: {', '.join(ATTENTIONS)}")
