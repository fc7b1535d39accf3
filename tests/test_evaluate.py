"""Evaluation: metrics against a hand-computed oracle, and the shipped model scoring what it claims."""

from __future__ import annotations

import json

import pytest
import torch

from mnist_cnn import checkpoint, cli
from mnist_cnn.evaluate import metrics_from_logits


def test_metrics_match_a_hand_computed_confusion_matrix():
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    pred = torch.tensor([0, 1, 1, 1, 2, 0])
    logits = torch.nn.functional.one_hot(pred, 3).float() * 5
    m = metrics_from_logits(logits, y)
    assert m.confusion == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m.accuracy == pytest.approx(400 / 6)
    assert m.per_class == pytest.approx([50.0, 100.0, 50.0])
    assert m.n == 6 and m.predictions.tolist() == pred.tolist()


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
