"""The explainer (explain.py): attribution that points at the deciding ink, feature maps, a sentence from the
numbers; on the API, the REST endpoint and the command line."""

from __future__ import annotations

import copy
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

pytest.importorskip("captum", reason="the explainer needs the explain extra: pip install -e '.[explain]'")

from mnist_cnn import checkpoint, cli, explain, images, models, preprocess# noqa: E402
from mnist_cnn.errors import UserError  # noqa: E402
from mnist_cnn.models import unwrap  # noqa: E402
from mnist_cnn.predict import Predictor  # noqa: E402
from mnist_cnn.recipes import get_config  # noqa: E402


def seven_png() -> bytes:
    img = Image.new("L", (280, 280), 255)
    ImageDraw.Draw(img).line([(60, 50), (220, 50), (120, 250)], fill=0, width=20)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def shipped():
    return Predictor.from_path()


@pytest.fixture(scope="module")
def seven():
    return preprocess.to_mnist(images.decode(seven_png()))


@pytest.fixture(scope="module")
def seed_checkpoint(tmp_path_factory):
    """An (untrained) seed-notebook network as a self-describing checkpoint."""
    cfg = get_config("seed")
    net = models.build_model(cfg.model, **cfg.model_args).eval()
    path = tmp_path_factory.mktemp("seed") / "seed.safetensors"
    checkpoint.save_model(path, net, checkpoint.model_metadata(cfg))
    return path


def test_the_shipped_network_is_explained_stage_by_stage(shipped, seven):
    e = shipped.explain(seven)
    assert e.digit == 7 and e.probabilities == pytest.approx(shipped.predict_arrays(seven[None])[0].probabilities)
    assert e.attribution.shape == (28, 28) and np.abs(e.attribution).max() == pytest.approx(1.0)
    assert [s.shape for s in e.stages] == [(32, 28, 28), (64, 14, 14), (128, 7, 7)]
    for s in e.stages:
        assert s.maps.shape == (explain.MAX_MAPS, min(s.shape[1], explain.MAP_SIDE), min(s.shape[2], explain.MAP_SIDE))
        assert s.strength == sorted(s.strength, reverse=True)  # strongest first
    assert e.filters.shape == (explain.MAX_MAPS, 3, 3)
    assert e.sentence.startswith(("surely 7", "mostly 7")) and e.ink_share >= 0.7


def test_the_seed_network_is_explained_too(seed_checkpoint, seven):
    e = Predictor.from_path(seed_checkpoint).explain(seven, "occlusion")
    assert [s.shape for s in e.stages] == [(150, 28, 28), (64, 14, 14)]
    assert e.filters.shape == (explain.MAX_MAPS, 5, 5) and e.attribution.shape == (28, 28)
    json.dumps(explain.to_json(e))  # what the endpoint sends


def test_the_sentence_says_only_what_the_numbers_say():
    ink = np.zeros((28, 28), bool)
    ink[4:24, 10:18] = True
    attribution = np.zeros((28, 28), np.float32)
    attribution[4:10, 10:18] = 1.0  # all of it at the top of the digit
    e = explain.Explanation(digit=1, probabilities=[0.0] * 10, attribution=attribution)
    e.probabilities[1], e.probabilities[7] = 0.93, 0.07
    e.runner_up, e.runner_up_attribution = 7, attribution
    text = explain.describe(e, ink)
    assert text.startswith("mostly 1 (93%)") and "the top" in text and "7 came second (7%)" in text
    assert "bottom" not in text


def test_bad_requests_are_user_errors(shipped, seven):
    with pytest.raises(UserError, match="unknown explanation method"):
        shipped.explain(seven, "saliency")
    with pytest.raises(UserError, match="28x28 uint8"):
        explain.explain(shipped.model, seven.float(), 0.0, 1.0)


