"""Training: schedules, augmentation, resume equivalence, and a seeded smoke-train on real MNIST."""

from __future__ import annotations

import dataclasses
import itertools
import json
import time

import pytest
import seed_notebook
import torch

from mnist_cnn import augment, checkpoint, cli, data, files, training
from mnist_cnn.recipes import RECIPES, get_config


def test_onecycle_schedule_warms_up_then_decays():
    cfg = get_config("fast", lr=1.0)
    lrs = [training.lr_at(s, 100, cfg, 50) for s in range(100)]
    peak = lrs.index(max(lrs))
    assert max(lrs) == pytest.approx(1.0) and peak == round(cfg.warmup * 100) - 1
    assert lrs[-1] < 0.02 and all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1:]))


def test_step_schedule_is_steplr():
    cfg = get_config("reference")
    assert training.lr_at(0, 1000, cfg, 100) == 1.0
    assert training.lr_at(250, 1000, cfg, 100) == pytest.approx(0.7 ** 2)


def test_seed_recipe_trains_as_the_notebook_did():
    """The oracle is the notebook's own network and loop (tests/seed_notebook.py) on the same batches: the recipe
    must give the same weights (its batch size, optimizer, loss, input scaling, epochs and architecture)."""
    g = torch.Generator().manual_seed(0)
    n = seed_notebook.batch_size  # one step an epoch: 3 steps, enough for the momentum to matter
    images, labels = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g), torch.randint(0, 10, (n,))
    none = (images[:0], labels[:0])
    cfg = get_config("seed")
    ours, history = training.train(cfg, data.MNIST(images, labels, *none, *none), "cpu")

    def epoch_loaders():  # the batches our loop drew (the notebook's DataLoader shuffled by its own RNG)
        for epoch in itertools.count():
            batches = training.epoch_batches(n, seed_notebook.batch_size, training.epoch_generator(cfg, epoch))
            torch.manual_seed(cfg.seed * 100_003 + epoch)  # and the dropout masks it drew, as train_one_epoch seeds
            yield [(images[i].float().unsqueeze(1) / 255, labels[i]) for i in batches]  # ToTensor()

    torch.manual_seed(cfg.seed)  # the initial weights our loop started from
    net = seed_notebook.Net()
    seed_notebook.notebook_training(net, epoch_loaders)
    assert len(history.epochs) == 3 and len(history.steps) == 3
    assert ours.state_dict().keys() == net.state_dict().keys()
    for name, theirs in net.state_dict().items():
        assert torch.allclose(ours.state_dict()[name], theirs, rtol=0, atol=1e-6), name


def test_identity_affine_is_identity():
    x = torch.rand(3, 1, 28, 28)
    out = augment.random_affine(x, torch.Generator().manual_seed(0))
    assert torch.allclose(out, x, atol=1e-5)


def test_translate_moves_a_dot_by_whole_pixels():
    x = torch.zeros(64, 1, 28, 28)
    x[:, :, 14, 14] = 1
    out = augment.random_translate(x, torch.Generator().manual_seed(0), pixels=2)
    pos = out.flatten(1).argmax(1)
    dy, dx = pos // 28 - 14, pos % 28 - 14
    assert out.sum() == 64 and dy.abs().max() <= 2 and dx.abs().max() <= 2 and len(set(dy.tolist())) > 1


AUGMENTS = {"affine": lambda x, g: augment.random_affine(x, g, 2, 10, 0.1, 5),
            "translate": lambda x, g: augment.random_translate(x, g, 2)}


