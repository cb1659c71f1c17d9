"""The CTR model of one Table 8 variant: FieldEmbedding + optional VisualTower + DCN."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from core.config import PRIOR_FIELDS, ModelConfig
from features.spec import FeatureSpec
from models.batching import Batch, preprocess_images
from models.layers import DCN, FieldEmbedding
from models.visual import VisualTower, build_visual_tower


class CTRModel(nn.Module):
    """pCTR = sigmoid(forward(batch)).

    Variants (cfg.variant): dcn (no image), cnn_fixed (pretrained backbone, frozen: call
    ``tower.freeze_backbone()``), cnn_finetune (plain backbone trained end to end), cbam, cscnn.
    Images arrive as uint8 (N, H, W, 3) and are normalised here, on the model's device, by
    ``preprocess_images`` (the one preprocessing shared with inference).
    The tower embeds the batch's images once (U rows in grouped mode, B rows per impression) and
    x_v is gathered back per impression with ``batch.image_index``.
    """

    def __init__(self, spec: FeatureSpec, cfg: ModelConfig) -> None:
        super().__init__()
        if "category_id" not in spec.single and cfg.variant == "cscnn":
            raise ValueError("variant 'cscnn' needs the single field 'category_id' in the feature spec "
                             "(its vocab size is the number of category priors)")
        if cfg.variant == "cscnn" and cfg.prior_hierarchy == "parent" and "parent_category_id" not in spec.single:
            raise ValueError("model.prior_hierarchy 'parent' needs the single field 'parent_category_id' in the "
                             "feature spec (its vocab size is the number of parent priors)")
        missing = [PRIOR_FIELDS[f] for f in cfg.extra_prior_fields if PRIOR_FIELDS[f] not in spec.single]
        if cfg.variant == "cscnn" and missing:
            raise ValueError(f"model.prior_fields {list(cfg.prior_fields)} needs the single field(s) "
                             f"{', '.join(missing)} in the feature spec (their vocab sizes are the numbers of priors)")
        self.spec = spec
        self.cfg = cfg
        self.embedding = FieldEmbedding(spec, cfg.embedding_dim)
        self.tower: VisualTower | None = None
        if cfg.variant != "dcn":
            n_categories = spec.single.get("category_id", 1)
            sizes = {f: spec.single[PRIOR_FIELDS[f]] for f in cfg.extra_prior_fields}
            self.tower = build_visual_tower(cfg, n_categories, n_parents=spec.single.get("parent_category_id", 0),
                                            field_sizes=sizes)
        self.dcn = DCN(self.embedding.out_dim, cfg.visual_dim if self.tower is not None else 0, cfg)

    @property
    def uses_images(self) -> bool:
        return self.tower is not None

    @property
    def uses_parents(self) -> bool:
        """Whether the tower's priors are hierarchical (model.prior_hierarchy "parent")."""
        return self.tower is not None and self.cfg.variant == "cscnn" and self.cfg.prior_hierarchy == "parent"

    @property
    def key_fields(self) -> tuple[str, ...]:
        """The single fields, beyond the category, whose ids the tower's priors need per image, in
        the order of its key columns: parent_category_id (hierarchical priors), then the feature
        fields of model.prior_fields (brand_id, shop_id). Empty for plain CSCNN and other variants."""
        if self.tower is None or self.cfg.variant != "cscnn":
            return ()
        return (("parent_category_id",) if self.uses_parents else ()) + tuple(
            PRIOR_FIELDS[f] for f in self.cfg.extra_prior_fields)

    def prior_keys(self, category: torch.Tensor, ids: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """What the tower indexes its priors with: category ids (N,), or (N, K) rows of the category
        id and the ids of ``key_fields`` (``ids``: field name -> (N,) ids, encoded like f_<field>)."""
        fields = self.key_fields
        if not fields:
            return category
        missing = [f for f in fields if ids is None or ids.get(f) is None]
        if missing:
            raise ValueError(f"this model's CSCNN priors (model.prior_hierarchy {self.cfg.prior_hierarchy!r}, "
                             f"model.prior_fields {list(self.cfg.prior_fields)}) need each image's "
                             f"{', '.join(missing)} (the f_{missing[0]} column)")
        return torch.stack([category] + [ids[f] for f in fields], dim=1)

    def forward(self, batch: Batch) -> torch.Tensor:
        """Logits (B,)."""
        x_nv = self.embedding(batch.single, batch.multi_values, batch.multi_offsets)  # (B, D_nv)
        x_v = None
        if self.tower is not None:
            if batch.images is None:
                raise ValueError(f"variant {self.cfg.variant!r} needs images in the batch")
            images = preprocess_images(batch.images, self.dcn.out.weight.dtype)  # (U, 3, H, W)
            emb = self.tower(images, self.prior_keys(batch.image_category, batch.image_keys))  # (U, visual_dim)
            x_v = emb[batch.image_index]  # (B, visual_dim)
        return self.dcn(x_nv, x_v)
