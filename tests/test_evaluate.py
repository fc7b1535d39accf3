"""Evaluation: metrics against a hand-computed oracle, and the shipped model scoring what it claims."""

from __future__ import annotations

import json

import pytest
import torch

from mnist_cnn import checkpoint, cli, data, figures
from mnist_cnn.evaluation import evaluate, fit_temperature, metrics_from_logits


def test_metrics_match_a_hand_computed_confusion_matrix():
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    pred = torch.tensor([0, 1, 1, 1, 2, 0])
    logits = torch.nn.functional.one_hot(pred, 3).float() * 5
    m = metrics_from_logits(logits, y)
    assert m.confusion == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m.accuracy == pytest.approx(400 / 6)
    assert m.per_class == pytest.approx([50.0, 100.0, 50.0])
    assert m.n == 6 and m.predictions.tolist() == pred.tolist()
    text = m.describe(["a", "b", "c"]).splitlines()
    assert text[0].startswith("test accuracy: 66.67% of 6 images")
    assert text[1] == "per-class accuracy: a:50.0  b:100.0  c:50.0"
    assert text[-3:] == ["     a     1     1     0", "     b     0     2     0", "     c     1     0     1"]


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_fit_temperature_undoes_a_known_scaling(scale):
    """Labels drawn from softmax(z): logits z * scale are best calibrated by T = scale."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(20000, 10, generator=g) * 3
    y = torch.multinomial(z.softmax(1), 1, generator=g).squeeze(1)
    assert fit_temperature(z * scale, y) == pytest.approx(scale, rel=0.05)


def test_shipped_model_is_calibrated(mnist_dir):
    """Its temperature (fitted on the validation split) brings the test ECE from ~10% to under 2%."""
    model, meta = checkpoint.load_model()
    assert 0 < meta["temperature"] < 1  # label smoothing and TTA leave the raw network under-confident
    x, y = data.read_split(mnist_dir, "test")
    calibrated = evaluate(model, x, y, meta["mean"], meta["std"], tta=meta["config"]["tta"])
    raw = evaluate(model.model, x, y, meta["mean"], meta["std"], tta=meta["config"]["tta"])
    assert figures.calibration(calibrated.probabilities, y)["ece"] < 2.0
    assert figures.calibration(raw.probabilities, y)["ece"] > 5.0  # so the check above could fail
    assert calibrated.accuracy == raw.accuracy


def test_shipped_model_scores_what_its_metadata_claims(mnist_dir, capsys):
    """The embedded default model, on the real test set, within 0.05 points of its stated accuracy."""
    _, meta = checkpoint.load_model()
    assert checkpoint.default_model_path().stat().st_size <= 2 * 1024 * 1024
    assert cli.main(["evaluate", "--json", "--data-dir", str(mnist_dir), "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 10000
    assert abs(report["accuracy"] - meta["metrics"]["test_accuracy"]) <= 0.05
    assert len(report["samples"]["truth"]) == 10 == len(report["samples"]["predicted"])


def test_evaluate_prints_the_notebooks_rows(mnist_dir, capsys):
    assert cli.main(["evaluate", "--samples", "7", "--data-dir", str(mnist_dir), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy:" in out and "confusion matrix" in out
    truth = next(line for line in out.splitlines() if line.startswith("GroundTruth:"))
    assert len(truth.split()) == 1 + 7