@pytest.mark.parametrize("where", ["cpu float64", "meta", "cuda", "mps"])
@pytest.mark.parametrize("name", list(AUGMENTS))
def test_augmentation_draws_do_not_depend_on_the_images_device(name, where):
    """A seed gives the same augmentation on every device, and leaves its CPU generator in the same state.

    On a CPU-only machine the other paths are float64 images and the storage-free "meta" device:
    drawing on the images' device instead of from the CPU generator fails there.
    """
    device, dtype = (where.split()[0], torch.float64) if " " in where else (where, torch.float32)
    if device == "cuda" and not torch.cuda.is_available() or device == "mps" and not torch.backends.mps.is_available():
        pytest.skip(f"no {device} device here; the float64 and meta cases check the CPU side")
    transform, x = AUGMENTS[name], torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    g_ref, g = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    ref = transform(x, g_ref)
    assert torch.equal(ref, transform(x, torch.Generator().manual_seed(3)))  # deterministic
    out = transform(x.to(device, dtype), g)
    assert out.device.type == device and out.dtype == dtype and out.shape == x.shape
    assert torch.equal(torch.rand(8, generator=g), torch.rand(8, generator=g_ref))  # the same draws were taken
    if device != "meta":
        assert torch.allclose(out.cpu().float(), ref, atol=1e-5)


