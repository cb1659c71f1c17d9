"""Warm start: today's model starts from the live model's weights, id-keyed rows remapped by value.

    result = warm_start(model, "published/v3-2026-02-02/model/model.pt", sha256,
                        old_encoder=live_encoder, new_encoder=todays_encoder)
    result.tables["embedding.single.brand_id.weight"]   # {'carried': 412, 'new': 61, 'dropped': 27}

A row of an embedding table, or of the CSCNN priors (category, parent category, brand, shop), belongs to a vocabulary id, and a
run date's ids are that run's own (features/encoder.py: ranks by window frequency), so the same
id means different values on different days. Those tensors are therefore never copied by
position: each row of today's table whose value the live model knew starts from the live
model's row for that value (looked up through both runs' encoders), a value the live model did
not know keeps its fresh initialisation, and a value only the live model knew is dropped. Row 0
(out of vocabulary) carries over as row 0. Numeric fields have quantile bins, not values: a bin of
today's edges starts from the live bin that holds its midpoint (its edge, for the outer bins).

Every other tensor (DCN, MLPs, convolutions, BatchNorm) does not depend on ids and is copied
when its name and shape match. Without both encoders (a live model published before encoders
travelled with versions, or a snapshot without one) the id-keyed tensors all stay fresh, and the
log says so: fresh is wrong by less than scrambled.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from core.config import PRIOR_FIELDS
from features.encoder import NUMERIC_FIELDS, FeatureEncoder, apply_bin_edges, lookup_ids
from models.attention import CSCNNAttention
from models.ctr import CTRModel

log = logging.getLogger(__name__)

CATEGORY_FIELD = "category_id"  # the CSCNN priors are indexed by this field's ids (category_idx)
PARENT_FIELD = "parent_category_id"  # hierarchical CSCNN priors: the parent tables' ids


class WarmStartError(RuntimeError):
    """The model to warm-start from does not match its published checksum, or its encoder."""


@dataclass
class WarmStart:
    """What a warm start did: tensors left fresh, and rows carried / new / dropped per id-keyed table."""

    fresh: list[str] = field(default_factory=list)
    copied: list[str] = field(default_factory=list)
    tables: dict[str, dict[str, int]] = field(default_factory=dict)

    def summary(self) -> dict[str, object]:
        """The form the model manifest records."""
        return {"tensors_copied": len(self.copied), "tensors_fresh": sorted(self.fresh), "tables": self.tables}


def id_keyed_tensors(model: CTRModel) -> dict[str, str]:
    """{state-dict name: the field whose ids index its rows} of every id-keyed tensor of ``model``."""
    out = {f"embedding.single.{name}.weight": name for name in model.embedding.single}
    out.update({f"embedding.multi.{name}.weight": name for name in model.embedding.multi})
    for name, module in model.named_modules():
        if isinstance(module, CSCNNAttention):
            out[f"{name}.channel_prior.weight"] = CATEGORY_FIELD
            out[f"{name}.spatial_prior.weight"] = CATEGORY_FIELD
            if module.n_parents:
                out[f"{name}.parent_channel_prior.weight"] = PARENT_FIELD
                out[f"{name}.parent_spatial_prior.weight"] = PARENT_FIELD
            for fld in module.fields:  # model.prior_fields beyond the category: brand -> brand_id, ...
                out[f"{name}.field_channel_prior.{fld}.weight"] = PRIOR_FIELDS[fld]
                out[f"{name}.field_spatial_prior.{fld}.weight"] = PRIOR_FIELDS[fld]
    return out


def _bin_representatives(edges: np.ndarray) -> np.ndarray:
    """A value inside each bin 1..len(edges)+1 of sorted ``edges`` (bins of features/encoder.py)."""
    if edges.size == 0:
        return np.zeros(1)
    inner = (edges[:-1] + edges[1:]) / 2  # bins 2..len(edges)
    return np.concatenate([[edges[0]], inner, [np.nextafter(edges[-1], np.inf)]])


def row_map(name: str, old: FeatureEncoder, new: FeatureEncoder) -> tuple[np.ndarray, int]:
    """(m, dropped) for field ``name``: m[new id] = the old id of the same value, -1 where the value is new;
    dropped = old ids whose value today's encoder no longer has."""
    size = new.vocab_size(name)
    m = np.full(size, -1, dtype=np.int64)
    m[0] = 0
    if name in NUMERIC_FIELDS:
        old_edges, new_edges = old.bin_edges[name], new.bin_edges[name]
        m[1:] = apply_bin_edges(old_edges, _bin_representatives(new_edges))
        dropped = int(old.vocab_size(name) - 1 - np.unique(m[1:]).size)
        return m, dropped
    old_values, old_ids = old.vocab[name]
    new_values, new_ids = new.vocab[name]
    before = lookup_ids(old_values, old_ids, new_values) if new_values.size else np.zeros(0, np.int32)
    m[new_ids] = np.where(before > 0, before, -1)
    dropped = int(np.count_nonzero(~np.isin(old_values, new_values)))
    return m, dropped


