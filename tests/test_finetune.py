"""Fine-tuning on a person's digits, and training with them: the holdout, the run folder and its checkpoint,
the caller's state left alone; and, on real data, the UCI writers read better with MNIST kept."""

from __future__ import annotations

import json

import pytest
import torch

import mnist_cnn
from mnist_cnn import checkpoint, imagefolder, runs, samples
from mnist_cnn.cli import main
from mnist_cnn.finetuning import stratified_split
from mnist_cnn.pipeline import with_samples

from conftest import tiny_mnist


def person(n_per_class: int = 4, seed: int = 1):
    """A tiny learnable 'handwriting' of the bar digits in conftest.tiny_mnist, with labels."""
    d = tiny_mnist(n_train=10 * n_per_class * 3, n_val=0, n_test=0, seed=seed)
    y = torch.arange(10).repeat_interleave(n_per_class)
    x = torch.stack([d.train_x[(d.train_y == k).nonzero()[i, 0]] for k, i in
                     zip(y.tolist(), [j % n_per_class for j in range(len(y))])])
    return x, y


def test_the_holdout_is_stratified_and_disjoint():
    y = torch.tensor([0] * 10 + [1] * 5 + [2] * 2 + [3] * 1)
    kept, held = stratified_split(y, 0.2, torch.Generator().manual_seed(0))
    assert sorted(torch.cat([kept, held]).tolist()) == list(range(len(y)))
    assert torch.bincount(y[held], minlength=4).tolist() == [2, 1, 1, 0]  # a single sample stays in training
    assert len(stratified_split(y, 0.0, torch.Generator())[1]) == 0


