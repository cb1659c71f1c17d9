"""The predictor against the full model on synthetic data; bad requests; tampered files (no Spark)."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest
import torch

from core.config import load_config
from features.encoder import save_encoder
from features.spec import FeatureSpec
from models.train import embed_images, load_model, predict, train
from serving import predict as predict_cli
from serving import predictor as predictor_module
from serving import registry
from serving.lookup import IntegrityError, make_reduction, sha256_file, write_lookup_files
from serving.predictor import PRECISION_TOLERANCE, InferenceHead, ModelHead, Predictor
from serving.requests import RequestError
from spark_jobs.build_lookup import stack_images
from tests.serving.helpers import identity_encoder, requests_from_examples, small_cfg, synthetic_world

REDUCED = [p for p in PRECISION_TOLERANCE if p != "fp32"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A trained tiny CSCNN model and float32 serving files of every ad of its examples."""
    root = tmp_path_factory.mktemp("predictor")
    spec, df, images, ad_code = synthetic_world()
    cfg = small_cfg(root)
    train(cfg, spec, df, None, images, root / "model")
    model_path = root / "model" / "model.pt"
    model = load_model(model_path)
    ads = np.unique(df["ad_id"].to_numpy())
    cats = df.groupby("ad_id")["category_idx"].first().loc[ads].to_numpy()
    x_v = embed_images(model, stack_images(images, ads), cats)
    lookup = root / "lookup"
    lookup.mkdir()
    save_encoder(identity_encoder(ad_code), lookup / "encoder.npz")
    write_lookup_files(lookup, ads, cats, x_v, make_reduction(x_v, "none", 4), run_date="2026-01-03",
                       model_version="test", model_sha256=sha256_file(model_path),
                       extra_files={"encoder.npz": str(lookup / "encoder.npz")})
    return model, model_path, lookup, df, images


def test_predictor_scores_equal_model_scores_for_covered_ads(served):
    model, model_path, lookup, df, images = served
    predictor = Predictor.load(model_path, lookup, precision="fp32")
    result = predictor.score_records(requests_from_examples(df))
    expected = predict(model, df, images)
    assert result.in_table.all() and result.fallbacks == 0
    np.testing.assert_allclose(result.scores, expected, atol=1e-4, rtol=0)
    assert abs(float(result.scores.std())) > 0  # not a constant predictor


def test_missing_ad_gets_its_category_mean_and_is_counted(served):
    _, model_path, lookup, df, _ = served
    predictor = Predictor.load(model_path, lookup)
    reqs = requests_from_examples(df.head(3))
    reqs[1]["ad_id"] = 999_999
    result = predictor.score_records(reqs)
    assert result.in_table.tolist() == [True, False, True] and predictor.fallbacks == 1
    assert np.isfinite(result.scores).all()


@pytest.mark.parametrize("change, message", [
    ({"colour": 3}, "unknown field 'colour'"),
    ({"hour": "20"}, "field 'hour'"),
    ({"price": True}, "field 'price'"),
    ({"title_words": [1, "x"]}, "field 'title_words'"),
    ({"user_id": None}, "required field 'user_id'"),
])
def test_bad_requests_name_the_field(served, change, message):
    _, model_path, lookup, df, _ = served
    reqs = requests_from_examples(df.head(2))
    reqs[1].update(change)
    with pytest.raises(RequestError, match=message) as err:
        Predictor.load(model_path, lookup).score_records(reqs)
    assert "request 1" in str(err.value)


def test_tampered_model_file_is_refused_by_name(served, tmp_path):
    _, model_path, lookup, _, _ = served
    copy = tmp_path / "model.pt"
    payload = torch.load(model_path, weights_only=True)
    key = next(k for k in payload["state_dict"] if k.startswith("dcn."))
    payload["state_dict"][key] = payload["state_dict"][key] + 1.0
    torch.save(payload, copy)
    with pytest.raises(IntegrityError, match="model.pt"):
        Predictor.load(copy, lookup)


