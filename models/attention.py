"""Attention plug-ins for conv feature maps, all with one signature so that
"none / CBAM / CSCNN" is a config value:

    forward(feat: (B, C, H, W), category: (B,) long) -> (B, C, H, W)

(CSCNN with hierarchical or further-field priors takes (B, K) id rows instead; see CSCNNAttention.)

Choices pinned here (public CBAM references disagree on them):
  * channel branch: avg- and max-pooled vectors go through ONE shared 2-layer MLP
    C(+C') -> C/r -> C with ReLU and NO biases (the paper's parameter count 2*C*C/r per layer
    for CBAM assumes bias-free layers); the two outputs are summed, then a sigmoid;
  * spatial branch: channel-wise [max, mean] (in that order, as eq. 11 and CBAM's ChannelPool),
    then for CSCNN the resized spatial prior as a third map, one 7x7 conv (padding 3) with a bias
    and NO BatchNorm: BatchNorm there makes the gate depend on the batch composition, which
    grouped batches skew (ARCHITECTURE.md, "Training"); the bias takes the role of BN's shift;
  * channel attention first, then spatial attention on the channel-refined map (eq. 8-9);
  * max pooling via ``max(...).values`` (index-based backward: a tie sends the gradient to one
    element) rather than ``amax`` (mask-based backward, measurably slower on CPU);
  * the spatial branch's 7x7 conv reads its few-channel input in channels-last layout: the same
    convolution, but oneDNN's channels-last kernels ran it forward + backward 1.1-2.7x faster on
    CPU than the NCHW ones for 2-3 input channels and one output channel (2.7x on 16x16 maps,
    where it was the attention's largest single cost).
The work on the full (B, C, H, W) map is two autograd Functions with hand-written backward
passes (``_ChannelPool``, ``_GatedMaps``): element-wise work on the full map is memory-bound, and
autograd's generic backward of the same expressions makes about twice the full-size passes
(zero-filled buffers for the two max reductions, the products x*m and (x*m)*s saved and re-read,
a full-size sum per reduction). They compute exactly the expressions of ``reference_forward``
(the readable form, kept for the tests), summation order aside.

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


class _ChannelPool(torch.autograd.Function):
    """x (B, C, H, W) -> (2, B, C): each channel's spatial mean and max (the channel branch's input).

    Backward writes the full-size gradient once (the mean's share broadcast, then the max's share
    added at the arg-max positions) instead of autograd's broadcast + zero-filled scatter + sum."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(2)  # (B, C, HW)
        mx, idx = flat.max(dim=2)
        ctx.save_for_backward(idx)
        ctx.shape = x.shape
        return torch.stack([flat.mean(dim=2), mx])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        (idx,) = ctx.saved_tensors
        b, c, h, w = ctx.shape
        gx = (g[0] / (h * w)).unsqueeze(2).expand(b, c, h * w).contiguous()
        gx.scatter_add_(2, idx.unsqueeze(2), g[1].unsqueeze(2))
        return gx.view(b, c, h, w)