def test_finetune_writes_a_run_that_loads_and_says_what_it_was_tuned_on(tiny_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # runs/ is here: `latest` must find the new run
    x, y = person()
    base = mnist_cnn.load()
    weights = {k: v.clone() for k, v in base.net.state_dict().items()}
    rng = torch.get_rng_state()
    run = mnist_cnn.finetune(base, (x, y), steps=3, batch_size=16, device="cpu")
    assert isinstance(run, mnist_cnn.Run) and run.path.parent == runs.RUNS_DIR
    assert run.path.name.startswith("finetune-") and runs.latest_run() == run.path
    assert all(torch.equal(v, base.net.state_dict()[k]) for k, v in weights.items())  # the base is untouched
    assert torch.equal(torch.get_rng_state(), rng)  # and so are the caller's generators
    model, meta = checkpoint.load_model(run.path)  # the one loader serves it
    kept, _ = stratified_split(y, 0.2, torch.Generator().manual_seed(0))
    assert meta["samples"]["count"] == len(kept) == 30
    assert meta["samples"]["sha256"] == samples.digest(x[kept], y[kept])
    assert meta["finetune"]["held_out"]["count"] == 10 and meta["finetune"]["base"] == base.source
    assert meta["config"] == base.meta["config"]  # served as the base was (its forward, its TTA)
    assert meta["metrics"]["test_accuracy"] == run.metrics["after"]["mnist_test"] == run.metrics["test_acc"]
    assert set(run.metrics["before"]) == {"held_out", "mnist_test", "extra"} and run.metrics["before"]["extra"] is None
    assert run.config.steps == 3 and len(run.history["steps"]) == 3
    assert run.model.predict(x[0], preprocess=False).probability > 0
    assert json.loads((run.path / "config.json").read_text())["recipe"] == "finetune"


def test_finetune_cli_prints_before_and_after(tiny_data, tmp_path, capsys):
    from mnist_cnn.samples import Store

    x, y = person()
    with Store(tmp_path / "s.db") as store:
        store.add_many(dict(mnist=a, label=int(b), original=samples.mnist_png(a)) for a, b in zip(x, y))
    out = tmp_path / "mine"
    assert main(["finetune", "--samples", str(tmp_path / "s.db"), "--out", str(out), "--steps", "2",
                 "--batch-size", "8", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "held-out samples (10)" in text and "MNIST test (128" in text and "--model latest" in text
    assert checkpoint.load_model(out)[1]["samples"]["source"] == str(tmp_path / "s.db")
    assert main(["finetune", "--samples", str(tmp_path / "none.db"), "--out", str(out)]) == 1
    assert "no samples store" in capsys.readouterr().err


def test_samples_are_weighted_into_the_training_set(tiny_data, tmp_path):
    mnist, (x, y) = tiny_mnist(), person()
    found = imagefolder.Labelled(x, y, "arrays")
    mixed, repeats = with_samples(mnist, found, 0.2)
    assert repeats == round(0.2 * 640 / (0.8 * 40)) == 4
    assert len(mixed.train_y) == 640 + 4 * 40 and torch.equal(mixed.train_x[-40:], x)
    assert torch.equal(mixed.test_x, mnist.test_x)  # the test set is MNIST's alone
    folder = tmp_path / "mine"
    for i, (img, label) in enumerate(zip(x, y)):
        (folder / str(int(label))).mkdir(parents=True, exist_ok=True)
        # Large, dark on light: what a person's scan looks like, so the preprocessing has something to do.
        from PIL import Image
        Image.fromarray(255 - img.numpy()).resize((112, 112)).save(folder / str(int(label)) / f"{i}.png")
    run = tmp_path / "run"
    assert main(["train", "--recipe", "fast", "--epochs", "1", "--samples", str(folder), "--out", str(run),
                 "--device", "cpu"]) == 0
    meta = checkpoint.load_model(run)[1]
    assert meta["samples"]["count"] == 40 and meta["samples"]["repeats"] == round(0.05 * 640 / (0.95 * 40))
    assert json.loads((run / "metrics.json").read_text())["samples"]["sha256"] == meta["samples"]["sha256"]


def test_finetune_refuses_what_it_cannot_use(tiny_data, tmp_path):
    with pytest.raises(mnist_cnn.UserError, match="labels are digits"):
        mnist_cnn.finetune(None, (torch.zeros(2, 28, 28, dtype=torch.uint8), torch.tensor([1, 12])))
    with pytest.raises(mnist_cnn.UserError, match="unknown finetune field"):
        mnist_cnn.finetune(None, person(), stepz=3)
    with pytest.raises(mnist_cnn.UserError, match="invalid finetune config"):
        mnist_cnn.finetune(None, person(), holdout=1.5)


# ------------------------------------------------------------ on real data


def uci_digits():
    """scikit-learn's UCI digits (43 writers, none in MNIST) as a person's scans: dark on light, enlarged."""
    import cv2
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    from mnist_cnn import preprocess

    d = load_digits()
    xs = []
    for img in d.images:
        big = cv2.resize(img.astype(np.float32) / 16, (128, 128), interpolation=cv2.INTER_CUBIC).clip(0, 1)
        page = np.ones((192, 192), np.float32)
        page[32:160, 32:160] = 1 - big
        xs.append(preprocess.to_mnist(Image.fromarray((page * 255).round().astype(np.uint8))))
    return torch.stack(xs), torch.from_numpy(d.target).long()


@pytest.mark.slow  # real MNIST, 300 steps and four test-set passes: about a minute on 2 cores
def test_finetuning_on_100_uci_digits_reads_the_other_writers_better(mnist_dir, tmp_path):
    x, y = uci_digits()
    tune, rest = stratified_split(y, 1 - 100 / len(y), torch.Generator().manual_seed(0))
    run = mnist_cnn.finetune(None, (x[tune], y[tune]), out=tmp_path / "ft", holdout=0.0, device="cpu",
                             eval_samples=(x[rest], y[rest]))
    before, after = run.metrics["before"], run.metrics["after"]
    assert len(tune) == 100 and before["held_out"] is None
    # At least a third of the other writers' errors go (the benchmark, with the model before the handwriting
    # fonts: 97.0% -> 99.25% at 100; the shipped model, trained with them, reads 98.2% of these before).
    assert 100 - after["extra"] <= 2 / 3 * (100 - before["extra"]), (before, after)
    assert after["mnist_test"] >= before["mnist_test"] - 0.15, (before, after)


def test_a_finetuning_run_is_not_resumed_as_training(tmp_path, capsys):
    run = tmp_path / "ft"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"recipe": "finetune", "steps": 300}))
    assert main(["train", "--resume", str(run), "--device", "cpu"]) == 1
    assert "fine-tuning run" in capsys.readouterr().err
