"""Warm start across two run dates whose ids differ: rows follow their values, never their positions.

Day 1 and day 2 have encoders (features/encoder.py) whose frequency ranks swap: every surviving
value has another id on day 2, some day-1 values are retired and some day-2 values are new, in
every vocabulary field; the numeric bin edges move. The day-2 model is warm-started from the saved
day-1 model, as the train stage does, and inspected before any training step.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.config import load_config
from features.encoder import MULTI_FIELDS, NUMERIC_FIELDS, SINGLE_FIELDS, VOCAB_FIELDS, FeatureEncoder, apply_bin_edges
from features.spec import FeatureSpec
from models.ctr import CTRModel
from models.synthetic import make_examples
from models.train import save_model, train
from models.warm_start import WarmStartError, id_keyed_tensors, warm_start

SMALL = {"model.variant": "cscnn", "model.deep_dims": [16, 8], "model.head_dims": [8], "model.visual_dim": 6,
         "model.prior_channels": 3, "model.prior_spatial": 3, "model.attention_layers": 2,
         "train.batch_size": 48, "train.device": "cpu"}
N1, RETIRED, NEW = 12, 3, 4  # day-1 values per field; of them retired on day 2; values new on day 2


def _day_entries(field_no: int) -> tuple[dict[int, int], dict[int, int]]:
    """{raw value: id} of day 1 and day 2 for one field: ranks reversed, RETIRED gone, NEW added."""
    base = 1000 * (field_no + 1)
    day1_values = [base + i for i in range(N1)]  # id 1 = most frequent = base
    survivors = day1_values[RETIRED:]
    new_values = [base + 500 + i for i in range(NEW)]
    day2_order = list(reversed(survivors)) + new_values  # the survivors' ranks swap
    return ({v: i + 1 for i, v in enumerate(day1_values)}, {v: i + 1 for i, v in enumerate(day2_order)})


@pytest.fixture(scope="module")
def days():
    entries = {name: _day_entries(i) for i, name in enumerate(VOCAB_FIELDS)}
    e1 = FeatureEncoder.from_entries({n: e[0] for n, e in entries.items()},
                                     {"price": [10.0, 20.0, 40.0], "review_count": [5.0, 50.0]})
    e2 = FeatureEncoder.from_entries({n: e[1] for n, e in entries.items()},
                                     {"price": [12.0, 30.0], "review_count": [5.0, 50.0]})
    return e1, e2


def _spec(encoder: FeatureEncoder) -> FeatureSpec:
    return FeatureSpec(single={n: encoder.vocab_size(n) for n in SINGLE_FIELDS},
                       multi={n: encoder.vocab_size(n) for n in MULTI_FIELDS})


def _id_of(encoder: FeatureEncoder, name: str, value: int) -> int:
    return int(encoder.encode_single(name, value))


@pytest.fixture(scope="module")
def warmed(days, tmp_path_factory):
    """(day-1 state, day-2 model's fresh state, day-2 state after the warm start, WarmStart)."""
    e1, e2 = days
    cfg = load_config(overrides=SMALL).model
    torch.manual_seed(1)
    day1 = CTRModel(_spec(e1), cfg)
    with torch.no_grad():  # as if trained: distinct rows everywhere (the priors start at zero)
        for p in day1.parameters():
            p.normal_()
    path = tmp_path_factory.mktemp("day1") / "model.pt"
    save_model(day1, path)
    torch.manual_seed(2)
    day2 = CTRModel(_spec(e2), cfg)
    fresh = {k: v.clone() for k, v in day2.state_dict().items()}
    result = warm_start(day2, path, old_encoder=e1, new_encoder=e2)
    return day1.state_dict(), fresh, day2.state_dict(), result


def test_the_ranks_really_swap(days):
    e1, e2 = days
    for name in VOCAB_FIELDS:
        values = e1.vocab[name][0][RETIRED:]
        assert all(_id_of(e1, name, v) != _id_of(e2, name, v) for v in values.tolist()), name


def test_each_surviving_value_starts_from_its_own_day1_row(days, warmed):
    e1, e2 = days
    old, fresh, new, _ = warmed
    keyed = id_keyed_tensors(CTRModel(_spec(e2), load_config(overrides=SMALL).model))
    assert sum(n.endswith("_prior.weight") for n in keyed) == 2 * SMALL["model.attention_layers"]
    for tensor, name in keyed.items():
        if name in NUMERIC_FIELDS:
            continue
        values1 = set(e1.vocab[name][0].tolist())
        for value in e2.vocab[name][0].tolist():
            row = new[tensor][_id_of(e2, name, value)]
            if value in values1:
                assert torch.equal(row, old[tensor][_id_of(e1, name, value)]), (tensor, value)
            else:  # new on day 2: its fresh initialisation
                assert torch.equal(row, fresh[tensor][_id_of(e2, name, value)]), (tensor, value)
        assert torch.equal(new[tensor][0], old[tensor][0]), f"{tensor}: the OOV row carries over"


def test_nothing_is_copied_by_position(days, warmed):
    """For every id whose value differs between the days, day 2's row is not day 1's row at that id."""
    e1, e2 = days
    old, _, new, _ = warmed
    for tensor, name in id_keyed_tensors(CTRModel(_spec(e2), load_config(overrides=SMALL).model)).items():
        if name in NUMERIC_FIELDS:
            continue
        for value, new_id in zip(*[a.tolist() for a in e2.vocab[name]]):
            if new_id < old[tensor].shape[0] and _id_of(e1, name, value) != new_id:
                assert not torch.equal(new[tensor][new_id], old[tensor][new_id]), (tensor, value)


def test_numeric_bins_start_from_the_live_bin_holding_their_midpoint(days, warmed):
    e1, e2 = days
    old, _, new, result = warmed
    # day-2 price edges [12, 30]: bins (-inf,12], (12,30], (30,inf) hold 12, 21 and 30+ ->
    # day-1 bins of edges [10, 20, 40]: 2, 3, 3
    expect = apply_bin_edges(e1.bin_edges["price"], np.array([12.0, 21.0, np.nextafter(30.0, np.inf)]))
    assert expect.tolist() == [2, 3, 3]
    w = "embedding.single.price.weight"
    for new_bin, old_bin in zip([1, 2, 3], expect.tolist()):
        assert torch.equal(new[w][new_bin], old[w][old_bin])
    assert torch.equal(new[w][0], old[w][0])  # the null bin
    assert result.tables[w] == {"carried": 4, "new": 0, "dropped": 2}  # day-1 bins 1 and 4 unused
    r = "embedding.single.review_count.weight"  # same edges: bin k -> bin k
    assert torch.equal(new[r], old[r]) and result.tables[r]["dropped"] == 0


def test_the_counts_say_what_was_carried_new_and_dropped(warmed):
    _, _, _, result = warmed
    expected = {"carried": 1 + N1 - RETIRED, "new": NEW, "dropped": RETIRED}  # +1: the OOV row
    for tensor in ("embedding.single.brand_id.weight", "embedding.multi.query_words.weight",
                   "tower.backbone.layers.2.att.channel_prior.weight",
                   "tower.backbone.layers.3.att.spatial_prior.weight"):
        assert result.tables[tensor] == expected, tensor
    summary = result.summary()
    assert summary["tables"] is result.tables and summary["tensors_copied"] == len(result.copied)
    assert "dcn.cross.weights.0" in result.copied  # id-free tensors: copied as they are


def test_without_encoders_the_id_keyed_tables_stay_fresh(days, tmp_path):
    e1, e2 = days
    cfg = load_config(overrides=SMALL).model
    path = tmp_path / "model.pt"
    save_model(CTRModel(_spec(e1), cfg), path)
    same = CTRModel(_spec(e1), cfg)  # same shapes everywhere: the old code copied every row by position
    fresh = {k: v.clone() for k, v in same.state_dict().items()}
    result = warm_start(same, path, new_encoder=e1)
    keyed = id_keyed_tensors(same)
    assert set(keyed) <= set(result.fresh) and not result.tables
    for tensor in keyed:
        assert torch.equal(same.state_dict()[tensor], fresh[tensor]), tensor


def test_an_encoder_that_is_not_the_models_is_refused(days, tmp_path):
    e1, e2 = days
    cfg = load_config(overrides=SMALL).model
    path = tmp_path / "model.pt"
    save_model(CTRModel(_spec(e1), cfg), path)
    with pytest.raises(WarmStartError, match=r"today's encoder gives field '\w+' \d+ ids but the model has \d+ rows"):
        warm_start(CTRModel(_spec(e1), cfg), path, old_encoder=e1, new_encoder=e2)


def test_train_warm_starts_through_the_encoders_and_reports_the_counts(days, tmp_path):
    e1, e2 = days
    cfg = load_config(overrides={**SMALL, "train.max_steps": 1})
    path = tmp_path / "day1" / "model.pt"
    path.parent.mkdir()
    save_model(CTRModel(_spec(e1), cfg.model), path)
    spec2 = _spec(e2)
    train_df, images = make_examples(spec2, n_ads=8, impressions_per_ad=(4, 8), image_size=32, seed=3)
    hold_df, hold_images = make_examples(spec2, n_ads=4, impressions_per_ad=(4, 8), image_size=32, seed=4)
    metrics = train(cfg, spec2, train_df, hold_df, {**images, **hold_images}, tmp_path / "day2", init_from=path,
                    init_encoder=e1, encoder=e2)
    tables = metrics["warm_start"]["tables"]
    assert tables["embedding.single.category_id.weight"] == {"carried": 1 + N1 - RETIRED, "new": NEW,
                                                               "dropped": RETIRED}