def _load_source(source: str | os.PathLike | Mapping[str, torch.Tensor], sha256: str | None) -> Mapping[str, torch.Tensor]:
    if isinstance(source, Mapping):
        return source
    data = Path(source).read_bytes()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise WarmStartError(f"{source}: sha256 {hashlib.sha256(data).hexdigest()[:16]}... differs from the "
                             f"{sha256[:16]}... its published version records; refusing to warm-start from a "
                             "modified model (re-publish or roll back the live version)")
    payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    return payload["state_dict"] if "state_dict" in payload else payload


def warm_start(model: CTRModel, source: str | os.PathLike | Mapping[str, torch.Tensor], sha256: str | None = None,
               *, old_encoder: FeatureEncoder | None = None, new_encoder: FeatureEncoder | None = None) -> WarmStart:
    """Initialise ``model`` from ``source`` (a model file or a state dict), as the module docstring says.

    ``old_encoder`` is the encoder of the run the source was trained on, ``new_encoder`` that of
    ``model``'s run. With ``sha256`` (the live version's record of the file) the bytes loaded are
    checked first; a mismatch raises WarmStartError naming the file, as does a source table with
    fewer rows than its own encoder's ids."""
    state = _load_source(source, sha256)
    own = model.state_dict()
    keyed = id_keyed_tensors(model)
    by_value = old_encoder is not None and new_encoder is not None
    result = WarmStart()
    update: dict[str, torch.Tensor] = {}
    maps: dict[str, tuple[np.ndarray, int]] = {}
    for name, target in own.items():
        src = state.get(name)
        if src is None or src.shape[1:] != target.shape[1:]:
            result.fresh.append(name)
            continue
        if name not in keyed:
            if src.shape == target.shape:
                update[name] = src
                result.copied.append(name)
            else:
                result.fresh.append(name)
            continue
        if not by_value:
            result.fresh.append(name)
            continue
        fld = keyed[name]
        if fld not in maps:
            maps[fld] = row_map(fld, old_encoder, new_encoder)
        m, dropped = maps[fld]
        if m.size != target.shape[0]:
            raise WarmStartError(f"{name}: today's encoder gives field {fld!r} {m.size} ids but the model has "
                                 f"{target.shape[0]} rows; the encoder is not this model's")
        if m.max(initial=0) >= src.shape[0]:
            raise WarmStartError(f"{name}: the live model has {src.shape[0]} rows but its encoder gives field "
                                 f"{fld!r} id {int(m.max())}; the live model's encoder is not its own")
        rows = target.clone()
        hit = torch.from_numpy(m >= 0)
        rows[hit] = src[torch.from_numpy(m[m >= 0])].to(rows.dtype)
        update[name] = rows
        result.copied.append(name)
        result.tables[name] = {"carried": int(hit.sum()), "new": int((~hit).sum()), "dropped": dropped}
    model.load_state_dict(update, strict=False)
    result.fresh.sort()
    if keyed and not by_value:
        log.warning("warm start: no encoder for the %s model or for today's run, so its %d id-keyed tables "
                    "(embeddings, category priors) start fresh instead of being remapped by value",
                    "live" if old_encoder is None else "new", sum(1 for k in keyed if k in state))
    log.info("warm start: %d tensors copied (%d id-keyed, remapped by value), %d kept fresh%s", len(result.copied),
             len(result.tables), len(result.fresh), f" (e.g. {result.fresh[:3]})" if result.fresh else "")
    if result.tables:
        parts = {}  # every prior table of the tower has its field's map: named once per field
        for name, c in result.tables.items():
            label = keyed[name] if name.startswith("embedding.") else f"{keyed[name]} priors"
            parts.setdefault(label, f"{label} {c['carried']}/{c['new']}/{c['dropped']}")
        log.info("warm start rows carried/new/dropped: %s", ", ".join(parts.values()))
    return result
