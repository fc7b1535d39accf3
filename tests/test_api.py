"""The notebook's front door (`mnist_cnn.load`, `.train`, `.evaluate`), line by line of issue #16's API block.

The oracles: the command line's own path (`predict.Predictor`), drawings whose digits are known,
save -> load giving the same probabilities, the caller's random state before and after, and the
reported test accuracy against the served one. Training runs on `tiny_mnist` (conftest) except in
the `slow` tests, which use the real MNIST.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import mnist_cnn
from mnist_cnn import api, checkpoint, cli, errors
from mnist_cnn.recipes import get_config

PACKAGE_ROOT = Path(api.__file__).resolve().parents[1]


def _draw(strokes, size=(200, 200)) -> Image.Image:
    """Black ink on white paper, as a person draws: each stroke a polyline, or ("ellipse", box)."""
    img = Image.new("L", size, 255)
    pen = ImageDraw.Draw(img)
    for stroke in strokes:
        if stroke[0] == "ellipse":
            pen.ellipse(stroke[1], outline=0, width=14)
        else:
            pen.line(stroke, fill=0, width=14, joint="curve")
    return img


SEVEN = [[(50, 40), (150, 40), (85, 170)]]
TWO = [[(60, 60), (100, 30), (140, 60), (140, 80), (60, 170), (150, 170)]]
ZERO = [("ellipse", [55, 30, 145, 170])]
ONE = [[(100, 30), (100, 170)]]


def _shift(strokes, dx):
    return [(s[0], [s[1][0] + dx, s[1][1], s[1][2] + dx, s[1][3]]) if s[0] == "ellipse"
            else [(x + dx, y) for x, y in s] for s in strokes]


@pytest.fixture(scope="module")
def model():
    return mnist_cnn.load()


@pytest.fixture(scope="module")
def seven(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "seven.png"
    _draw(SEVEN).save(path)
    return path


# ------------------------------------------------------------------ import


def test_import_is_cheap_and_lazy():
    code = ("import sys, mnist_cnn; assert 'torch' not in sys.modules, 'torch'; "
            "assert 'mnist_cnn.api' not in sys.modules; print(mnist_cnn.__version__, 'load' in dir(mnist_cnn)); "
            "mnist_cnn.load; assert 'torch' in sys.modules")
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [mnist_cnn.__version__, "True"]


def test_the_front_door_names_are_the_functions_whatever_is_imported():
    import mnist_cnn.evaluation  # noqa: F401 - the stage modules must not shadow the functions
    import mnist_cnn.training  # noqa: F401

    assert mnist_cnn.train is api.train and mnist_cnn.evaluate is api.evaluate and mnist_cnn.load is api.load
    assert mnist_cnn.Prediction is api.Prediction and issubclass(mnist_cnn.UserError, Exception)
    with pytest.raises(AttributeError):
        mnist_cnn.no_such_name


# ------------------------------------------------------------------ predict


def test_predict_a_path_gives_a_prediction(model, seven):
    p = model.predict(str(seven))
    assert (p.digit, p.status) == (7, "ok") and p.probability == max(p.probabilities) > 0.9
    assert len(p.probabilities) == 10 and sum(p.probabilities) == pytest.approx(1)
    assert p.processed.shape == (28, 28) and p.processed.dtype == torch.uint8


def test_every_accepted_input_is_read_the_same(model, seven):
    img = Image.open(seven)
    grey = np.asarray(img)  # (H, W) uint8, read-only
    rgb = np.repeat(grey[..., None], 3, axis=2)
    inputs = {
        "str": str(seven), "Path": Path(seven), "bytes": seven.read_bytes(), "PIL": img,
        "PIL RGBA": img.convert("RGBA"), "numpy (H, W) uint8": grey, "numpy (H, W) float": grey / 255.0,
        "numpy (H, W, 1)": grey[..., None], "numpy (H, W, 3)": rgb, "numpy (H, W, 4) float32":
        np.concatenate([rgb, np.full_like(grey[..., None], 255)], 2).astype(np.float32) / 255,
        "torch (H, W) uint8": torch.from_numpy(grey.copy()), "torch (3, H, W) float": torch.from_numpy(rgb).permute(2, 0, 1) / 255,
    }
    want = model.predict(img)
    answers = model.predict(list(inputs.values()))
    assert isinstance(answers, list) and len(answers) == len(inputs)
    for name, p in zip(inputs, answers):
        assert torch.equal(p.processed, want.processed), name
        assert p.digit == 7 and p.probabilities == pytest.approx(want.probabilities, abs=1e-6), name


def test_predictions_are_the_command_lines(model, seven):
    from mnist_cnn import images
    from mnist_cnn.predict import Predictor

    cli_pred = Predictor.from_path().predict_image(images.open_image(seven))
    assert model.predict(seven).probabilities == pytest.approx(cli_pred.probabilities, abs=1e-7)


def test_mnist_form_arrays_are_used_as_they_are(model, seven):
    digit = model.predict(seven).processed  # (28, 28) uint8, white ink on black
    single = model.predict(digit, preprocess=False)
    assert single.digit == 7 and torch.equal(single.processed, digit)
    as_float = model.predict(digit.float() / 255, preprocess=False)
    assert as_float.probabilities == pytest.approx(single.probabilities, abs=1e-7)
    batch = model.predict(torch.stack([digit, digit.flip(1)]), preprocess=False)
    assert isinstance(batch, list) and len(batch) == 2
    assert batch[0].probabilities == pytest.approx(single.probabilities, abs=1e-7)
    assert [p.digit for p in model.predict([digit.numpy(), digit], preprocess=False)] == [7, 7]


def test_float_images_are_read_at_face_value_by_the_predictor(model, seven):
    """predict_arrays(x.float() / 255) once read [0, 1] floats as 0..255 and called every digit a 1."""
    x = torch.stack([model.predict(_draw(s)).processed for s in (SEVEN, TWO, ZERO, ONE)])
    uint8 = [p.digit for p in model.predictor.predict_arrays(x)]
    assert uint8 == [7, 2, 0, 1]
    assert [p.digit for p in model.predictor.predict_arrays(x.float() / 255)] == uint8
    with pytest.raises(errors.InputError, match=r"values in \[0, 255\]; float pixels must be in \[0, 1\]"):
        model.predictor.predict_arrays(x.float())


@pytest.mark.parametrize("bad, words", [
    (np.full((40, 40), 255.0), r"float with values in \[255, 255\]; float pixels must be in \[0, 1\]"),
    (np.full((40, 40), -0.5), r"values in \[-0.5, -0.5\]"),
    (np.ones((40, 40), dtype=np.int64), "dtype int64; pixels are uint8 .0..255. or float .0..1."),
    (torch.ones(40, 40, dtype=torch.int32), "dtype torch.int32"),
    (np.ones((40, 40), dtype=bool), "dtype bool"),
    (np.array([[0.5, np.nan]] * 20), r"not numbers \(NaN or infinite\)"),
    (np.zeros((40, 40, 2), dtype=np.uint8), r"shape \(H, W\) or \(H, W, C\) with C = 1, 3 or 4"),
    (np.zeros((2, 40, 40, 3), dtype=np.uint8), "not \\(2, 40, 40, 3\\)"),
    (42, "cannot read a int as an image"),
    (b"not an image", "not an image"),
])
def test_inputs_that_would_be_misread_are_refused(model, bad, words):
    with pytest.raises(errors.UserError, match=words):
        model.predict(bad)


def test_mnist_form_inputs_must_be_28_by_28(model):
    with pytest.raises(errors.InputError, match=r"MNIST's form, \(28, 28\), not \(20, 20\)"):
        model.predict(np.zeros((20, 20), np.uint8), preprocess=False)
    with pytest.raises(errors.InputError, match="must be in"):
        model.predict(np.full((28, 28), 2.0), preprocess=False)


def test_a_blank_image_is_empty_not_a_guess(model):
    p = model.predict(Image.new("L", (64, 64), 255))
    assert (p.status, p.digit, p.processed) == ("empty", None, None)


def test_read_number_gives_its_text(model, tmp_path):
    strokes = TWO + _shift(ZERO, 150) + _shift(ONE, 300) + _shift(SEVEN, 450)
    path = tmp_path / "2017.png"
    _draw(strokes, size=(650, 200)).save(path)
    assert model.read_number(path).text == "2017"
    assert [n.text for n in model.read_number([path, _draw(SEVEN)])] == ["2017", "7"]


# ------------------------------------------------------------------ save and load


def test_save_then_load_predicts_the_same(model, seven, tmp_path):
    saved = model.save(tmp_path / "mine.safetensors")
    again = mnist_cnn.load(saved)
    assert again.meta["temperature"] == model.meta["temperature"] != 1.0  # the shipped model is calibrated
    x = torch.randint(0, 256, (16, 28, 28), dtype=torch.uint8)
    assert torch.equal(again.predictor.logits(x), model.predictor.logits(x))
    assert again.predict(seven).probabilities == model.predict(seven).probabilities
    with pytest.raises(errors.UserError, match="is a folder"):
        model.save(tmp_path)


def _fake_run(folder: Path, name: str, finished: bool = True) -> Path:
    run = folder / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"recipe": "fast"}))
    if finished:
        shutil.copy(checkpoint.default_model_path(), run / "model.safetensors")
        (run / "metrics.json").write_text(json.dumps({"test_accuracy": 99.0}))
    return run


def test_latest_is_the_newest_finished_run(tmp_path, monkeypatch, seven, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(errors.UserError, match="no finished run under .* for 'latest'"):
        mnist_cnn.load("latest")
    assert cli.main(["predict", "--model", "latest", str(seven)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no finished run") and err.count("\n") == 1
    old = _fake_run(Path("runs"), "old")
    new = _fake_run(Path("runs"), "new")
    os.utime(old / "metrics.json", (1e9, 1e9))  # finished long ago
    _fake_run(Path("runs"), "unfinished", finished=False)  # started last, not finished: not "latest"
    assert mnist_cnn.load("latest").source == str(new)
    assert cli.main(["predict", "--model", "latest", "--format", "json", str(seven)]) == 0
    assert json.loads(capsys.readouterr().out)["digit"] == 7


# ------------------------------------------------------------------ train


def test_train_returns_a_run_prints_nothing_and_leaves_the_random_state(tiny_data, tmp_path, capsys, seven):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    before = (random.getstate(), np.random.get_state()[1].copy(), torch.random.get_rng_state())
    run = mnist_cnn.train("fast", epochs=1, limit_train=500, out=tmp_path / "try", device="cpu")
    assert random.getstate() == before[0] and np.array_equal(np.random.get_state()[1], before[1])
    assert torch.equal(torch.random.get_rng_state(), before[2])
    assert capsys.readouterr() == ("", "")
    assert isinstance(run, api.Run) and run.path == tmp_path / "try"
    assert run.metrics["test_acc"] == run.metrics["test_accuracy"] > 50  # tiny_mnist's bars are easy
    assert run.metrics["test_forward"] == "single pass" and run.config.limit_train == 500
    assert isinstance(run.model, api.Model) and run.history["epochs"][0]["epoch"] == 1
    loaded = mnist_cnn.load(run.path)
    assert run.model.predict(seven).probabilities == loaded.predict(seven).probabilities


def test_training_leaves_the_callers_random_state(tiny_data):
    """training.train once seeded the global generator (initial weights, dropout) and left it so."""
    from mnist_cnn import training

    torch.manual_seed(5)
    before = torch.random.get_rng_state()
    training.train(get_config("fast", epochs=1), tiny_data, "cpu")
    assert torch.equal(torch.random.get_rng_state(), before)


def test_train_shows_progress_only_when_asked(tiny_data, tmp_path, capsys):
    mnist_cnn.train("fast", epochs=1, out=tmp_path / "run", device="cpu", progress=True)
    out = capsys.readouterr()
    assert "epoch 1/1" in out.out + out.err


def test_train_takes_a_config_and_resumes_with_overrides(tiny_data, tmp_path, capsys):
    first = mnist_cnn.train(get_config("fast", epochs=1), out=tmp_path / "run", device="cpu")
    again = mnist_cnn.train(out=first.path, resume=True, epochs=2, device="cpu")
    assert again.config.epochs == 2 and [e["epoch"] for e in again.history["epochs"]] == [1, 2]
    assert again.history["resumes"] == [{"epoch": 1, "changed": {"epochs": [1, 2]}}]
    with pytest.raises(errors.ConfigError, match="cannot change seed"):
        mnist_cnn.train(out=first.path, resume=True, seed=7, device="cpu")
    with pytest.raises(errors.ConfigError, match="unknown config field.*: nope"):
        mnist_cnn.train("fast", nope=1)
    with pytest.raises(errors.ConfigError, match="pass out=RUN_DIR"):
        mnist_cnn.train("fast", resume=True)
    assert capsys.readouterr() == ("", "")


# ------------------------------------------------------------------ real MNIST


@pytest.mark.slow
def test_the_api_block_end_to_end(mnist_dir, tmp_path, seven):
    """Issue #16's block as written: load, predict, read a number, train, evaluate, save and load."""
    model = mnist_cnn.load()
    p = model.predict(seven)
    assert (p.digit, p.status, p.processed.shape) == (7, "ok", (28, 28))
    assert model.predict(Image.open(seven)).digit == 7
    run = mnist_cnn.train("fast", epochs=1, limit_train=5000, out=tmp_path / "runs" / "try", data_dir=mnist_dir)
    assert run.metrics["test_acc"] > 90 and run.path == tmp_path / "runs" / "try"
    metrics = mnist_cnn.evaluate(run.model, data_dir=mnist_dir)
    assert metrics.n == 10000 and metrics.forward == "single pass"
    assert metrics.accuracy == pytest.approx(run.metrics["test_acc"], abs=0.011)  # the same forward
    run.model.save(tmp_path / "mine.safetensors")
    mine = mnist_cnn.load(tmp_path / "mine.safetensors")
    x = torch.randint(0, 256, (32, 28, 28), dtype=torch.uint8)
    assert torch.equal(mine.predictor.logits(x), run.model.predictor.logits(x))