def test_the_api_explains_a_picture(tmp_path):
    import mnist_cnn

    path = tmp_path / "seven.png"
    path.write_bytes(seven_png())
    model = mnist_cnn.load()
    e = model.explain(str(path))
    assert e.digit == 7 and len(e.stages) == 3
    assert model.explain(Image.new("L", (64, 64), 255)) is None  # no ink: nothing to explain


def test_the_endpoint_answers_with_the_prediction_and_its_explanation(shipped):
    from fastapi.testclient import TestClient

    from mnist_cnn import serve

    with TestClient(serve.create_app(shipped)) as client:
        files = {"file": ("seven.png", seven_png(), "image/png")}
        body = client.post("/api/explain", files=files).json()
        assert body["prediction"]["digit"] == 7 and body["explanation"]["digit"] == 7
        assert np.array(body["explanation"]["attribution"]).shape == (28, 28)
        assert [s["shape"] for s in body["explanation"]["stages"]] == [[32, 28, 28], [64, 14, 14], [128, 7, 7]]
        assert client.post("/api/explain?method=nope", files=files).status_code == 422
        blank = io.BytesIO()
        Image.new("L", (64, 64), 255).save(blank, "PNG")
        empty = client.post("/api/explain", files={"file": ("blank.png", blank.getvalue(), "image/png")}).json()
        assert empty["explanation"] is None and empty["prediction"]["status"] == "empty"


def test_the_command_line_writes_the_figure(tmp_path, capsys):
    image, out = tmp_path / "seven.png", tmp_path / "explain.png"
    image.write_bytes(seven_png())
    assert cli.main(["explain", str(image), "--out", str(out)]) == 0
    assert Image.open(out).size[0] > 500
    assert "7" in capsys.readouterr().out


# ------------------------------------------------------------ sanity of the attributions (real test digits)


@pytest.fixture(scope="module")
def digits(test_split):
    x, _ = test_split
    return x[:200]


def _probability(model, meta, x, digit) -> float:
    inp = ((x.float() / 255 - meta["mean"]) / meta["std"])[None, None]
    with torch.no_grad():
        return float(model(inp).softmax(1)[0, digit])


def test_blanking_the_top_attributed_ink_hurts_more_than_random_ink(shipped, digits):
    """Blank the 10% of ink pixels with the most attribution, or a random 10%: the first must lower the
    answer's probability more, on average over 200 test digits (an attribution that points at nothing
    in particular fails this)."""
    rng = np.random.default_rng(0)
    model, meta = shipped.model, shipped.meta
    top_drop, random_drop = [], []
    for x in digits:
        e = explain.explain(model, x, meta["mean"], meta["std"])
        ink = np.argwhere(x.numpy() >= explain.INK)
        k = max(1, len(ink) // 10)
        for cells, drops in ((ink[np.argsort(-e.attribution[tuple(ink.T)])[:k]], top_drop),
                             (ink[rng.choice(len(ink), k, replace=False)], random_drop)):
            blanked = x.clone()
            blanked[tuple(torch.as_tensor(cells).T)] = 0
            drops.append(e.probabilities[e.digit] - _probability(model, meta, blanked, e.digit))
    assert np.mean(top_drop) > 2 * np.mean(random_drop)


def test_a_network_with_random_weights_is_explained_differently(shipped, digits):
    """Adebayo et al. (2018): an attribution that survives randomizing the weights explains the input,
    not the network. The trained and randomized networks' maps must be nearly uncorrelated."""
    meta = shipped.meta
    scrambled = copy.deepcopy(unwrap(shipped.model)[0])
    with torch.random.fork_rng():
        torch.manual_seed(0)
        for layer in scrambled.modules():  # every layer re-initialized as before training
            if hasattr(layer, "reset_parameters"):
                layer.reset_parameters()
    corr = [np.corrcoef(explain.explain(shipped.model, x, meta["mean"], meta["std"]).attribution.ravel(),
                        explain.explain(scrambled, x, meta["mean"], meta["std"]).attribution.ravel())[0, 1]
            for x in digits[:50]]
    assert np.mean(corr) < 0.3
