"""CSCNN priors from item fields beyond the category (model.prior_fields): each field's channel
prior is concatenated into the channel MLP's input and its spatial prior is one more map of the
spatial conv; trained end to end, embedded with each image's ids, warm-started by value."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.config import ConfigError, load_config
from features.spec import FeatureSpec
from models.attention import CSCNNAttention
from models.ctr import CTRModel
from models.synthetic import make_examples, make_spec
from models.train import load_model, train
from prior_tables import check_embedding_uses_each_images, warm_start_across_reversed_ids

SMALL = {"model.variant": "cscnn", "model.prior_fields": ["category", "brand"], "model.deep_dims": [16, 8],
         "model.head_dims": [8], "model.visual_dim": 6, "model.prior_channels": 3, "model.prior_spatial": 3,
         "model.attention_layers": 2, "train.batch_size": 48, "train.lr": 0.01, "train.device": "cpu",
         "train.checkpoint_every": 0, "train.warm_start": False}
N_BRANDS = 9
UNSEEN_BRAND = 8  # no training row has it


def _layers(model: CTRModel) -> list[CSCNNAttention]:
    return [m for m in model.modules() if isinstance(m, CSCNNAttention)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    spec = make_spec(n_categories=5, vocab=11)
    spec = FeatureSpec(single={**spec.single, "brand_id": N_BRANDS}, multi=spec.multi)
    df, images = make_examples(spec, n_ads=30, impressions_per_ad=(6, 12), seed=5)
    # One brand per ad (as in the contract), brands 0..7: every brand but UNSEEN_BRAND has rows.
    df["f_brand_id"] = (df["group_id"] % UNSEEN_BRAND).astype(np.int32)
    out = train(load_config(overrides=SMALL), spec, df, None, images, tmp_path_factory.mktemp("fields"), resume=False)
    return spec, df, images, load_model(out["model_path"])


def test_config_errors_name_the_bad_list():
    for bad in (["brand"], ["category", "colour"], ["category", "brand", "brand"]):
        with pytest.raises(ConfigError, match=r"model\.prior_fields.*allowed: a list of distinct names"):
            load_config(overrides={"model.prior_fields": bad})
    assert load_config().model.prior_fields == ("category",)
    spec = make_spec(n_categories=4, vocab=5)
    no_shop = FeatureSpec(single={k: v for k, v in spec.single.items() if k != "shop_id"}, multi=spec.multi)
    with pytest.raises(ValueError, match="shop_id"):
        CTRModel(no_shop, load_config(overrides={**SMALL, "model.prior_fields": ["category", "shop"]}).model)


def test_each_field_adds_a_channel_block_and_a_spatial_map():
    layer = CSCNNAttention(8, 5, 3, 3, 4, fields={"brand": 7, "shop": 4})
    flat = CSCNNAttention(8, 5, 3, 3, 4)
    assert layer.mlp[0].in_features == flat.mlp[0].in_features + 2 * 3
    assert layer.spatial.in_channels == flat.spatial.in_channels + 2
    assert layer.key_width == 3 and flat.key_width == 0
    with pytest.raises(ValueError, match=r"\(category, brand, shop\) id rows of shape \(2, 3\)"):
        layer(torch.randn(2, 8, 6, 6), torch.tensor([1, 2]))


def test_the_fused_forward_equals_the_reference_with_fields_and_parents():
    torch.manual_seed(0)
    layer = CSCNNAttention(8, 5, 3, 3, 4, n_parents=2, fields={"brand": 7})
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()
    feat, keys = torch.randn(4, 8, 6, 6), torch.tensor([[0, 0, 6], [2, 1, 0], [4, 1, 3], [1, 0, 3]])
    torch.testing.assert_close(layer(feat, keys), layer.reference_forward(feat, keys))


def test_one_backward_pass_reaches_the_category_and_the_brand_rows():
    layer = CSCNNAttention(8, 5, 3, 3, 4, fields={"brand": 7})
    layer(torch.randn(2, 8, 6, 6), torch.tensor([[4, 6], [1, 2]])).square().sum().backward()
    for table, hit in ((layer.channel_prior, [4, 1]), (layer.spatial_prior, [4, 1]),
                       (layer.field_channel_prior["brand"], [6, 2]), (layer.field_spatial_prior["brand"], [6, 2])):
        grad = table.weight.grad.abs().sum(dim=1)
        assert (grad[hit] > 0).all()
        assert (grad[[i for i in range(len(grad)) if i not in hit]] == 0).all()


def test_training_moves_the_brand_priors_of_brands_with_rows_only(trained):
    _, _, _, model = trained
    assert model.key_fields == ("brand_id",)
    for layer in _layers(model):
        for table in (layer.field_channel_prior["brand"], layer.field_spatial_prior["brand"]):
            moved = table.weight.abs().sum(dim=1) > 0
            assert moved[:UNSEEN_BRAND].all() and not moved[UNSEEN_BRAND]


def test_embedding_and_prediction_use_each_images_brand(trained):
    _, df, images, model = trained
    check_embedding_uses_each_images(model, df, images, 0, "brand_id", (1, 5))


def test_warm_start_remaps_the_brand_tables_by_value(tmp_path):
    old, new, _ = warm_start_across_reversed_ids(SMALL, "brand_id", tmp_path)
    # The channel MLP and spatial conv (wider with brand priors) depend on no id: copied as they are.
    shared = [n for n in new if n.startswith("tower.") and n.endswith((".mlp.0.weight", ".spatial.weight"))]
    assert len(shared) == 2 * SMALL["model.attention_layers"]
    for name in shared:
        torch.testing.assert_close(new[name], old[name])


def test_the_brand_option_costs_a_prior_table_and_a_wider_mlp_and_conv_per_layer():
    from models.cost import measure

    small = {"image_size": 32, "n_categories": 40, "n_parents": 9, "n_brands": 9, "num_classes": 10}
    flat, brand = measure("cscnn", small), measure("cscnn", small, fields=("brand",))
    tables = 16 * (20 + 6 * 6) * 9  # (C' + H'*W') entries per brand and layer, Table 2's C' = 20, H' = W' = 6
    mlp = 20 * sum(c // 4 for c in (64, 128, 256, 512) for _ in range(4))  # C' more inputs to a C -> C/4 layer
    conv = 16 * 7 * 7  # one more input map of each 7x7 spatial conv
    assert round((brand["params_m"] - flat["params_m"]) * 1e6) == tables + mlp + conv
    assert brand["gflops"] > flat["gflops"]


def test_an_option_leaves_the_rest_of_the_models_initialisation_as_without_it():
    """Paired comparisons (bench.ablation) measure the option, not another random init."""
    spec = make_spec(n_categories=5, vocab=11)
    spec = FeatureSpec(single={**spec.single, "brand_id": N_BRANDS, "parent_category_id": 3}, multi=spec.multi)

    def build(**options) -> CTRModel:
        torch.manual_seed(11)
        return CTRModel(spec, load_config(overrides={**SMALL, "model.prior_fields": ["category"], **options}).model)

    plain = build().state_dict()
    parent = build(**{"model.prior_hierarchy": "parent"})
    brand = build(**{"model.prior_fields": ["category", "brand"]}).state_dict()
    assert {k: v for k, v in parent.state_dict().items() if k in plain}.keys() == plain.keys()
    for name, value in plain.items():
        torch.testing.assert_close(parent.state_dict()[name], value, rtol=0, atol=0)
        wide = brand[name]
        torch.testing.assert_close(wide[:, :value.shape[1]] if wide.shape != value.shape else wide, value,
                                   rtol=0, atol=0)
    wider = [n for n in plain if brand[n].shape != plain[n].shape]
    assert sorted({n.rsplit(".", 2)[-2] for n in wider}) == ["0", "spatial"]  # mlp.0 and spatial weights
    for name in wider:  # the new input weights are drawn, not zero (a zero column would never learn)
        assert brand[name][:, plain[name].shape[1]:].abs().sum() > 0


def test_prior_lr_scale_moves_only_the_prior_tables_faster(tmp_path):
    spec = make_spec(n_categories=5, vocab=11)
    spec = FeatureSpec(single={**spec.single, "brand_id": N_BRANDS}, multi=spec.multi)
    df, images = make_examples(spec, n_ads=12, impressions_per_ad=(6, 8), seed=7)
    df["f_brand_id"] = (df["group_id"] % UNSEEN_BRAND).astype(np.int32)
    moved = {}
    for scale in (1.0, 10.0):
        torch.manual_seed(0)
        cfg = load_config(overrides={**SMALL, "train.max_steps": 1, "train.validation_fraction": 0,
                                     "train.prior_lr_scale": scale})
        model = load_model(train(cfg, spec, df, None, images, tmp_path / str(scale), resume=False)["model_path"])
        state = model.state_dict()
        moved[scale] = {"priors": sum(float(v.abs().max()) for k, v in state.items() if "_prior." in k),
                        "mlp": state[next(k for k in state if k.endswith(".mlp.2.weight"))]}
    # One Adam step moves an element by about lr: ten times as far for the priors, the same elsewhere.
    assert moved[10.0]["priors"] == pytest.approx(10 * moved[1.0]["priors"], rel=0.05)
    torch.testing.assert_close(moved[10.0]["mlp"], moved[1.0]["mlp"])
    with pytest.raises(ConfigError, match="train.prior_lr_scale"):
        load_config(overrides={"train.prior_lr_scale": 0})