@pytest.mark.slow
def test_the_served_accuracy_is_the_reported_accuracy(model, test_split):
    """The shipped model reports 99.67% (with TTA); the served path once measured 99.64% (a single pass)."""
    x, y = test_split
    served = [p.topk[0][0] for p in model.predictor.predict_arrays(x, batch_size=1000)]
    accuracy = float((torch.tensor(served) == y).double().mean() * 100)
    assert accuracy == pytest.approx(model.metrics["test_accuracy"], abs=0.005)
    assert mnist_cnn.evaluate(model).accuracy == pytest.approx(accuracy, abs=1e-9)


@pytest.mark.slow
def test_an_onnx_file_loads_and_predicts_like_its_checkpoint(mnist_dir, tmp_path, seven):
    pytest.importorskip("onnxruntime")
    from mnist_cnn import export

    path = tmp_path / "model.onnx"
    export.export_checkpoint(None, path, data_dir=mnist_dir)
    onnx_model, torch_model = mnist_cnn.load(path), mnist_cnn.load()
    assert onnx_model.predict(seven).digit == 7
    assert onnx_model.predict(seven).probabilities == pytest.approx(torch_model.predict(seven).probabilities,
                                                                    abs=1e-5)
    with pytest.raises(errors.UserError, match="ONNX model cannot be saved"):
        onnx_model.save(tmp_path / "x.safetensors")
