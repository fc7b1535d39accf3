"""`mnist-cnn convert`: the seed notebook's own network, saved as the notebook would, loads with the same logits."""

from __future__ import annotations

import subprocess

import pytest
import torch
import torch.nn as nn
from PIL import Image, ImageDraw
from seed_notebook import Net

from mnist_cnn import checkpoint, cli


@pytest.fixture(scope="module")
def notebook(tmp_path_factory):
    """The notebook's own network (tests/seed_notebook.py) with random weights, saved with torch.save(state_dict)."""
    torch.manual_seed(0)
    net = Net().eval()
    path = tmp_path_factory.mktemp("notebook") / "notebook_model.pt"
    torch.save(net.state_dict(), path)
    return net, path


def test_converted_notebook_model_gives_the_notebooks_logits(notebook, tmp_path, capsys):
    net, pt = notebook
    out = tmp_path / "model.safetensors"
    assert cli.main(["convert", str(pt), "--arch", "seed", "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    model, meta = checkpoint.load_model(out)
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))  # ToTensor() range, as trained
    with torch.inference_mode():
        assert torch.allclose(model(x), net(x), atol=1e-5, rtol=0)
    assert (meta["arch"], meta["mean"], meta["std"]) == ("seed", 0.0, 1.0)  # the notebook used ToTensor() alone
    assert meta["converted_from"]["file"] == "notebook_model.pt"
    # and it is an ordinary --model now
    digit = tmp_path / "digit.png"
    img = Image.new("L", (56, 56), 255)
    ImageDraw.Draw(img).line([(28, 8), (28, 48)], fill=0, width=5)  # a "1"
    img.save(digit)
    assert cli.main(["predict", "--model", str(out), str(digit)]) == 0


def test_a_state_dict_as_model_points_to_convert(notebook, capsys):
    """It used to say "not a valid safetensors file (truncated or corrupt?)"."""
    _, pt = notebook
    assert cli.main(["predict", "--model", str(pt), "x.png"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a torch.save file" in err and f"mnist-cnn convert {pt} --arch seed" in err
    with pytest.raises(checkpoint.CheckpointError, match="mnist-cnn convert"):
        checkpoint.load_model(pt)


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (subprocess.call, (["touch", self.marker],))


def test_a_file_with_pickled_code_is_refused_without_running_it(tmp_path, capsys):
    marker = tmp_path / "the-pickled-code-ran"
    bad = tmp_path / "evil.pt"
    torch.save({"conv1.weight": _Payload(marker)}, bad)
    assert cli.main(["convert", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not unpickled" in err and "torch.save(model.state_dict(), PATH)" in err
    assert not (tmp_path / "evil.safetensors").exists()
    assert not marker.exists(), "the pickled code ran"


def test_weights_of_another_network_are_named_not_loaded(tmp_path, capsys):
    pt = tmp_path / "other.pt"
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).state_dict(), pt)
    assert cli.main(["convert", str(pt), "--arch", "seed"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {pt}: not the weights of --arch seed, the seed notebook's Net") and err.count("\n") == 1
    assert "missing conv1.bias, conv1.weight, conv2.bias" in err
    assert "unexpected 1.bias, 1.weight" in err and not (tmp_path / "other.safetensors").exists()


def test_wrapped_and_nested_state_dicts_are_unwrapped(notebook, tmp_path):
    """A DataParallel model's keys start with "module."; training scripts often save {"state_dict": ..., "epoch": ...}."""
    net, _ = notebook
    pt = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}, "epoch": 3}, pt)
    assert cli.main(["convert", str(pt)]) == 0
    model, _ = checkpoint.load_model(tmp_path / "wrapped.safetensors")
    x = torch.rand(4, 1, 28, 28)
    with torch.inference_mode():
        assert torch.allclose(model(x), net(x), atol=1e-5, rtol=0)
