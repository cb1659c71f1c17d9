"""Non-visual building blocks: per-field embeddings, ReLU-MLPs, the cross network and the
modified DCN of the paper (eq. 3-6)."""

from __future__ import annotations

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


class MLP(nn.Sequential):
    """Linear + ReLU for every width in ``dims`` (a ReLU-MLP as in the paper)."""

    def __init__(self, in_dim: int, dims: tuple[int, ...]) -> None:
        layers: list[nn.Module] = []
        for d in dims:
            layers += [nn.Linear(in_dim, d), nn.ReLU(inplace=True)]
            in_dim = d
        super().__init__(*layers)
        self.out_dim = in_dim


class CrossNet(nn.Module):
    """DCN cross network: ``z_{l+1} = z0 * (z_l^T w_l) + b_l + z_l`` (vector weights, eq. 5)."""

    def __init__(self, dim: int, n_layers: int) -> None:
        super().__init__()
        self.weights = nn.ParameterList([nn.Parameter(torch.randn(dim) / dim ** 0.5) for _ in range(n_layers)])
        self.biases = nn.ParameterList([nn.Parameter(torch.zeros(dim)) for _ in range(n_layers)])

    def forward(self, z0: torch.Tensor) -> torch.Tensor:
        z = z0  # (B, D)
        for w, b in zip(self.weights, self.biases):
            z = z0 * (z @ w).unsqueeze(1) + b + z  # (B, 1) scalar per row broadcast over D
        return z


class DCN(nn.Module):
    """The paper's modified DCN (eq. 3-6).

    h1 = [x_v, ReLU-MLP(x_nv) -> deep_dims[0]], h_{i+1} = ReLU-MLP(h_i) -> deep_dims[i];
    z = CrossNet(x_nv); logit = Linear(ReLU-MLP([h_last, z] -> head_dims)) -> 1.
    Without a visual input (variant "dcn") h1 is just ReLU-MLP(x_nv).
    """

    def __init__(self, nv_dim: int, visual_dim: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.visual_dim = visual_dim
        self.nv_mlp = MLP(nv_dim, cfg.deep_dims[:1])
        self.deep = MLP(cfg.deep_dims[0] + visual_dim, tuple(cfg.deep_dims[1:]))
        self.cross = CrossNet(nv_dim, cfg.cross_layers)
        self.head = MLP(self.deep.out_dim + nv_dim, tuple(cfg.head_dims))
        self.out = nn.Linear(self.head.out_dim, 1)

    def forward(self, x_nv: torch.Tensor, x_v: torch.Tensor | None) -> torch.Tensor:
        """Logits (B,) from x_nv (B, D_nv) and x_v (B, visual_dim) or None."""
        h = self.nv_mlp(x_nv)  # (B, deep_dims[0])
        if self.visual_dim:
            if x_v is None:
                raise ValueError("this DCN was built with a visual input; x_v is required")
            h = torch.cat([x_v, h], dim=1)  # (B, visual_dim + deep_dims[0])
        h = self.deep(h)  # (B, deep_dims[-1])
        z = self.cross(x_nv)  # (B, D_nv)
        return self.out(self.head(torch.cat([h, z], dim=1))).squeeze(1)  # (B,)