def test_predict_cli_scores_the_current_version(served, tmp_path, capsys):
    model, model_path, lookup, df, images = served
    cfg = small_cfg(tmp_path / "var")
    record = tmp_path / "validation.json"
    record.write_text(json.dumps({"serving_precisions": ["fp32", "bf16"]}))
    entry = registry.stage_version(cfg, dt.date(2026, 1, 3), {"model/model.pt": model_path, "lookup": lookup,
                                                               "validation.json": record}, {})
    registry.switch_current(cfg, entry)
    requests = tmp_path / "requests.jsonl"
    requests.write_text("\n".join(json.dumps(r) for r in requests_from_examples(df.head(4))) + "\n")
    argv = ["--requests", str(requests), "--set", f"storage.root={tmp_path / 'var'}"]
    assert predict_cli.main(argv) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    np.testing.assert_allclose([x["pctr"] for x in lines], predict(model, df.head(4), images), atol=1e-4)

    assert predict_cli.main(argv + ["--precision", "bf16"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    np.testing.assert_allclose([x["pctr"] for x in lines], predict(model, df.head(4), images),
                               atol=PRECISION_TOLERANCE["bf16"])

    requests.write_text(json.dumps({**requests_from_examples(df.head(1))[0], "hour": 3.5}) + "\n")
    assert predict_cli.main(argv) == 2
    assert "field 'hour'" in capsys.readouterr().err


def test_files_without_a_validation_record_are_served_in_fp32_by_default(served):
    model, model_path, lookup, df, images = served
    predictor = Predictor.load(model_path, lookup)
    assert predictor.precision == "fp32"
    np.testing.assert_allclose(predictor.score_records(requests_from_examples(df)).scores, predict(model, df, images),
                               atol=PRECISION_TOLERANCE["fp32"], rtol=0)


@pytest.mark.parametrize("native", [True, False])
def test_a_version_is_served_only_in_the_precisions_its_record_allows(served, tmp_path, monkeypatch, native):
    _, model_path, lookup, _, _ = served
    monkeypatch.setattr(predictor_module, "native_bf16", lambda: native)
    cfg = small_cfg(tmp_path / "var")
    record = tmp_path / "validation.json"

    def stage(with_record: bool):
        """A published folder (sealed by its version.json) and its pointer entry."""
        sources = {"model/model.pt": model_path, "lookup": lookup, **({"validation.json": record} if with_record else {})}
        entry = registry.stage_version(cfg, dt.date(2026, 1, 3), sources, {})
        return registry.version_dir(cfg, entry), entry

    for content, allowed in [(None, ("fp32",)), ({"passed": True}, ("fp32",)),
                             ({"serving_precisions": ["fp32"]}, ("fp32",)),
                             ({"serving_precisions": ["fp32", "bf16"]}, ("fp32", "bf16"))]:
        record.unlink(missing_ok=True)
        if content is not None:
            record.write_text(json.dumps(content))
        assert predictor_module.read_validated_precisions(record) == allowed
        version, entry = stage(content is not None)
        auto = Predictor.load_version(version, entry).precision
        assert auto == ("bf16" if native and "bf16" in allowed else "fp32")
        if "bf16" in allowed:
            assert Predictor.load_version(version, entry, precision="bf16").precision == "bf16"
        else:
            with pytest.raises(ValueError, match="precision 'bf16' was not validated for this version"):
                Predictor.load_version(version, entry, precision="bf16")
    record.write_text("{not json")
    with pytest.raises(IntegrityError, match="validation.json"):
        Predictor.load_version(*stage(True))


@pytest.mark.parametrize("precision", REDUCED)
def test_reduced_precision_scores_within_tolerance_of_the_fp32_model(served, precision):
    model, model_path, lookup, df, images = served
    reqs = requests_from_examples(df)
    scores = Predictor.load(model_path, lookup, precision=precision).score_records(reqs).scores
    fp32 = Predictor.load(model_path, lookup, precision="fp32").score_records(reqs).scores
    np.testing.assert_allclose(scores, predict(model, df, images), atol=PRECISION_TOLERANCE[precision], rtol=0)
    assert not np.array_equal(scores, fp32)  # the reduced arithmetic is really in use


def test_unknown_precision_is_refused_by_name(served):
    _, model_path, lookup, _, _ = served
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        Predictor.load(model_path, lookup, precision="fp8")


def _random_head(seed: int) -> tuple[ModelHead, dict]:
    """A head over a few fields with variance-preserving weights and encoded inputs with empty bags."""
    spec = FeatureSpec(single={"category_id": 5, "user_id": 30, "hour": 24}, multi={"title_words": 40, "hist_shops": 9})
    cfg = load_config(overrides={"model.deep_dims": [64, 32], "model.head_dims": [16], "model.visual_dim": 12}).model
    torch.manual_seed(seed)
    head = ModelHead(spec, cfg).eval()
    with torch.no_grad():
        for m in head.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.normal_(0, (2 / m.in_features) ** 0.5)
            elif isinstance(m, (torch.nn.Embedding, torch.nn.EmbeddingBag)):
                m.weight.normal_(0, 0.5)
        head.dcn.out.weight.mul_(0.1)
    rng = np.random.default_rng(seed)
    b = 64
    single = np.stack([rng.integers(0, spec.single[n], b) for n in head.embedding.single_names], axis=1)
    values, offsets = {}, {}
    for n in head.embedding.multi_names:
        lengths = rng.integers(0, 4, b)  # some requests have an empty list
        values[n] = rng.integers(0, spec.multi[n], int(lengths.sum()))
        offsets[n] = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    x_v = rng.normal(size=(b, 12)).astype(np.float32)
    return head, {"single": single, "multi_values": values, "multi_offsets": offsets, "x_v": x_v}


@pytest.mark.parametrize("precision", ["fp32", *REDUCED])
def test_inference_head_matches_model_head(precision):
    head, inputs = _random_head(3)
    with torch.inference_mode():
        expected = torch.sigmoid(head(torch.from_numpy(inputs["single"]),
                                      {k: torch.from_numpy(v) for k, v in inputs["multi_values"].items()},
                                      {k: torch.from_numpy(v) for k, v in inputs["multi_offsets"].items()},
                                      torch.from_numpy(inputs["x_v"]))).numpy()
        got = torch.sigmoid(InferenceHead(head, precision).logits(**inputs)).numpy()
    assert expected.std() > 0.003  # not a constant predictor
    np.testing.assert_allclose(got, expected, atol=PRECISION_TOLERANCE[precision], rtol=0)


def test_inference_head_refuses_ids_outside_the_vocabulary():
    head, inputs = _random_head(4)
    inference = InferenceHead(head)
    bad_single = inputs["single"].copy()
    bad_single[5, head.embedding.single_names.index("user_id")] = 30
    with pytest.raises(ValueError, match="field 'user_id'"):
        inference.logits(**{**inputs, "single": bad_single})
    bad_values = dict(inputs["multi_values"], title_words=np.array([1, 40]))  # 40 = the vocabulary size
    bad_offsets = dict(inputs["multi_offsets"], title_words=np.zeros(64, np.int64))
    with pytest.raises(ValueError, match="field 'title_words'"):
        inference.logits(**{**inputs, "multi_values": bad_values, "multi_offsets": bad_offsets})
