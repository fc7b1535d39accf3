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


@pytest.mark.parametrize("widths, depth, pool_early", [((16, 32, 64), 1, False), ((24, 48, 96), 2, True)])
def test_bnnet_returns_logits_for_any_widths(widths, depth, pool_early):
    model = models.build_model("bnnet", widths=widths, depth=depth, pool_early=pool_early).eval()
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert model.head.in_features == widths[-1] * (28 >> len(widths)) ** 2


def test_pool_early_is_the_same_function_when_batch_norm_scales_are_positive():
    """Max-pooling commutes with a per-channel increasing map (BN with positive scale, then ReLU).

    So with the same weights, in eval mode, both stage orders must give the same logits.
    """
    torch.manual_seed(0)
    late = models.build_model("bnnet", widths=(8, 16, 32), depth=2)
    early = models.build_model("bnnet", widths=(8, 16, 32), depth=2, pool_early=True)
    for module in late.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.weight.data.uniform_(0.5, 2.0)
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2.0)
    late_state, early_keys = late.state_dict(), list(early.state_dict())
    assert [v.shape for v in late_state.values()] == [early.state_dict()[k].shape for k in early_keys]
    early.load_state_dict(dict(zip(early_keys, late_state.values())))  # same tensors, in layer order
    x = torch.randn(4, 1, 28, 28)
    with torch.inference_mode():
        assert torch.allclose(early.eval()(x), late.eval()(x), atol=1e-5)


def test_a_cropped_network_ignores_the_border_and_sizes_its_head_from_the_crop():
    torch.manual_seed(0)
    model = models.build_model("bnnet", widths=(8, 16, 32), pool_early=True, crop=4).eval()
    assert model.head.in_features == 32 * (20 >> 3) ** 2  # 28 - 2 * 4 = 20 -> 10 -> 5 -> 2
    x = torch.randn(2, 1, 28, 28)
    noisy = x.clone()
    noisy[:, :, :4] = noisy[:, :, -4:] = 9.0  # only the cropped borders change
    noisy[:, :, :, :4] = noisy[:, :, :, -4:] = 9.0
    with torch.inference_mode():
        assert torch.equal(model(x), model(noisy))
        noisy[:, :, 4, 4] = 9.0  # the first pixel inside the crop does count
        assert not torch.equal(model(x), model(noisy))


def test_a_strided_stem_is_one_stride_2_conv_in_place_of_conv_and_pool():
    torch.manual_seed(0)
    model = models.build_model("bnnet", widths=(8, 16, 32), pool_early=True, stride_stem=True).eval()
    stem = model.features[0]
    assert stem[0].stride == (2, 2) and not any(isinstance(m, torch.nn.MaxPool2d) for m in stem)
    assert stem(torch.randn(2, 1, 28, 28)).shape == (2, 8, 14, 14)  # as conv then 2x2 pool would give
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10) and model.head.in_features == 32 * 3 * 3


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        models.build_model("nope")
