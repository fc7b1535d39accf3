"""Checkpoints: save/load round trip, metadata, and clear refusals of bad files."""

from __future__ import annotations

import json
import re

import pytest
import torch

from mnist_cnn import checkpoint, training
from mnist_cnn.recipes import get_config


@pytest.fixture
def saved(tmp_path):
    cfg = get_config("fast")
    # The loaded model uses the default memory layout; compare like with like.
    model = training.build(cfg, "cpu").eval().to(memory_format=torch.contiguous_format)
    path = tmp_path / "model.safetensors"
    checkpoint.save_model(path, model, checkpoint.model_metadata(cfg, {"test_accuracy": 12.5}))
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
    checkpoint.save_model(calibrated, model, checkpoint.model_metadata(cfg, temperature=0.5))
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
    meta = checkpoint.model_metadata(cfg)
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


def _crafted(tmp_path, model, meta, edit_weights=None, raw_meta=None):
    """A checkpoint with `meta` (or raw metadata text) and optionally edited weights: a file from anywhere."""
    from safetensors.torch import save

    tensors = {k: v.clone() for k, v in model.state_dict().items()}
    if edit_weights:
        edit_weights(tensors)
    path = tmp_path / "crafted.safetensors"
    text = json.dumps(meta) if raw_meta is None else raw_meta
    path.write_bytes(save(tensors, metadata={checkpoint.META_KEY: text}))
    return path


def _set_first_weight(value):
    def edit(tensors):
        next(v for v in tensors.values() if v.is_floating_point()).view(-1)[0] = value
    return edit


@pytest.mark.parametrize("change, edit, words", [
    ({}, _set_first_weight(float("nan")), "NaN or infinite"),
    ({}, _set_first_weight(float("inf")), "NaN or infinite"),
    ({}, lambda t: t["head.weight"].fill_(3e38), "not finite"),  # finite weights whose outputs overflow
    ({"std": 0.0}, None, "std must be"),
    ({"temperature": 1e-300}, None, "temperature 1e-300 is outside"),
    ({"mean": float("nan")}, None, "'mean' must be a finite number"),
])
def test_checkpoints_that_load_but_cannot_work_are_refused(saved, tmp_path, change, edit, words):
    path, model, cfg = saved
    crafted = _crafted(tmp_path, model, {**checkpoint.model_metadata(cfg), **change}, edit)
    with pytest.raises(checkpoint.CheckpointError, match=re.escape(words)):
        checkpoint.load_model(crafted)


@pytest.mark.parametrize("meta, words", [
    ([1], "must be a JSON object, not list"),
    ("x", "must be a JSON object, not str"),
    ({"mean": "0.1"}, "'mean' must be a finite number, not '0.1'"),
    ({"temperature": "1"}, "'temperature' must be a finite number"),
    ({"std": True}, "'std' must be a finite number"),
    ({"arch": ["bnnet"]}, "unknown architecture ['bnnet']"),
    ({"arch_args": [1]}, "'arch_args' must be an object"),
    ({"arch_args": {"widths": "16"}}, "cannot build architecture"),
    ({"arch_args": {"widths": [16, 32, 10**9]}}, "'widths' = [16, 32, 1000000000] is not a plausible"),
    ({"arch_args": {"widths": [16, 32, 64], "depth": 10**5}}, "'depth' = 100000 is not a plausible"),
    ({"arch_args": {"widths": [[16]]}}, "is not a plausible"),
    ({"arch": "ensemble", "arch_args": {"members": [{"arch": "ensemble"}]}}, "member 0 must be"),
    ({"classes": "0123456789"}, "'classes' must list 10"),
])
def test_crafted_metadata_is_refused_without_a_traceback(saved, tmp_path, meta, words):
    path, model, cfg = saved
    meta = meta if not isinstance(meta, dict) else {**checkpoint.model_metadata(cfg), **meta}
    with pytest.raises(checkpoint.CheckpointError, match=re.escape(words)):
        checkpoint.load_model(_crafted(tmp_path, model, meta))


def test_deeply_nested_metadata_is_invalid_json_not_a_recursion_error(saved, tmp_path):
    path, model, _ = saved
    with pytest.raises(checkpoint.CheckpointError, match="not valid JSON"):
        checkpoint.load_model(_crafted(tmp_path, model, None, raw_meta="[" * 100_000))


def test_huge_architecture_is_refused_from_the_header_before_anything_is_allocated(saved, tmp_path,
                                                                                   monkeypatch):
    """widths [4096]*3 on a small file once allocated 1.4 GB over 5.5 s before the shapes were compared."""
    path, model, cfg = saved
    meta = {**checkpoint.model_metadata(cfg), "arch_args": {**cfg.model_args, "widths": [4096] * 3}}
    crafted = _crafted(tmp_path, model, meta)
    real_build = checkpoint.models.build_model

    def build(*args, **kwargs):  # only meta-device (storage-free) builds may happen for this file
        model = real_build(*args, **kwargs)
        assert all(p.is_meta for p in model.parameters()), "built real weights for a mismatched file"
        return model

    monkeypatch.setattr(checkpoint.models, "build_model", build)
    with pytest.raises(checkpoint.CheckpointError, match=r"has shape \[16, 1, 3, 3\] in the file, the "
                                                         r"architecture needs \[4096, 1, 3, 3\]"):
        checkpoint.load_model(crafted)


def test_cli_predict_refuses_a_nan_checkpoint_in_one_line(saved, tmp_path, capsys):
    from mnist_cnn import cli

    path, model, cfg = saved
    crafted = _crafted(tmp_path, model, checkpoint.model_metadata(cfg), _set_first_weight(float("nan")))
    assert cli.main(["predict", "--model", str(crafted), "--format", "json", str(path)]) == 1
    out = capsys.readouterr()
    assert out.out == "" and out.err.startswith("error: ") and "NaN" in out.err and out.err.count("\n") == 1


def test_a_loaded_calibrated_model_saves_and_reloads(saved, tmp_path):
    """load_model wraps a calibrated network; saving that wrapper once wrote "model."-prefixed keys it refused."""
    path, model, cfg = saved
    first = tmp_path / "calibrated.safetensors"
    checkpoint.save_model(first, model, checkpoint.model_metadata(cfg, temperature=0.5))
    loaded, meta = checkpoint.load_model(first)
    again = tmp_path / "again.safetensors"
    checkpoint.save_model(again, loaded, meta)
    reloaded, meta2 = checkpoint.load_model(again)
    x = torch.randn(8, 1, 28, 28)
    with torch.inference_mode():
        assert torch.equal(reloaded(x), loaded(x))
    assert meta2["temperature"] == 0.5