class _GatedMaps(torch.autograd.Function):
    """y = r * sigmoid(conv([max_c r, mean_c r, extra])) with r = x * m (channel gate applied),
    i.e. the channel refinement and the whole spatial branch of CBAM / CSCNN in one node.

    x (B, C, H, W), m (B, C) channel gate, extra (B, k, H, W) or None (CSCNN's resized spatial
    prior), weight (1, 2 + k, K, K) and bias (1,) of ``conv``, the spatial conv module (called in
    forward, so its forward hooks see the pre-sigmoid logit map, as spark_jobs.report_inputs uses).
    Saves x, m and small maps only (not r, not y); backward makes one full-size product gy * x,
    reduces it with two batched matmuls to the gradients of the spatial gate and of m, and writes
    dL/dx in one pass plus a scatter for the channel max. Runs autocast-free: the full-size work in
    x's dtype (half under CUDA AMP), the small spatial conv in its weight's dtype."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, m: torch.Tensor, extra: torch.Tensor | None, weight: torch.Tensor,
                bias: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
        dt = x.dtype
        if conv.weight is not weight or conv.bias is not bias or conv.stride != (1, 1) or conv.groups != 1 \
                or conv.padding != (weight.shape[-1] // 2,) * 2 or conv.dilation != (1, 1) \
                or conv.padding_mode != "zeros":
            raise ValueError("conv must be the stride-1, 'same'-padded conv whose weight and bias are given")
        ctx.dtypes = (m.dtype, None if extra is None else extra.dtype)
        with torch.autocast(x.device.type, enabled=False):
            m = m.to(dt)
            r = x * m[:, :, None, None]  # (B, C, H, W)
            mx, idx = r.max(dim=1, keepdim=True)  # (B, 1, H, W)
            parts = [mx, r.mean(dim=1, keepdim=True)] + ([] if extra is None else [extra.to(dt)])
            maps = torch.cat(parts, dim=1).to(weight.dtype).contiguous(memory_format=torch.channels_last)
            s = torch.sigmoid(conv(maps))  # (B, 1, H, W), weight's dtype
            y = r.mul_(s)
        ctx.save_for_backward(x, m, idx, maps, s, weight)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy: torch.Tensor):
        x, m, idx, maps, s, weight = ctx.saved_tensors
        b, c, h, w = x.shape
        hw = h * w
        dt = x.dtype
        gy = gy.to(dt).contiguous()
        s3 = s.reshape(b, 1, hw)
        s3_x = s3.to(dt)
        t = (gy * x).view(b, c, hw)  # the one full-size product
        gs = torch.bmm(m.unsqueeze(1), t).to(s.dtype)  # (B, 1, HW): dL/ds = sum_c gy * x * m
        gm = torch.bmm(t, s3_x.transpose(1, 2)).squeeze(2)  # (B, C): the direct share sum_hw gy * s * x
        gz = (gs * s3 * (1 - s3)).view(b, 1, h, w).contiguous(memory_format=torch.channels_last)
        pad = weight.shape[-1] // 2
        gmaps, gw, gb = torch.ops.aten.convolution_backward(
            gz, maps, weight, [weight.shape[0]], [1, 1], [pad, pad], [1, 1], False, [0, 0], 1, [True, True, True])
        gmaps = gmaps.to(dt)
        gmx = gmaps[:, 0].reshape(b, 1, hw)
        gmn = gmaps[:, 1].reshape(b, hw, 1) / c
        # dL/dr = gy * s + mean's share (broadcast over C) + max's share (at the arg-max channel)
        gr = torch.addcmul(gmn.view(b, 1, h, w), gy, s3_x.view(b, 1, h, w)).contiguous()
        idx3 = idx.view(b, 1, hw)
        gr.view(b, c, hw).scatter_add_(1, idx3, gmx)
        x3 = x.view(b, c, hw)
        gm += torch.bmm(x3, gmn).squeeze(2)  # mean's share of dL/dm
        gm.scatter_add_(1, idx3.squeeze(1), (x3.gather(1, idx3) * gmx).squeeze(1))  # max's share
        gx = gr.mul_(m[:, :, None, None])
        m_dt, extra_dt = ctx.dtypes
        gextra = None if extra_dt is None else gmaps[:, 2:].to(extra_dt)
        return gx, gm.to(m_dt), gextra, gw, gb, None


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
        feat = feat.contiguous()
        m_c = torch.sigmoid(self.mlp(_ChannelPool.apply(feat)).sum(dim=0))  # (B, C); pooled (2, B, C): avg, max
        return _GatedMaps.apply(feat, m_c, None, self.spatial.weight, self.spatial.bias, self.spatial)

    def reference_forward(self, feat: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        """forward() written with plain autograd ops (the specification of the fused path)."""
        pooled = torch.stack([feat.mean(dim=(2, 3)), feat.flatten(2).max(dim=2).values])  # (2, B, C): avg, max
        m_c = torch.sigmoid(self.mlp(pooled).sum(dim=0))  # (B, C)
        feat = feat * m_c[:, :, None, None]  # (B, C, H, W)
        maps = torch.cat([feat.max(dim=1, keepdim=True).values, feat.mean(dim=1, keepdim=True)], dim=1)  # (B, 2, H, W)
        return feat * _spatial_gate(self.spatial, maps)  # (B, 1, H, W) gate broadcast over C


def _zero_embedding(n: int, dim: int) -> nn.Embedding:
    """An (n, dim) embedding table of zeros, made without drawing from the global RNG."""
    return nn.Embedding(n, dim, _weight=torch.zeros(n, dim))


def _side_generator() -> torch.Generator:
    """A CPU generator seeded from the global RNG's state without advancing it."""
    with torch.random.fork_rng(devices=[]):
        seed = int(torch.randint(0, 2 ** 62, (1,)))
    return torch.Generator().manual_seed(seed ^ 0x5EED_F1E1D)


