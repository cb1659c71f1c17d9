"""The online predictor: the model head (FieldEmbedding + DCN, no CNN) over the lookup table.

    predictor = Predictor.from_current(cfg)            # the published `current` version
    result = predictor.score_records([{"user_id": 1, "ad_id": 7, ...}, ...])
    result.scores, result.fallbacks                    # pCTR (B,), requests whose ad was not in the table

Loading verifies every file against its manifest checksum first (the model file against the
sha256 the lookup manifest recorded), refuses to load on a mismatch naming the file, and reads the
model with ``torch.load(weights_only=True)``; only the FieldEmbedding and DCN weights are built.

The hot path is vectorised: encoding runs per field over the batch (numpy), the ad index is a
numpy ``searchsorted`` over the sorted ad ids, and the head is one forward under
``torch.inference_mode()``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from core.config import ModelConfig, PipelineConfig, build
from core.feature_spec import FeatureSpec
from models.layers import DCN, FieldEmbedding
from serving.lookup import IntegrityError, LookupTable, read_manifest, sha256_file
from serving.requests import (EncodedRequests, RequestColumns, columns_from_records, encode_requests,
                              load_encoder_file)

log = logging.getLogger(__name__)

ENCODER_FILE = "encoder.npz"
MODEL_FILE = "model.pt"


class ModelHead(nn.Module):
    """The CTR model without its visual tower: x_v comes from the lookup table."""

    def __init__(self, spec: FeatureSpec, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.variant == "dcn":
            raise ValueError("variant 'dcn' has no visual input; the lookup-table predictor serves visual variants")
        self.spec = spec
        self.cfg = cfg
        self.embedding = FieldEmbedding(spec, cfg.embedding_dim)
        self.dcn = DCN(self.embedding.out_dim, cfg.visual_dim, cfg)

    @classmethod
    def from_model_file(cls, path: str | os.PathLike) -> "ModelHead":
        """The head of a models.train.save_model file (weights_only load; tower weights skipped)."""
        payload = torch.load(path, map_location="cpu", weights_only=True)
        try:
            spec = FeatureSpec.from_json(payload["spec"])
            cfg = build(ModelConfig, json.loads(payload["model_config"]), "model")
            state = payload["state_dict"]
        except (KeyError, TypeError) as e:
            raise IntegrityError(f"{path}: not a models.train.save_model file (missing {e})") from None
        head = cls(spec, cfg)
        wanted = {k: v for k, v in state.items() if k.startswith(("embedding.", "dcn."))}
        head.load_state_dict(wanted, strict=True)
        return head.eval()

    def forward(self, single: torch.Tensor, multi_values: dict[str, torch.Tensor],
                multi_offsets: dict[str, torch.Tensor], x_v: torch.Tensor) -> torch.Tensor:
        """Logits (B,) from encoded fields and x_v (B, visual_dim)."""
        x_nv = self.embedding(single, multi_values, multi_offsets)  # (B, D_nv)
        return self.dcn(x_nv, x_v)


@dataclass
class ScoreResult:
    scores: np.ndarray  # (B,) pCTR float32
    in_table: np.ndarray  # (B,) bool: the ad's embedding came from the table (else the fallback)

    @property
    def fallbacks(self) -> int:
        return int((~self.in_table).sum())


class Predictor:
    """Scores raw contract requests with one version's encoder, model head and lookup table."""

    def __init__(self, head: ModelHead, table: LookupTable, encoder: Any, version: Mapping[str, Any] | None = None):
        if table.visual_dim != head.cfg.visual_dim:
            raise IntegrityError(f"lookup table rows decode to {table.visual_dim} dims, the model expects "
                                 f"visual_dim={head.cfg.visual_dim}: table and model are from different runs")
        self.head = head
        self.table = table
        self.encoder = encoder
        self.version = dict(version or {})
        self.requests_scored = 0
        self.fallbacks = 0  # requests whose ad was missing from the table, since loading

    @classmethod
    def load(cls, model_path: str | os.PathLike, lookup_dir: str | os.PathLike,
             version: Mapping[str, Any] | None = None) -> "Predictor":
        """Verify the lookup folder's files and the model file against the lookup manifest, then load."""
        lookup_dir = Path(lookup_dir)
        manifest = read_manifest(lookup_dir)
        model_path = Path(model_path)
        if not model_path.is_file():
            raise IntegrityError(f"{model_path.name}: model file {model_path} is missing")
        if sha256_file(model_path) != manifest["model_sha256"]:
            raise IntegrityError(f"{model_path.name}: checksum mismatch with {lookup_dir / 'manifest.json'} "
                                 f"(expected sha256 {manifest['model_sha256'][:16]}...); refusing to load it")
        table = LookupTable.load(lookup_dir, verify=True)
        if ENCODER_FILE not in manifest["files"]:
            raise IntegrityError(f"{ENCODER_FILE}: not listed in {lookup_dir / 'manifest.json'}; "
                                 "the version lacks the run's feature encoder")
        encoder = load_encoder_file(lookup_dir / ENCODER_FILE)
        head = ModelHead.from_model_file(model_path)
        info = {"model_version": manifest.get("model_version"), "run_date": manifest.get("run_date"),
                "reduction": manifest.get("reduction"), **(version or {})}
        log.info("predictor loaded: %s (%d ads, %s)", info, len(table), manifest.get("reduction"))
        return cls(head, table, encoder, info)

    @classmethod
    def load_version(cls, version_dir: str | os.PathLike, version: Mapping[str, Any] | None = None) -> "Predictor":
        """A published version folder v<N>-<D>/ (model/model.pt + lookup/)."""
        version_dir = Path(version_dir)
        return cls.load(version_dir / "model" / MODEL_FILE, version_dir / "lookup", version)

    @classmethod
    def from_current(cls, cfg: PipelineConfig) -> "Predictor":
        """The version the `current` pointer names (serving.registry)."""
        from serving.registry import read_current, version_dir

        current = read_current(cfg)
        if current is None:
            raise FileNotFoundError("nothing is published yet: no current pointer under the artifacts' "
                                    "published/ folder; run the publish stage first")
        return cls.load_version(version_dir(cfg, current), current)

    # ------------------------------------------------------------------ scoring

    def encode(self, cols: RequestColumns) -> EncodedRequests:
        return encode_requests(self.encoder, cols, self.head.embedding.single_names,
                               self.head.embedding.multi_names)

    def score_encoded(self, enc: EncodedRequests) -> ScoreResult:
        """pCTR of already encoded requests (table lookup + one head forward)."""
        x_v, hit = self.table.lookup(enc.ad_id, enc.category)  # (B, visual_dim), (B,)
        with torch.inference_mode():
            logits = self.head(torch.from_numpy(enc.single),
                               {k: torch.from_numpy(v) for k, v in enc.multi_values.items()},
                               {k: torch.from_numpy(v) for k, v in enc.multi_offsets.items()},
                               torch.from_numpy(x_v))
            scores = torch.sigmoid(logits).numpy()
        self.requests_scored += len(scores)
        self.fallbacks += int((~hit).sum())
        return ScoreResult(scores, hit)

    def score_columns(self, cols: RequestColumns) -> ScoreResult:
        """pCTR of validated request columns."""
        return self.score_encoded(self.encode(cols))

    def score_records(self, records: Iterable[Mapping[str, Any]]) -> ScoreResult:
        """pCTR of request dicts in the raw contract (see serving.requests); RequestError on a bad one."""
        return self.score_columns(columns_from_records(records))
