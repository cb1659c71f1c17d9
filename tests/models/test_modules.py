"""Module-level tests: shapes, the cross net by hand, CSCNN prior gradients, variants, errors,
and grouped == per-impression forward/backward."""

from __future__ import annotations

import copy

import numpy as np
import pyarrow as pa
import pytest
import torch
import torchvision

from core.config import ConfigError, ModelConfig, load_config
from features.spec import FeatureSpec
from models.attention import CBAM, CSCNNAttention, NoAttention, _ChannelPool, _GatedMaps, make_attention
from models.batching import ImageTable, encode_examples, make_batch, plan_batches
from models.bench_speed import _use_reference_forward, tower_round_times
from models.ctr import CTRModel
from models.layers import DCN, CrossNet, FieldEmbedding
from models.synthetic import make_examples, make_spec
from models.visual import build_visual_tower

TINY = dict(deep_dims=(16, 8, 4), head_dims=(8,), visual_dim=6, prior_channels=3, prior_spatial=3)


def tiny_cfg(**kw) -> ModelConfig:
    return ModelConfig(**{**TINY, **kw})


@pytest.fixture(scope="module")
def data():
    spec = make_spec(n_categories=5, vocab=11)
    df, images = make_examples(spec, n_ads=5, impressions_per_ad=(3, 6), image_size=32, seed=3)
    enc = encode_examples(df, spec)
    return spec, df, enc, ImageTable(images, enc.ad_id)


def test_field_embedding_shape_and_empty_lists_pool_to_zero():
    spec = FeatureSpec(single={"b": 5, "a": 3}, multi={"words": 7})
    emb = FieldEmbedding(spec, dim=4)
    single = torch.tensor([[1, 2], [0, 4]])  # columns in sorted order: a, b
    values = {"words": torch.tensor([3, 5, 6])}
    offsets = {"words": torch.tensor([0, 3])}  # example 1 has an empty list
    out = emb(single, values, offsets)
    assert out.shape == (2, 12)
    assert torch.equal(out[1, 8:], torch.zeros(4))
    expected = emb.multi["words"].weight[[3, 5, 6]].mean(0)
    assert torch.allclose(out[0, 8:], expected)
    assert torch.equal(out[0, :4], emb.single["a"].weight[1])
    assert torch.equal(out[1, 4:8], emb.single["b"].weight[4])


def test_cross_net_matches_hand_computation():
    torch.manual_seed(0)
    net = CrossNet(dim=3, n_layers=2)
    with torch.no_grad():
        net.weights[0].copy_(torch.tensor([1.0, 0.0, -1.0]))
        net.weights[1].copy_(torch.tensor([0.5, 0.5, 0.5]))
        net.biases[0].copy_(torch.tensor([0.1, 0.2, 0.3]))
        net.biases[1].copy_(torch.tensor([-1.0, 0.0, 1.0]))
    z0 = torch.tensor([[1.0, 2.0, 3.0]])
    # layer 1: z0 . w0 = 1 - 3 = -2 -> z1 = -2 * z0 + b0 + z0 = [-0.9, -1.8, -2.7]
    # layer 2: z1 . w1 = 0.5 * (-5.4) = -2.7 -> z2 = -2.7 * z0 + b1 + z1 = [-4.6, -7.2, -9.8]
    assert torch.allclose(net(z0), torch.tensor([[-4.6, -7.2, -9.8]]), atol=1e-6)
    assert torch.allclose(net.folded()(z0), torch.tensor([[-4.6, -7.2, -9.8]]), atol=1e-6)


def test_dcn_shapes_with_and_without_visual_input():
    cfg = tiny_cfg()
    x_nv = torch.randn(7, 12)
    assert DCN(12, 6, cfg)(x_nv, torch.randn(7, 6)).shape == (7,)
    assert DCN(12, 0, cfg)(x_nv, None).shape == (7,)
    with pytest.raises(ValueError, match="x_v is required"):
        DCN(12, 6, cfg)(x_nv, None)


@pytest.mark.parametrize("visual_dim, changes", [(6, {}), (0, {}), (6, {"deep_dims": (16,)}), (6, {"head_dims": ()}),
                                                 (6, {"cross_layers": 0})])
