"""Architectures: output shapes, parameter counts, registry."""

from __future__ import annotations

import pytest
import torch

from mnist_cnn import models


def test_seed_network_matches_the_notebook():
    model = models.build_model("seed")
    assert models.count_parameters(model) == 3_973_762
    assert model.flat == 64 * 7 * 7
    out = model.eval()(torch.randn(4, 1, 28, 28))
    assert out.shape == (4, 10)
    # It ends in log_softmax, as the notebook did: each row's probabilities sum to 1.
    assert torch.allclose(out.exp().sum(1), torch.ones(4), atol=1e-5)


def test_reference_network_is_the_pytorch_example():
    model = models.build_model("reference")
    assert model.fc1.in_features == 9216
    assert models.count_parameters(model) == 1_199_882
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("widths, depth", [((16, 32, 64), 1), ((24, 48, 96), 2)])
def test_bnnet_returns_logits_for_any_widths(widths, depth):
    model = models.build_model("bnnet", widths=widths, depth=depth).eval()
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert model.head.in_features == widths[-1] * (28 >> len(widths)) ** 2


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        models.build_model("nope")