def _widened(layer: nn.Linear | nn.Conv2d, extra: int) -> nn.Linear | nn.Conv2d:
    """``layer`` with ``extra`` more inputs (Linear features, Conv2d channels) appended: its own
    weights (and bias) kept, the new input weights drawn like PyTorch's default init for the
    wider layer (uniform +-1/sqrt(fan_in)) from _side_generator."""
    if isinstance(layer, nn.Linear):
        wide = nn.utils.skip_init(nn.Linear, layer.in_features + extra, layer.out_features, bias=layer.bias is not None)
    else:
        wide = nn.utils.skip_init(nn.Conv2d, layer.in_channels + extra, layer.out_channels, layer.kernel_size,
                                  stride=layer.stride, padding=layer.padding, bias=layer.bias is not None)
    fan_in = wide.weight[0].numel()
    n_old = layer.weight.shape[1]
    with torch.no_grad():
        wide.weight[:, :n_old] = layer.weight
        new = torch.empty_like(wide.weight[:, n_old:]).uniform_(-fan_in ** -0.5, fan_in ** -0.5,
                                                                 generator=_side_generator())
        wide.weight[:, n_old:] = new
        if layer.bias is not None:
            wide.bias.copy_(layer.bias)
    return wide


class CSCNNAttention(nn.Module):
    """Category-Specific CNN attention (paper eq. 8-11) for one conv layer.

    Holds this layer's category priors: A_c (K, C') and A'_s (K, H'*W'), zero-initialised
    (zero priors start the module as CBAM with extra zero inputs; they train fine, ARCHITECTURE.md "Training").
    Priors are gathered per image with an embedding lookup and the spatial ones resized to the
    map's H x W in ONE bilinear call per forward for the whole batch: the cost is that of the
    batch's images (at most the batch's unique ads in grouped mode), never of all K categories.

    With ``n_parents`` > 0 (model.prior_hierarchy "parent") the priors are hierarchical: the
    module also holds parent priors (P, C') and (P, H'*W'), and an image's category prior is its
    parent's prior plus its category's own offset. Both start at zero, so a category no training
    row reached keeps a zero offset: its prior is its parent's, learned from its siblings.

    ``fields`` (model.prior_fields beyond the category: name -> vocabulary size, e.g. {"brand":
    500}) gives each such item field its own priors (N_f, C') and (N_f, H'*W'). They are
    concatenated with the category's, not added: the channel MLP reads C + C' * (1 + F) inputs and
    the spatial conv 2 + 1 + F maps, so a brand's cue (a logo somewhere) and its category's (a
    product look elsewhere) keep separate maps and weights instead of blurring into one.

    ``keys`` is (B,) category ids for plain CSCNN, else (B, K) rows: the category id, then the
    parent category id (hierarchical), then one id per extra field in ``fields`` order.
    """

    def __init__(self, channels: int, n_categories: int, prior_channels: int, prior_spatial: int,
                 reduction: int, kernel_size: int = 7, n_parents: int = 0,
                 fields: dict[str, int] | None = None) -> None:
        super().__init__()
        if n_categories < 1:
            raise ValueError(f"CSCNN needs n_categories >= 1, got {n_categories}")
        if n_parents < 0:
            raise ValueError(f"CSCNN needs n_parents >= 0 (0: flat priors), got {n_parents}")
        fields = dict(fields or {})
        bad = {k: v for k, v in fields.items() if v < 1}
        if bad:
            raise ValueError(f"CSCNN prior fields need vocabulary sizes >= 1, got {bad}")
        self.prior_spatial = prior_spatial
        self.n_parents = n_parents
        self.fields = tuple(fields)
        self.channel_prior = nn.Embedding(n_categories, prior_channels)
        self.spatial_prior = nn.Embedding(n_categories, prior_spatial * prior_spatial)
        for table in (self.channel_prior, self.spatial_prior):
            nn.init.zeros_(table.weight)
        # The options' tables and weights never draw from the global RNG (zeros, or the side
        # generator below): a model with an option starts with every other weight exactly as
        # the model without it, so a paired comparison measures the option, not another init.
        p2 = prior_spatial * prior_spatial
        if n_parents:
            self.parent_channel_prior = _zero_embedding(n_parents, prior_channels)
            self.parent_spatial_prior = _zero_embedding(n_parents, p2)
        self.field_channel_prior = nn.ModuleDict({k: _zero_embedding(n, prior_channels) for k, n in fields.items()})
        self.field_spatial_prior = nn.ModuleDict({k: _zero_embedding(n, p2) for k, n in fields.items()})
        self.mlp = _shared_mlp(channels + prior_channels, channels, reduction)
        self.spatial = nn.Conv2d(3, 1, kernel_size, padding=kernel_size // 2, bias=True)
        if fields:
            self.mlp[0] = _widened(self.mlp[0], prior_channels * len(fields))
            self.spatial = _widened(self.spatial, len(fields))

    @property
    def key_width(self) -> int:
        """Columns of ``keys``: 0 for (B,) category ids, else category + parent + one per field."""
        width = 1 + (1 if self.n_parents else 0) + len(self.fields)
        return 0 if width == 1 else width

    def priors(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The images' channel priors (B, C' * (1 + F)) and flat spatial priors (B, 1 + F, H'*W')."""
        if not self.key_width:
            return self.channel_prior(keys), self.spatial_prior(keys).unsqueeze(1)
        cat = keys[:, 0]
        a_c, a_s = self.channel_prior(cat), self.spatial_prior(cat)
        col = 1
        if self.n_parents:
            parent = keys[:, 1]
            a_c, a_s = a_c + self.parent_channel_prior(parent), a_s + self.parent_spatial_prior(parent)
            col = 2
        channel, spatial = [a_c], [a_s]
        for i, name in enumerate(self.fields):
            ids = keys[:, col + i]
            channel.append(self.field_channel_prior[name](ids))
            spatial.append(self.field_spatial_prior[name](ids))
        return torch.cat(channel, dim=1), torch.stack(spatial, dim=1)

    def _spatial_prior(self, a_s: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
        """The batch's flat spatial priors (B, M, H'*W') resized to the map: (B, M, H, W), one bilinear call."""
        p = self.prior_spatial
        return F.interpolate(a_s.view(b, a_s.shape[1], p, p), size=(h, w), mode="bilinear", align_corners=False)

    def _check(self, feat: torch.Tensor, keys: torch.Tensor) -> None:
        want = (feat.shape[0], self.key_width) if self.key_width else (feat.shape[0],)
        if keys.shape != want:
            what = ", ".join(["category"] + (["parent category"] if self.n_parents else []) + list(self.fields))
            kind = f"({what}) id rows" if self.key_width else "category ids"
            raise ValueError(f"category must be {kind} of shape {want}, got {tuple(keys.shape)}")

    def forward(self, feat: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        self._check(feat, category)
        feat = feat.contiguous()
        b, c, h, w = feat.shape
        pooled = _ChannelPool.apply(feat)  # (2, B, C): avg, max
        a_c, a_s = self.priors(category)  # (B, C' * M), (B, M, H'*W')
        mlp_in = torch.cat([pooled, a_c.unsqueeze(0).expand(2, -1, -1)], dim=2)  # (2, B, C + C' * M)
        m_c = torch.sigmoid(self.mlp(mlp_in).sum(dim=0))  # (B, C)
        a_s = self._spatial_prior(a_s, b, h, w)
        return _GatedMaps.apply(feat, m_c, a_s, self.spatial.weight, self.spatial.bias, self.spatial)

    def reference_forward(self, feat: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        """forward() written with plain autograd ops (the specification of the fused path)."""
        self._check(feat, category)
        b, c, h, w = feat.shape
        a_c, a_s = self.priors(category)  # (B, C' * M), (B, M, H'*W')
        pooled = torch.stack([feat.mean(dim=(2, 3)), feat.flatten(2).max(dim=2).values])  # (2, B, C): avg, max
        mlp_in = torch.cat([pooled, a_c.unsqueeze(0).expand(2, -1, -1)], dim=2)  # (2, B, C + C' * M)
        m_c = torch.sigmoid(self.mlp(mlp_in).sum(dim=0))  # (B, C)
        feat = feat * m_c[:, :, None, None]  # (B, C, H, W)
        a_s = self._spatial_prior(a_s, b, h, w)  # (B, M, H, W)
        maps = torch.cat([feat.max(dim=1, keepdim=True).values, feat.mean(dim=1, keepdim=True), a_s], dim=1)  # (B, 2 + M, H, W)
        return feat * _spatial_gate(self.spatial, maps)  # (B, 1, H, W) gate broadcast over C


def make_attention(kind: str, channels: int, *, n_categories: int = 0, prior_channels: int = 20,
                   prior_spatial: int = 7, reduction: int = 4, n_parents: int = 0,
                   fields: dict[str, int] | None = None) -> nn.Module:
    """The attention plug-in ``kind`` (one of ATTENTIONS) for a map with ``channels`` channels;
    ``n_parents`` > 0 gives CSCNN hierarchical (parent + own offset) priors, ``fields`` CSCNN
    priors of further item fields (name -> vocabulary size)."""
    if kind == "none":
        return NoAttention()
    if kind == "cbam":
        return CBAM(channels, reduction)
    if kind == "cscnn":
        return CSCNNAttention(channels, n_categories, prior_channels, prior_spatial, reduction, n_parents=n_parents,
                              fields=fields)
    raise ValueError(f"unknown attention {kind!r}; allowed: {', '.join(ATTENTIONS)}")