def test_folded_dcn_matches_the_module_and_copies_its_weights(visual_dim, changes):
    torch.manual_seed(0)
    dcn = DCN(12, visual_dim, tiny_cfg(**changes)).eval()
    x_nv, x_v = torch.randn(7, 12), torch.randn(7, visual_dim) if visual_dim else None
    fp32, bf16 = dcn.folded(torch.float32), dcn.folded(torch.bfloat16)
    with torch.inference_mode():
        expected = dcn(x_nv, x_v)  # (7,)
        torch.testing.assert_close(fp32(x_nv, x_v), expected, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(bf16(x_nv, x_v), expected, atol=1e-2, rtol=0)
        dcn.out.bias.add_(1.0)
        torch.testing.assert_close(fp32(x_nv, x_v), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind", ["none", "cbam", "cscnn"])
def test_attention_keeps_shape(kind):
    att = make_attention(kind, 8, n_categories=4, prior_channels=3, prior_spatial=5, reduction=4)
    feat = torch.randn(3, 8, 6, 10)
    assert att(feat, torch.tensor([0, 3, 1])).shape == feat.shape


def test_attention_types_and_bad_kind():
    assert isinstance(make_attention("none", 4), NoAttention)
    assert isinstance(make_attention("cbam", 4), CBAM)
    assert isinstance(make_attention("cscnn", 4, n_categories=2), CSCNNAttention)
    with pytest.raises(ValueError, match="'senet'"):
        make_attention("senet", 4)


def _attention_pair(kind: str, dtype: torch.dtype) -> tuple[torch.nn.Module, torch.nn.Module]:
    """An attention module with non-zero priors and weights, and an identical copy."""
    torch.manual_seed(1)
    att = make_attention(kind, 12, n_categories=5, prior_channels=3, prior_spatial=4, reduction=4).to(dtype)
    with torch.no_grad():
        for p in att.parameters():
            p.normal_()
    return att, copy.deepcopy(att)


@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("kind", ["cbam", "cscnn"])
def test_fused_attention_matches_reference_forward_and_gradients(kind, ties):
    att, ref = _attention_pair(kind, torch.float64)
    gen = torch.Generator().manual_seed(2)
    feat = torch.randn(5, 12, 7, 9, dtype=torch.float64, generator=gen)
    if ties:  # flat regions, as on a uniform image background: the max reductions tie
        feat = feat.round().clamp(-1, 1)
    x, x_ref = feat.clone().requires_grad_(), feat.clone().requires_grad_()
    cat = torch.tensor([0, 4, 4, 2, 1])
    grad_out = torch.randn(5, 12, 7, 9, dtype=torch.float64, generator=gen)
    y, y_ref = att(x, cat), ref.reference_forward(x_ref, cat)
    y.backward(grad_out)
    y_ref.backward(grad_out)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=0, atol=1e-12)
    for (name, p), (_, p_ref) in zip(att.named_parameters(), ref.named_parameters(), strict=True):
        torch.testing.assert_close(p.grad, p_ref.grad, rtol=0, atol=1e-11, msg=lambda m, n=name: f"{n}: {m}")


def test_fused_attention_functions_pass_gradcheck():
    gen = torch.Generator().manual_seed(3)

    def leaf(*shape):
        return torch.randn(*shape, dtype=torch.float64, generator=gen).requires_grad_()

    def conv(in_maps):
        c = torch.nn.Conv2d(in_maps, 1, 7, padding=3).double()
        with torch.no_grad():
            c.weight.copy_(torch.randn(c.weight.shape, dtype=torch.float64, generator=gen))
        return c

    x, m, extra = leaf(3, 5, 4, 6), leaf(3, 5), leaf(3, 1, 4, 6)
    assert torch.autograd.gradcheck(_ChannelPool.apply, (x,))
    c3, c2 = conv(3), conv(2)
    assert torch.autograd.gradcheck(lambda x, m, e, w, b: _GatedMaps.apply(x, m, e, w, b, c3),
                                    (x, m, extra, c3.weight, c3.bias))
    assert torch.autograd.gradcheck(lambda x, m, w, b: _GatedMaps.apply(x, m, None, w, b, c2), (x, m, c2.weight, c2.bias))
    with pytest.raises(ValueError, match="conv must be"):
        _GatedMaps.apply(x, m, extra, c2.weight, c2.bias, c3)


def test_fused_attention_in_float32_and_on_a_non_contiguous_map():
    att, ref = _attention_pair("cscnn", torch.float32)
    feat = torch.randn(4, 12, 10, 8).transpose(2, 3)  # non-contiguous input
    cat = torch.tensor([3, 0, 3, 1])
    torch.testing.assert_close(att(feat, cat), ref.reference_forward(feat, cat), rtol=1e-5, atol=1e-5)


def test_gradients_reach_cscnn_priors_of_batch_categories_only():
    torch.manual_seed(0)
    att = CSCNNAttention(8, n_categories=6, prior_channels=3, prior_spatial=4, reduction=2)
    with torch.no_grad():  # non-zero priors and weights so every path carries gradient
        att.channel_prior.weight.normal_()
        att.spatial_prior.weight.normal_()
    att(torch.randn(4, 8, 9, 9), torch.tensor([1, 4, 1, 2])).square().sum().backward()
    for table in (att.channel_prior.weight.grad, att.spatial_prior.weight.grad):
        nonzero = table.abs().sum(1) > 0
        assert nonzero.tolist() == [False, True, True, False, True, False]


def test_gradients_reach_priors_inside_the_model_from_zero_init(data):
    spec, _, enc, images = data
    model = CTRModel(spec, tiny_cfg(variant="cscnn", backbone="light", attention_layers=2))
    batch = make_batch(enc, images.pixels, images.row_ad, 0, len(enc))
    torch.nn.functional.binary_cross_entropy_with_logits(model(batch), batch.labels).backward()
    cats = set(np.unique(enc.category).tolist())
    atts = [m for m in model.modules() if isinstance(m, CSCNNAttention)]
    assert len(atts) == 2
    for att in atts:
        for table in (att.channel_prior.weight.grad, att.spatial_prior.weight.grad):
            rows = set(torch.nonzero(table.abs().sum(1) > 0).flatten().tolist())
            assert rows == cats


@pytest.mark.parametrize("backbone,channels_last_layer", [("light", 128), ("resnet18", 512)])
def test_visual_tower_shapes(backbone, channels_last_layer):
    tower = build_visual_tower(tiny_cfg(variant="cscnn", backbone=backbone, attention_layers=3), n_categories=4)
    feats = tower.features(torch.randn(2, 3, 32, 32), torch.tensor([0, 3]))
    assert feats.shape == (2, channels_last_layer)
    assert tower(torch.randn(2, 3, 32, 32), torch.tensor([0, 3])).shape == (2, 6)
    n_att = sum(isinstance(m, CSCNNAttention) for m in tower.modules())
    assert n_att == 3


def test_resnet18_takes_attention_on_all_16_convs_but_not_conv1():
    tower = build_visual_tower(tiny_cfg(variant="cbam", backbone="resnet18", attention_layers=16), n_categories=2)
    assert sum(isinstance(m, CBAM) for m in tower.modules()) == 16
    with pytest.raises(ConfigError, match="attention_layers.*17"):
        build_visual_tower(tiny_cfg(variant="cbam", backbone="resnet18", attention_layers=17), n_categories=2)


def test_resnet18_is_torchvisions_resnet18_without_its_classifier():
    """Same parameter and buffer names (models saved with the torchvision-built backbone load),
    same shapes and count, same initialisation statistics, same output for the same weights."""
    ours = build_visual_tower(tiny_cfg(variant="cnn_finetune", backbone="resnet18", attention_layers=0), n_categories=2).backbone
    ref = torchvision.models.resnet18(weights=None)
    names = {"conv1": "stem.0", "bn1": "stem.1"}
    for i, (layer, block) in enumerate((l, b) for l in (1, 2, 3, 4) for b in (0, 1)):
        names[f"layer{layer}.{block}."] = f"blocks.{i}."
    mapped = {}
    for k, v in ref.state_dict().items():
        if k.startswith("fc."):
            continue
        for a, b in names.items():
            if k.startswith(a):
                k = b + k[len(a):]
                break
        mapped[k] = v
    assert list(ours.state_dict()) == list(mapped)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in mapped.items()}
    convs = [m for m in ours.modules() if isinstance(m, torch.nn.Conv2d)]
    ref_convs = [m for m in ref.modules() if isinstance(m, torch.nn.Conv2d)]
    for c, r in zip(convs, ref_convs, strict=True):  # kaiming normal, fan_out: std sqrt(2 / fan_out)
        assert abs(c.weight.std().item() - r.weight.std().item()) < 0.15 * r.weight.std().item()
    assert all(bool((m.weight == 1).all() and (m.bias == 0).all())
               for m in ours.modules() if isinstance(m, torch.nn.BatchNorm2d))
    ours.load_state_dict(mapped)
    ours.eval(), ref.eval()
    x = torch.randn(2, 3, 64, 64)
    body = torch.nn.Sequential(*list(ref.children())[:-2])
    torch.testing.assert_close(ours(x, torch.tensor([0, 1])), body(x))


