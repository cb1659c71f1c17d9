"""Non-visual building blocks: per-field embeddings, ReLU-MLPs, the cross network and the
modified DCN of the paper (eq. 3-6).

The DCN's forward is defined once, in ``DCNLayers.__call__``, over callables for its parts: the
model's own modules in training (``DCN.forward``), or a folded copy of them for inference
(``DCN.folded``: each Linear's weight pre-transposed for ``addmm`` into a reused buffer, the MLPs in
a chosen dtype, the cross net and the output layer in float32). The cross formula is likewise
defined once, in ``cross_net``, for ``CrossNet`` and its folded copy.
"""

from __future__ import annotations

import functools
import threading
from typing import Callable, Iterable, NamedTuple

import torch
from torch import nn

from core.config import ModelConfig
from features.spec import FeatureSpec


class FieldEmbedding(nn.Module):
    """One embedding table per field, concatenated into ``x_nv``.

    Batch format (built by ``models.batching``):
      single:  LongTensor (B, n_single), columns in ``self.single_names`` order (sorted names,
               so the layout does not depend on the order a FeatureSpec lists its fields);
      multi_values[name]:  LongTensor (N_f,), the ids of all B lists of field ``name`` back to back;
      multi_offsets[name]: LongTensor (B,), start of each example's list in ``multi_values``.
    Multi-valued fields are mean-pooled with ``nn.EmbeddingBag``; an empty list pools to zeros.
    Id 0 is the OOV id and has a learned embedding like any other id.
    """

    def __init__(self, spec: FeatureSpec, dim: int) -> None:
        super().__init__()
        if not spec.single and not spec.multi:
            raise ValueError("feature spec has no fields; the model needs at least one")
        self.single_names = tuple(sorted(spec.single))
        self.multi_names = tuple(sorted(spec.multi))
        self.dim = dim
        self.single = nn.ModuleDict({n: nn.Embedding(spec.single[n], dim) for n in self.single_names})
        self.multi = nn.ModuleDict({n: nn.EmbeddingBag(spec.multi[n], dim, mode="mean")
                                    for n in self.multi_names})
        for table in [*self.single.values(), *self.multi.values()]:
            nn.init.normal_(table.weight, std=0.01)

    @property
    def out_dim(self) -> int:
        return (len(self.single_names) + len(self.multi_names)) * self.dim

    def forward(self, single: torch.Tensor, multi_values: dict[str, torch.Tensor],
                multi_offsets: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = [self.single[n](single[:, i]) for i, n in enumerate(self.single_names)]  # each (B, d_e)
        parts += [self.multi[n](multi_values[n], multi_offsets[n]) for n in self.multi_names]  # each (B, d_e)
        return torch.cat(parts, dim=1)  # (B, n_fields * d_e)


def _joined(parts: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The concatenation (B, sum in_i) of input parts (B, in_i)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


class FoldedLinear:
    """One Linear (optionally followed by in-place ReLU) with its weight laid out once for inference.

    Called with the parts of its input (B, in_i) whose concatenation is the Linear's input: one
    pre-transposed weight block (in_i, out) per part, ``addmm`` of each part into a reused output
    buffer, so the parts are never concatenated. Runs in ``dtype`` (inputs cast to it, output in
    it). Weights are copied: later changes to the Linear are not seen.
    """

    def __init__(self, linear: nn.Linear, relu: bool, dtype: torch.dtype, part_dims: tuple[int, ...] = ()) -> None:
        weight = linear.weight.detach()  # (out, in)
        part_dims = part_dims or (weight.shape[1],)
        if sum(part_dims) != weight.shape[1]:
            raise ValueError(f"input parts {part_dims} do not add up to the layer's {weight.shape[1]} inputs")
        self.relu = relu
        self.out_features = weight.shape[0]
        self.n_parts = len(part_dims)
        self._buffers = threading.local()  # per thread: {(batch, dtype): output buffer}
        self.weight_t_parts = [w.t().contiguous().to(dtype) for w in torch.split(weight, part_dims, dim=1)]  # each (in_i, out)
        self.bias = linear.bias.detach().to(dtype, copy=True)  # (out,), a copy: later module changes are not seen

    def __call__(self, *parts: torch.Tensor) -> torch.Tensor:
        if len(parts) != self.n_parts:
            raise ValueError(f"this layer takes its input in {self.n_parts} part(s), got {len(parts)}")
        dtype = self.bias.dtype
        first, *rest = zip(parts, self.weight_t_parts)
        # Into a reused per-thread buffer, the input parts multiplied one by one (no concatenation):
        # no (B, out) or (B, in) allocation per call.
        y = torch.addmm(self.bias, first[0].to(dtype), first[1], out=self._output(first[0].shape[0], dtype))
        for x, w in rest:
            y.addmm_(x.to(dtype), w)  # (B, out) += part_i @ W_i
        return y.relu_() if self.relu else y

    def _output(self, batch: int, dtype: torch.dtype) -> torch.Tensor:
        """This thread's (batch, out) output buffer; valid until this layer's next call in the thread."""
        cache = getattr(self._buffers, "by_shape", None)
        if cache is None:
            cache = self._buffers.by_shape = {}
        buf = cache.get((batch, dtype))
        if buf is None:
            if len(cache) >= 8:  # a few batch sizes stay cached, not every size ever seen
                cache.clear()
            buf = cache[(batch, dtype)] = torch.empty(batch, self.out_features, dtype=dtype)
        return buf


class FoldedMLP:
    """An ``MLP`` as ``FoldedLinear`` layers: called like ``MLP.forward`` with its input in parts, the
    first layer reading them as separate weight blocks; without layers, the parts' concatenation."""

    def __init__(self, layers: list[FoldedLinear]) -> None:
        self.layers = layers

    def __call__(self, *parts: torch.Tensor) -> torch.Tensor:
        if not self.layers:
            return _joined(parts)
        first, *rest = self.layers
        h = first(*parts)  # (B, dims[0])
        for layer in rest:
            h = layer(h)  # (B, dims[i])
        return h


class MLP(nn.Sequential):
    """Linear + ReLU for every width in ``dims`` (a ReLU-MLP as in the paper); called with its input
    in one or more parts (B, in_i) that it concatenates."""

    def __init__(self, in_dim: int, dims: tuple[int, ...]) -> None:
        layers: list[nn.Module] = []
        for d in dims:
            layers += [nn.Linear(in_dim, d), nn.ReLU(inplace=True)]
            in_dim = d
        super().__init__(*layers)
        self.out_dim = in_dim

    def forward(self, *parts: torch.Tensor) -> torch.Tensor:
        return super().forward(_joined(parts))  # (B, out_dim)

    def folded(self, dtype: torch.dtype, part_dims: tuple[int, ...] = ()) -> FoldedMLP:
        """This MLP's Linears as ``FoldedLinear`` in ``dtype``; the first reads its input in parts of
        ``part_dims`` (one part when empty)."""
        linears = [m for m in self if isinstance(m, nn.Linear)]
        return FoldedMLP([FoldedLinear(m, True, dtype, part_dims if i == 0 else ()) for i, m in enumerate(linears)])


def cross_net(z0: torch.Tensor, weights: Iterable[torch.Tensor], biases: Iterable[torch.Tensor]) -> torch.Tensor:
    """The cross network on z0 (B, D): ``z_{l+1} = z0 * (z_l^T w_l) + b_l + z_l`` for each (w_l, b_l)."""
    z = z0  # (B, D)
    for w, b in zip(weights, biases):
        z = z0 * (z @ w).unsqueeze(1) + b + z  # (B, 1) scalar per row broadcast over D
    return z


class CrossNet(nn.Module):
    """DCN cross network: ``z_{l+1} = z0 * (z_l^T w_l) + b_l + z_l`` (vector weights, eq. 5)."""

    def __init__(self, dim: int, n_layers: int) -> None:
        super().__init__()
        self.weights = nn.ParameterList([nn.Parameter(torch.randn(dim) / dim ** 0.5) for _ in range(n_layers)])
        self.biases = nn.ParameterList([nn.Parameter(torch.zeros(dim)) for _ in range(n_layers)])

    def forward(self, z0: torch.Tensor) -> torch.Tensor:
        return cross_net(z0, self.weights, self.biases)  # (B, D)

    def folded(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """``cross_net`` over float32 copies of this net's weights (later changes are not seen)."""
        return functools.partial(cross_net, weights=[w.detach().float().clone() for w in self.weights],
                                 biases=[b.detach().float().clone() for b in self.biases])


class DCNLayers(NamedTuple):
    """The parts of a DCN as callables, and the DCN forward over them (eq. 3-6).

    The MLPs and the output layer take their input in parts (B, in_i), the tensors whose
    concatenation is their input: ``deep`` reads [x_v, h], ``head`` reads [h, z].
    """

    visual_dim: int
    nv_mlp: Callable[..., torch.Tensor]
    deep: Callable[..., torch.Tensor]
    cross: Callable[[torch.Tensor], torch.Tensor]
    head: Callable[..., torch.Tensor]
    out: Callable[..., torch.Tensor]

    def __call__(self, x_nv: torch.Tensor, x_v: torch.Tensor | None) -> torch.Tensor:
        """Logits (B,) from x_nv (B, D_nv) and x_v (B, visual_dim), or None without a visual input."""
        h = self.nv_mlp(x_nv)  # (B, deep_dims[0])
        if self.visual_dim:
            if x_v is None:
                raise ValueError("this DCN was built with a visual input; x_v is required")
            h = self.deep(x_v, h)  # (B, deep_dims[-1]) from [x_v, h] (B, visual_dim + deep_dims[0])
        else:
            h = self.deep(h)  # (B, deep_dims[-1])
        z = self.cross(x_nv)  # (B, D_nv)
        return self.out(self.head(h, z)).squeeze(1)  # (B,), the head reading [h, z] (B, deep_dims[-1] + D_nv)


class DCN(nn.Module):
    """The paper's modified DCN (eq. 3-6).

    h1 = [x_v, ReLU-MLP(x_nv) -> deep_dims[0]], h_{i+1} = ReLU-MLP(h_i) -> deep_dims[i];
    z = CrossNet(x_nv); logit = Linear(ReLU-MLP([h_last, z] -> head_dims)) -> 1.
    Without a visual input (variant "dcn") h1 is just ReLU-MLP(x_nv).
    """

    def __init__(self, nv_dim: int, visual_dim: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.visual_dim = visual_dim
        self.nv_dim = nv_dim
        self.nv_mlp = MLP(nv_dim, cfg.deep_dims[:1])
        self.deep = MLP(cfg.deep_dims[0] + visual_dim, tuple(cfg.deep_dims[1:]))
        self.cross = CrossNet(nv_dim, cfg.cross_layers)
        self.head = MLP(self.deep.out_dim + nv_dim, tuple(cfg.head_dims))
        self.out = nn.Linear(self.head.out_dim, 1)

    def forward(self, x_nv: torch.Tensor, x_v: torch.Tensor | None) -> torch.Tensor:
        """Logits (B,) from x_nv (B, D_nv) and x_v (B, visual_dim) or None."""
        return DCNLayers(self.visual_dim, self.nv_mlp, self.deep, self.cross, self.head, self.out)(x_nv, x_v)

    def folded(self, mlp_dtype: torch.dtype) -> DCNLayers:
        """This DCN laid out for inference from copies of its weights: the MLPs' Linears as
        ``FoldedLinear`` in ``mlp_dtype`` (each MLP's first layer reading its input parts as
        separate weight blocks), the cross net and the output layer in float32. Call it under
        ``torch.inference_mode()``; its output is a view of the output layer's reused buffer."""
        deep_parts = (self.visual_dim, self.nv_mlp.out_dim) if self.visual_dim else ()
        return DCNLayers(self.visual_dim, self.nv_mlp.folded(mlp_dtype), self.deep.folded(mlp_dtype, deep_parts),
                         self.cross.folded(), self.head.folded(mlp_dtype, (self.deep.out_dim, self.nv_dim)),
                         FoldedLinear(self.out, False, torch.float32))
