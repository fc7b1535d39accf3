"""Checkpoints: save/load round trip, metadata, and clear refusals of bad files."""

from __future__ import annotations


import pytest
import torch

from mnist_cnn import checkpoint, train
from mnist_cnn.recipes import get_config


@pytest.fixture
def saved(tmp_path):
    cfg = get_config("fast")
    # The loaded model uses the default memory layout; compare like with like.
    model = train.build(cfg, "cpu").eval().to(memory_format=torch.contiguous_format)
    path = tmp_path / "model.safetensors"
    checkpoint.save_model(path, model, train.model_metadata(cfg, {"test_accuracy": 12.5}))
    return path, model, cfg


def test_save_then_load_gives_identical_logits(saved):
    path, model, _ = saved
    loaded, meta = checkpoint.load_model(path)
    x = torch.randn(8, 1, 28, 28)
    with torch.inference_mode():
        assert torch.equal(model(x), loaded(x))
    assert not loaded.training


def test_a_checkpoints_temperature_divides_its_logits(saved, tmp_path):
    path, model, cfg = saved
    calibrated = tmp_path / "calibrated.safetensors"
    checkpoint.save_model(calibrated, model, train.model_metadata(cfg, temperature=0.5))
    loaded, meta = checkpoint.load_model(calibrated)
    x = torch.randn(8, 1, 28, 28)
    with torch.inference_mode():
        assert torch.allclose(loaded(x), model(x) / 0.5)
    assert meta["temperature"] == 0.5
    plain, _ = checkpoint.load_model(path)  # temperature 1: the network itself, unwrapped
    assert type(plain) is type(model)


def test_checkpoint_describes_itself(saved):
    path, _, cfg = saved
    _, meta = checkpoint.load_model(path.parent)  # a run folder works too
    assert meta["arch"] == "bnnet" and meta["arch_args"] == cfg.model_args
    assert meta["format_version"] == checkpoint.FORMAT_VERSION
    assert meta["classes"] == [str(d) for d in range(10)]
    assert (meta["mean"], meta["std"]) == (0.1307, 0.3081)
    assert meta["config"]["recipe"] == "fast" and meta["metrics"]["test_accuracy"] == 12.5
    assert set(meta["data_sha256"]) == {"train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                        "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"}
    assert "torch" in meta["versions"]


def test_truncated_checkpoint_is_refused_clearly(saved, tmp_path):
    path, _, _ = saved
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(checkpoint.CheckpointError, match="not a valid safetensors file"):
        checkpoint.load_model(bad)


def test_garbage_and_missing_files_are_refused_clearly(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(checkpoint.CheckpointError, match="not a valid safetensors"):
        checkpoint.load_model(junk)
    with pytest.raises(checkpoint.CheckpointError, match="no such checkpoint"):
        checkpoint.load_model(tmp_path / "absent.safetensors")


def test_mismatched_architecture_is_refused_clearly(saved, tmp_path):
    path, model, cfg = saved
    meta = train.model_metadata(cfg)
    meta["arch_args"] = {"widths": [8, 8, 8], "depth": 1}
    other = tmp_path / "other.safetensors"
    checkpoint.save_model(other, model, meta)
    with pytest.raises(checkpoint.CheckpointError, match="do not match architecture 'bnnet'"):
        checkpoint.load_model(other)


def test_foreign_safetensors_file_is_refused(tmp_path):
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(checkpoint.CheckpointError, match="not written by mnist-cnn"):
        checkpoint.load_model(foreign)


def test_loading_never_unpickles(saved, monkeypatch):
    import pickle

    def boom(*a, **k):
        raise AssertionError("pickle used")

    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(torch, "load", boom)
    checkpoint.load_model(saved[0])


def test_cli_evaluate_refuses_corrupt_checkpoint(saved, tmp_path, capsys):
    from mnist_cnn import cli

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(saved[0].read_bytes()[:50])
    assert cli.main(["evaluate", str(bad)]) == 1
    assert "error:" in capsys.readouterr().err