@pytest.mark.parametrize("variant", ["dcn", "cnn_fixed", "cnn_finetune", "cbam", "cscnn"])
def test_every_variant_runs_forward_and_backward(variant, data):
    spec, _, enc, images = data
    torch.manual_seed(0)  # wider than TINY so that no ReLU layer is dead for the whole batch
    model = CTRModel(spec, tiny_cfg(variant=variant, attention_layers=2, deep_dims=(32, 32, 32), head_dims=(32,)))
    if variant == "cnn_fixed":
        model.tower.freeze_backbone()
    batch = make_batch(enc, images.pixels, images.row_ad, 0, len(enc))
    logits = model(batch)
    assert logits.shape == (len(enc),)
    torch.nn.functional.binary_cross_entropy_with_logits(logits, batch.labels).backward()
    assert model.dcn.out.weight.grad is not None
    if variant == "dcn":
        assert model.tower is None
    elif variant == "cnn_fixed":
        assert all(p.grad is None for p in model.tower.backbone.parameters())
        assert model.tower.proj.weight.grad is not None
        model.train()
        assert not model.tower.backbone.training
    else:
        assert model.tower.backbone.stem[0].weight.grad.abs().sum() > 0


def test_bad_config_values_give_clear_errors(data):
    spec = data[0]
    with pytest.raises(ConfigError, match="model.variant.*'dcnn'"):
        load_config(overrides={"model.variant": "dcnn"})
    with pytest.raises(ConfigError, match="model.attention_layers.*5.*0..4.*light"):
        CTRModel(spec, tiny_cfg(variant="cscnn", backbone="light", attention_layers=5))
    with pytest.raises(ConfigError, match="model.backbone"):
        ModelConfig(backbone="vgg")


