"""Hierarchical CSCNN priors (model.prior_hierarchy "parent"): a category's prior is its parent's
prior plus its own offset, trained end to end, embedded with parent ids, warm-started by value."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.config import ConfigError, load_config
from features.spec import FeatureSpec
from models.attention import CSCNNAttention
from models.ctr import CTRModel
from models.synthetic import make_examples, make_spec
from models.train import load_model, param_groups, train
from prior_tables import check_embedding_uses_each_images, warm_start_across_reversed_ids

SMALL = {"model.variant": "cscnn", "model.prior_hierarchy": "parent", "model.deep_dims": [16, 8],
         "model.head_dims": [8], "model.visual_dim": 6, "model.prior_channels": 3, "model.prior_spatial": 3,
         "model.attention_layers": 2, "train.batch_size": 48, "train.lr": 0.01, "train.device": "cpu",
         "train.checkpoint_every": 0, "train.warm_start": False}
N_CATEGORIES, N_PARENTS = 7, 4
PARENT_OF = np.array([0, 1, 1, 2, 2, 3, 3])  # category id -> parent id; category 6 gets no training row
UNSEEN = 6


def _layers(model: CTRModel) -> list[CSCNNAttention]:
    return [m for m in model.modules() if isinstance(m, CSCNNAttention)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    spec = make_spec(n_categories=N_CATEGORIES, vocab=11)
    spec = FeatureSpec(single={**spec.single, "parent_category_id": N_PARENTS}, multi=spec.multi)
    df, images = make_examples(spec, n_ads=30, impressions_per_ad=(6, 12), seed=3)
    df = df[df["category_idx"] != UNSEEN].reset_index(drop=True)
    df["f_parent_category_id"] = PARENT_OF[df["category_idx"].to_numpy()].astype(np.int32)
    assert set(df["category_idx"]) == set(range(UNSEEN)) and df["row_idx"].is_monotonic_increasing
    out = train(load_config(overrides=SMALL), spec, df, None, images, tmp_path_factory.mktemp("hier"), resume=False)
    return spec, df, images, load_model(out["model_path"])


def test_a_category_without_training_rows_has_exactly_its_parents_prior(trained):
    _, _, _, model = trained
    assert model.uses_parents
    keys = torch.tensor([[UNSEEN, PARENT_OF[UNSEEN]]])
    for layer in _layers(model):
        a_c, a_s = layer.priors(keys)
        assert torch.equal(a_c[0], layer.parent_channel_prior.weight[PARENT_OF[UNSEEN]])
        assert torch.equal(a_s[0, 0], layer.parent_spatial_prior.weight[PARENT_OF[UNSEEN]])
        assert a_c.abs().sum() > 0  # the parent learned from the unseen category's trained sibling (5)
        assert layer.channel_prior.weight[UNSEEN].abs().sum() == 0  # no row, no offset


def test_training_moves_both_the_parent_and_the_child_tables(trained):
    _, _, _, model = trained
    for layer in _layers(model):
        for c in range(UNSEEN):  # every category with rows has its own offset, every parent moved
            assert layer.channel_prior.weight[c].abs().sum() > 0 and layer.spatial_prior.weight[c].abs().sum() > 0
        for p in range(N_PARENTS):
            assert layer.parent_channel_prior.weight[p].abs().sum() > 0


def test_one_backward_pass_reaches_the_parent_and_the_child_rows():
    layer = CSCNNAttention(8, N_CATEGORIES, 3, 3, 4, n_parents=N_PARENTS)
    feat = torch.randn(2, 8, 6, 6)
    layer(feat, torch.tensor([[4, 2], [1, 1]])).square().sum().backward()
    for table, hit in ((layer.channel_prior, [4, 1]), (layer.spatial_prior, [4, 1]),
                       (layer.parent_channel_prior, [2, 1]), (layer.parent_spatial_prior, [2, 1])):
        grad = table.weight.grad.abs().sum(dim=1)
        assert (grad[hit] > 0).all()
        assert (grad[[i for i in range(len(grad)) if i not in hit]] == 0).all()


def test_the_summed_tables_learn_at_half_the_prior_rate_and_other_priors_at_the_full_one():
    """A category's prior is its row plus its parent's, each moved about lr per Adam update: at half
    the rate each, the sum moves about as fast as a flat prior (the option adds borrowing, not speed)."""
    spec = make_spec(n_categories=N_CATEGORIES, vocab=11)
    spec = FeatureSpec(single={**spec.single, "parent_category_id": N_PARENTS, "brand_id": 5}, multi=spec.multi)
    cfg = load_config(overrides={**SMALL, "train.prior_lr_scale": 10.0, "model.prior_fields": ["category", "brand"]})
    model = CTRModel(spec, cfg.model)
    names = {id(p): n for n, p in model.named_parameters()}
    lr_of = {names[id(p)]: g.get("lr", cfg.train.lr) for g in param_groups(model, cfg.train) for p in g["params"]}
    assert lr_of.keys() == set(names.values())
    for name, lr in lr_of.items():
        if "field_" in name:
            assert lr == pytest.approx(0.1), name  # brand priors: a table of their own, 10 x lr
        elif "_prior." in name:
            assert lr == pytest.approx(0.05), name  # the category's row and its parent's
        else:
            assert lr == pytest.approx(0.01), name
    flat = CTRModel(spec, cfg.replace({"model.prior_hierarchy": "none"}).model)
    assert sorted(g.get("lr", 0.01) for g in param_groups(flat, cfg.train)) == pytest.approx([0.01, 0.1])


def test_the_fused_forward_equals_the_reference_with_parents():
    torch.manual_seed(0)
    layer = CSCNNAttention(8, N_CATEGORIES, 3, 3, 4, n_parents=N_PARENTS)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()
    feat, keys = torch.randn(5, 8, 6, 6), torch.tensor([[0, 0], [2, 1], [4, 2], [6, 3], [6, 0]])
    torch.testing.assert_close(layer(feat, keys), layer.reference_forward(feat, keys))
    with pytest.raises(ValueError, match=r"\(category, parent category\) id rows of shape \(5, 2\)"):
        layer(feat, keys[:, 0])


def test_embedding_and_prediction_use_each_images_parent(trained):
    _, df, images, model = trained
    check_embedding_uses_each_images(model, df, images, UNSEEN, "parent_category_id", (3, 0))


def test_config_and_spec_errors_name_what_is_wrong():
    with pytest.raises(ConfigError, match="model.prior_hierarchy.*'tree'"):
        load_config(overrides={"model.prior_hierarchy": "tree"})
    spec = make_spec(n_categories=4, vocab=5)
    flat = FeatureSpec(single={k: v for k, v in spec.single.items() if k != "parent_category_id"}, multi=spec.multi)
    with pytest.raises(ValueError, match="parent_category_id"):
        CTRModel(flat, load_config(overrides=SMALL).model)
    for variant in ("cbam", "dcn"):  # only CSCNN has priors: the option does not change the others
        model = CTRModel(flat, load_config(overrides={**SMALL, "model.variant": variant}).model)
        assert not model.uses_parents


def test_warm_start_remaps_the_parent_tables_by_value(tmp_path):
    warm_start_across_reversed_ids(SMALL, "parent_category_id", tmp_path)


def test_the_parent_option_costs_one_prior_table_per_layer_and_no_counted_flops():
    from models.cost import measure

    small = {"image_size": 32, "n_categories": 40, "n_parents": 9, "num_classes": 10}
    flat, parent = measure("cscnn", small), measure("cscnn", small, hierarchy="parent")
    per_layer = (20 + 6 * 6) * 9  # (C' + H'*W') entries per parent, Table 2's C' = 20, H' = W' = 6
    assert round((parent["params_m"] - flat["params_m"]) * 1e6) == 16 * per_layer
    assert parent["gflops"] == flat["gflops"]
