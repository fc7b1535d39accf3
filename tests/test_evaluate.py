"""Evaluation: metrics against a hand-computed oracle, and the shipped model scoring what it claims."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch

from mnist_cnn import checkpoint, cli, data, figures, models
from mnist_cnn.evaluation import TTA_SHIFTS, fit_temperature, metrics_from_logits


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


@pytest.fixture(scope="module")
def shipped_evaluation(mnist_dir):
    """One `mnist-cnn evaluate --json` of the shipped model on all 10,000 test images: the expensive pass, shared.

    On the way, the uncalibrated network's logits for every test-time-augmentation copy are recorded
    (the calibrated model is that network's logits divided by its temperature, as `models.Calibrated` does).
    Returns (the printed report, metadata, labels, recorded raw logits (shifts, N, 10)).
    """
    model, meta = checkpoint.load_model()
    assert isinstance(model, models.Calibrated) and 0 < model.temperature < 1  # under-confident without it
    raw = []

    class Recording(torch.nn.Module):
        def forward(self, x):
            raw.append(model.model(x))
            return raw[-1] / model.temperature

    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        mp.setattr(checkpoint, "load_model", lambda *args, **kwargs: (Recording(), meta))
        assert cli.main(["evaluate", "--json", "--data-dir", str(mnist_dir), "--device", "cpu"]) == 0
    _, y = data.read_split(mnist_dir, "test")
    shifts = len(TTA_SHIFTS) if meta["config"]["tta"] else 1
    per_batch = [torch.stack(raw[i:i + shifts]) for i in range(0, len(raw), shifts)]  # (shifts, batch, 10) each
    return json.loads(out.getvalue()), meta, y, torch.cat(per_batch, 1)


def tta_logits(copies: torch.Tensor) -> torch.Tensor:
    """The TTA average of log-probabilities over the copies (shifts, N, 10), computed here as the oracle."""
    return copies.log_softmax(2).mean(0)


def test_shipped_model_scores_what_its_metadata_claims(shipped_evaluation):
    """The embedded default model, on the real test set, within 0.05 points of its stated accuracy."""
    report, meta, y, raw = shipped_evaluation
    assert checkpoint.default_model_path().stat().st_size <= 2 * 1024 * 1024
    assert report["n"] == 10000 == raw.shape[1]
    assert abs(report["accuracy"] - meta["metrics"]["test_accuracy"]) <= 0.05
    assert len(report["samples"]["truth"]) == 10 == len(report["samples"]["predicted"])
    # What the CLI reported is the TTA of the recorded copies, recomputed here.
    calibrated = metrics_from_logits(tta_logits(raw / meta["temperature"]), y)
    assert report["accuracy"] == pytest.approx(calibrated.accuracy) and report["confusion"] == calibrated.confusion


def test_shipped_model_is_calibrated(shipped_evaluation):
    """Its temperature (fitted on the validation split) brings the test ECE from ~10% to under 2%."""
    _, meta, y, raw = shipped_evaluation
    calibrated = metrics_from_logits(tta_logits(raw / meta["temperature"]), y)
    uncalibrated = metrics_from_logits(tta_logits(raw), y)
    assert figures.calibration(calibrated.probabilities, y)["ece"] < 2.0
    assert figures.calibration(uncalibrated.probabilities, y)["ece"] > 5.0  # so the check above could fail
    assert calibrated.accuracy == uncalibrated.accuracy


def test_evaluate_prints_the_notebooks_rows(mnist_dir, capsys, monkeypatch):
    """On the first 1,000 test images: the layout does not depend on how many there are."""
    read_split = data.read_split
    monkeypatch.setattr(data, "read_split", lambda folder, split: [t[:1000] for t in read_split(folder, split)])
    assert cli.main(["evaluate", "--samples", "7", "--data-dir", str(mnist_dir), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy:" in out and "of 1000 images" in out and "confusion matrix" in out
    truth = next(line for line in out.splitlines() if line.startswith("GroundTruth:"))
    assert len(truth.split()) == 1 + 7