def test_every_recipe_builds():
    for name in RECIPES:
        cfg = get_config(name)
        model = training.build(cfg, "cpu")
        assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_unusable_run_folders_are_errors_not_tracebacks(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(data, "load_mnist", lambda *a, **k: pytest.fail("loaded MNIST with nowhere to write"))
    assert cli.main(["train", "--resume", str(tmp_path / "nowhere")]) == 1
    assert "nowhere: not a run folder (no config.json" in capsys.readouterr().err
    (tmp_path / "a_file").write_text("")
    assert cli.main(["train", "--out", str(tmp_path / "a_file" / "run")]) == 1
    assert capsys.readouterr().err == f"error: {tmp_path / 'a_file' / 'run'}: Not a directory\n"


def test_config_checks_choices_and_ranges():
    with pytest.raises(ValueError, match="optimizer = 'adam' .must be sgd or adadelta or adamw"):
        get_config("fast", optimizer="adam")
    with pytest.raises(ValueError, match=r"scale = 1.5 \(must be in \[0, 1\)\)"):
        get_config("best", scale=1.5)


@pytest.fixture(scope="module")
def small(mnist_dir):
    return data.load_mnist(mnist_dir, val_size=500, limit_train=2000)


def test_resumed_run_equals_uninterrupted_run(small, tmp_path):
    cfg = get_config("fast", epochs=2, ema_decay=0.9, rotate=5.0)
    whole, _ = training.train(cfg, small, "cpu", tmp_path / "whole")
    first = get_config("fast", epochs=2, ema_decay=0.9, rotate=5.0)
    with pytest.raises(_Crash):  # dies during epoch 2, before its checkpoint
        training.train(first, small, "cpu", tmp_path / "split", on_epoch=_stop_after_first_epoch)
    resumed, history = training.train(cfg, small, "cpu", tmp_path / "split", resume=True)
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert [e["epoch"] for e in history.epochs] == [1, 2]


class _Crash(Exception):
    pass


def _stop_after_first_epoch(row, model):
    if row["epoch"] == 2:
        raise _Crash


def test_interrupted_run_keeps_its_last_epoch_checkpoint(small, tmp_path):
    cfg = get_config("fast", epochs=2)
    with pytest.raises(_Crash):
        training.train(cfg, small, "cpu", tmp_path, on_epoch=_stop_after_first_epoch)
    model, meta = checkpoint.load_model(tmp_path)
    assert meta["config"]["recipe"] == "fast"
    assert json.loads((tmp_path / "history.json").read_text())["epochs"][0]["epoch"] == 1


class _Kill(BaseException):
    """A SIGKILL during a file write: the temporary file stays, nothing is cleaned up."""


def _kill_at_write(monkeypatch, n: int):
    """Make the n-th atomic write (0-based) die halfway, as a kill would; return the list of paths written."""
    written = []
    real = files.atomic_write

    def write(path, raw):
        if len(written) == n:
            (path.parent / f".{path.name}.killed.tmp").write_bytes(raw[: len(raw) // 2])
            raise _Kill
        written.append(path.name)
        real(path, raw)

    monkeypatch.setattr(checkpoint, "atomic_write", write)
    monkeypatch.setattr(files, "atomic_write", write)
    return written


@pytest.mark.parametrize("kill_at", [3, 4, 5])  # epoch 2's model.safetensors, train_state, history.json
def test_a_kill_during_any_checkpoint_write_loses_no_history(small, tmp_path, monkeypatch, kill_at):
    cfg = get_config("fast", epochs=3)
    written = _kill_at_write(monkeypatch, kill_at)
    with pytest.raises(_Kill):
        training.train(cfg, small, "cpu", tmp_path)
    assert written[:3] == ["model.safetensors", "train_state.safetensors", "history.json"]
    monkeypatch.undo()
    _, history = training.train(cfg, small, "cpu", tmp_path, resume=True)
    steps_per_epoch = len(small.train_x) // cfg.batch_size
    on_disk = json.loads((tmp_path / "history.json").read_text())
    for h in (dataclasses.asdict(history), on_disk):
        assert [e["epoch"] for e in h["epochs"]] == [1, 2, 3]
        assert [s["step"] for s in h["steps"]] == list(range(3 * steps_per_epoch))
    assert not list(tmp_path.glob(".*.tmp"))  # the killed write's leftover is gone


def test_train_seconds_add_up_over_resumed_segments(small, tmp_path):
    cfg = get_config("fast", epochs=2)

    def slow_first_epoch(row, model):
        if row["epoch"] == 1:
            time.sleep(1.0)  # segment 1 takes at least a second...
        _stop_after_first_epoch(row, model)

    with pytest.raises(_Crash):
        training.train(cfg, small, "cpu", tmp_path, on_epoch=slow_first_epoch)
    t0 = time.perf_counter()
    _, history = training.train(cfg, small, "cpu", tmp_path, resume=True)
    segment_2 = time.perf_counter() - t0
    assert history.seconds > segment_2 + 1.0  # ...and it still counts after the resume
    assert json.loads((tmp_path / "history.json").read_text())["seconds"] == history.seconds


def test_smoke_train_on_real_subset_beats_threshold(mnist_dir, tmp_path):
    """End to end through the CLI: 1 epoch of `fast` on 5,000 real images must exceed 90% test accuracy.

    (Measured: 94.8% with seed 1; chance is 10%.)
    """
    out = tmp_path / "run"
    assert cli.main(["train", "--recipe", "fast", "--epochs", "1", "--limit-train", "5000", "--batch-size", "32",
                     "--seed", "1",
                     "--data-dir", str(mnist_dir), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_accuracy"] > 90.0
    for name in ("model.safetensors", "history.json", "config.json", "run.json", "train_state.safetensors"):
        assert (out / name).exists()
    _, meta = checkpoint.load_model(out)
    assert meta["metrics"]["test_accuracy"] == metrics["test_accuracy"]


def test_ensemble_averages_its_members_probabilities(small, tmp_path):
    cfg = get_config("fast", epochs=1, ensemble=2, limit_train=None)
    ensemble, histories = training.train_ensemble(cfg, small, "cpu", tmp_path)
    assert len(histories) == 2 and (tmp_path / "member-1" / "model.safetensors").exists()
    members = [checkpoint.load_model(tmp_path / f"member-{k}")[0] for k in range(2)]
    x = augment.to_float(small.test_x[:16], data.MNIST_MEAN, data.MNIST_STD)
    with torch.inference_mode():
        expected = torch.stack([m(x).softmax(1) for m in members]).mean(0)
        assert torch.allclose(ensemble(x).softmax(1), expected, atol=1e-5)
    # The ensemble is a checkpoint like any other: save, load, same logits.
    checkpoint.save_model(tmp_path / "ens.safetensors", ensemble, checkpoint.model_metadata(cfg))
    loaded, meta = checkpoint.load_model(tmp_path / "ens.safetensors")
    assert meta["arch"] == "ensemble" and len(meta["arch_args"]["members"]) == 2
    with torch.inference_mode():
        assert torch.allclose(loaded(x), ensemble(x), atol=1e-6)
    # A finished member is reloaded, not retrained.
    again, _ = training.train_ensemble(cfg, small, "cpu", tmp_path)
    with torch.inference_mode():
        assert torch.equal(again(x), ensemble(x))
