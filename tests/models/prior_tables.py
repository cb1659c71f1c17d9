"""Shared checks of the CSCNN prior-table tests (hierarchical and item-field priors)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from core.config import load_config
from features.encoder import MULTI_FIELDS, SINGLE_FIELDS, VOCAB_FIELDS, FeatureEncoder
from features.spec import FeatureSpec
from models.ctr import CTRModel
from models.train import embed_images, predict, save_model
from models.warm_start import id_keyed_tensors, warm_start


def reversed_encoders() -> tuple[FeatureEncoder, FeatureEncoder]:
    """Day 1 and day 2 encoders whose ids of every field are the same values in reversed order."""
    day1, day2 = {}, {}
    for i, name in enumerate(VOCAB_FIELDS):
        values = [1000 * (i + 1) + j for j in range(6)]
        day1[name] = {v: k + 1 for k, v in enumerate(values)}
        day2[name] = {v: k + 1 for k, v in enumerate(reversed(values))}
    edges = {"price": [10.0, 20.0], "review_count": [5.0]}
    return FeatureEncoder.from_entries(day1, edges), FeatureEncoder.from_entries(day2, edges)


def warm_start_across_reversed_ids(overrides: dict[str, Any], field: str, tmp_path) -> tuple[dict, dict, list[str]]:
    """Warm-start a day-2 model from a random day-1 model whose ids are reversed; checks that every
    prior table keyed by ``field`` carried each value's row to that value's new id. Returns (day-1
    state, day-2 state, names of those tables)."""
    e1, e2 = reversed_encoders()
    cfg = load_config(overrides=overrides).model

    def spec(e: FeatureEncoder) -> FeatureSpec:
        return FeatureSpec(single={n: e.vocab_size(n) for n in SINGLE_FIELDS},
                           multi={n: e.vocab_size(n) for n in MULTI_FIELDS})

    day1 = CTRModel(spec(e1), cfg)
    with torch.no_grad():
        for p in day1.parameters():
            p.normal_()
    save_model(day1, tmp_path / "day1.pt")
    day2 = CTRModel(spec(e2), cfg)
    tables = [n for n, f in id_keyed_tensors(day2).items() if f == field and "_prior." in n]
    assert len(tables) == 2 * overrides["model.attention_layers"]
    result = warm_start(day2, tmp_path / "day1.pt", old_encoder=e1, new_encoder=e2)
    old, new = day1.state_dict(), day2.state_dict()
    for name in tables:
        assert result.tables[name] == {"carried": e2.vocab_size(field), "new": 0, "dropped": 0}
        for v in e1.vocab[field][0]:
            i1, i2 = int(e1.encode_single(field, v)), int(e2.encode_single(field, v))
            assert i1 != i2  # the ids really moved
            torch.testing.assert_close(new[name][i2], old[name][i1])
    return old, new, tables


def check_embedding_uses_each_images(model: CTRModel, df: Any, images: dict, category: int, field: str,
                                     ids: tuple[int, int]) -> None:
    """embed_images refuses images without ``field`` ids, and two ids of it give different x_v;
    predict runs on the examples (which carry f_<field>)."""
    ads = np.array(sorted(images))[:8]
    pixels = np.stack([images[int(a)] for a in ads])
    cats = np.full(len(ads), category)
    with pytest.raises(ValueError, match=field):
        embed_images(model, pixels, cats)
    x_a, x_b = (embed_images(model, pixels, cats, keys={field: np.full(len(ads), i)}) for i in ids)
    assert x_a.shape == (len(ads), model.cfg.visual_dim) and not np.allclose(x_a, x_b)  # the field's prior shapes x_v
    preds = predict(model, df, images)
    assert preds.shape == (len(df),) and np.isfinite(preds).all()