def test_bad_examples_give_clear_errors(data):
    spec, df, _, _ = data
    bad = df.copy()
    bad.loc[0, "f_brand_id"] = 11
    with pytest.raises(ValueError, match="'brand_id' has id 11 outside \\[0, 11\\)"):
        encode_examples(bad, spec)
    with pytest.raises(ValueError, match="lack column.*m_title_words"):
        encode_examples(df.drop(columns=["m_title_words"]), spec)
    bad = df.copy()
    bad.loc[2, "label"] = 2
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        encode_examples(bad, spec)


def test_encode_accepts_pandas_arrow_and_dict(data):
    spec, df, enc, _ = data
    from_arrow = encode_examples(pa.Table.from_pandas(df, preserve_index=False), spec)
    from_dict = encode_examples({c: df[c].tolist() if c.startswith("m_") else df[c].to_numpy() for c in df}, spec)
    for other in (from_arrow, from_dict):
        assert np.array_equal(other.single, enc.single)
        for name in enc.multi:
            assert np.array_equal(other.multi[name][0], enc.multi[name][0])
            assert np.array_equal(other.multi[name][1], enc.multi[name][1])


@pytest.mark.parametrize("variant", ["cbam", "cscnn"])
def test_grouped_and_per_impression_give_same_loss_and_gradients(variant, data):
    """float64, BatchNorm in eval mode (running statistics): batch statistics of U unique images
    and of B repeated images differ by design, everything else must agree."""
    spec, _, enc, images = data
    torch.manual_seed(1)
    model = CTRModel(spec, tiny_cfg(variant=variant, attention_layers=4)).double().eval()
    for m in model.modules():
        if isinstance(m, CSCNNAttention):
            torch.nn.init.normal_(m.channel_prior.weight)
            torch.nn.init.normal_(m.spatial_prior.weight)
    results = []
    for grouped in (True, False):
        model.zero_grad()
        batch = make_batch(enc, images.pixels, images.row_ad, 0, len(enc), grouped=grouped).to("cpu", torch.float64)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch), batch.labels)
        loss.backward()
        results.append((batch.images.shape[0], loss.item(),
                        {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (u, loss_g, grads_g), (b, loss_p, grads_p) = results
    assert u == len(np.unique(enc.ad_id)) and b == len(enc)
    assert abs(loss_g - loss_p) < 1e-12
    assert grads_g.keys() == grads_p.keys()
    for name in grads_g:
        assert torch.allclose(grads_g[name], grads_p[name], rtol=1e-6, atol=1e-9), name


def test_plan_batches_keeps_groups_whole():
    groups = np.array([1, 1, 1, 2, 2, 3, 3, 3, 3, 3, 3, 4])
    plan = plan_batches(groups, batch_size=5)
    assert plan == [(0, 5), (5, 11), (11, 12)]
    assert plan_batches(np.array([], np.int64), 4) == []


def test_speed_benchmark_times_fused_and_reference_towers_on_the_same_inputs():
    times = tower_round_times(torch.device("cpu"), batch=2, rounds=2, warmup=1, image_size=32, attention_layers=2,
                              n_categories=7, reference=True)
    assert sorted(times) == ["cbam", "cbam_reference", "cscnn", "cscnn_reference", "resnet18"]
    assert all(len(ts) == 2 and min(ts) > 0 for ts in times.values())

    torch.manual_seed(0)
    tower = build_visual_tower(tiny_cfg(variant="cscnn", backbone="resnet18", attention_layers=4), n_categories=3)
    reference = _use_reference_forward(copy.deepcopy(tower))
    swapped = [m.forward.__func__ for m in reference.modules() if isinstance(m, CSCNNAttention)]
    assert swapped == [CSCNNAttention.reference_forward] * 4
    images, cats = torch.randn(2, 3, 32, 32), torch.tensor([2, 0])
    torch.testing.assert_close(tower(images, cats), reference(images, cats), rtol=1e-5, atol=1e-5)
