"""The predictor against the full model on synthetic data; bad requests; tampered files (no Spark)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.train import embed_images, predict, train
from serving.lookup import IntegrityError, make_reduction, sha256_file, write_lookup_files
from serving.predictor import Predictor
from serving.requests import RequestError, save_encoder
from spark_jobs.build_lookup import stack_images

from tests.serving.helpers import identity_encoder, requests_from_examples, small_cfg, synthetic_world


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A trained tiny CSCNN model and float32 serving files of every ad of its examples."""
    root = tmp_path_factory.mktemp("predictor")
    spec, df, images, ad_code = synthetic_world()
    cfg = small_cfg(root)
    train(cfg, spec, df, None, images, root / "model")
    model_path = root / "model" / "model.pt"
    from models.train import load_model

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
    predictor = Predictor.load(model_path, lookup)
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
    import datetime as dt
    import json

    from serving import predict as predict_cli
    from serving import registry
    from tests.serving.helpers import small_cfg

    model, model_path, lookup, df, images = served
    cfg = small_cfg(tmp_path / "var")
    entry = registry.stage_version(cfg, dt.date(2026, 1, 3), {"model/model.pt": model_path, "lookup": lookup}, {})
    registry.switch_current(cfg, entry)
    requests = tmp_path / "requests.jsonl"
    requests.write_text("\n".join(json.dumps(r) for r in requests_from_examples(df.head(4))) + "\n")
    argv = ["--requests", str(requests), "--set", f"storage.root={tmp_path / 'var'}"]
    assert predict_cli.main(argv) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    np.testing.assert_allclose([x["pctr"] for x in lines], predict(model, df.head(4), images), atol=1e-4)

    requests.write_text(json.dumps({**requests_from_examples(df.head(1))[0], "hour": 3.5}) + "\n")
    assert predict_cli.main(argv) == 2
    assert "field 'hour'" in capsys.readouterr().err
