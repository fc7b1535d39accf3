"""Reports: figures are real PNGs, the HTML shows metrics.json's numbers, the misclassified grid is exact."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from mnist_cnn import cli, data, figures, report, runs
from mnist_cnn.data import MNIST, MNIST_MEAN, MNIST_STD
from mnist_cnn.evaluation import evaluate

FIGURES = {"curves", "confusion", "per_class", "misclassified", "samples", "reliability"}


def one_hot_probs(pred, confidence) -> torch.Tensor:
    """Probabilities whose top class is `pred` with probability `confidence`, the rest shared evenly."""
    pred, confidence = torch.as_tensor(pred), torch.as_tensor(confidence, dtype=torch.float64)
    p = ((1 - confidence) / 9).unsqueeze(1).repeat(1, 10)
    p[torch.arange(len(pred)), pred] = confidence
    return p


class PixelReader(nn.Module):
    """A "model" with known answers: it predicts the column of the brightest pixel among row 0, columns 0-9.

    Normalization is increasing, so the argmax survives it; a brighter pixel gives a more confident answer.
    """

    def forward(self, x):
        return x[:, 0, 0, :10] * 4  # (B, 10)


def encoded_digits(answers, brightness, seed=0) -> torch.Tensor:
    """uint8 images (N, 28, 28), each unique (random strokes below row 0), that PixelReader reads as `answers`."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (len(answers), 28, 28), generator=g, dtype=torch.uint8)
    x[:, 0, :] = 0
    x[torch.arange(len(answers)), 0, torch.as_tensor(answers)] = torch.as_tensor(brightness, dtype=torch.uint8)
    return x


def assert_png(path, min_side=300, max_side=3000):
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and min_side <= min(im.size) and max(im.size) <= max_side, (path, im.size)


def shown_images(fig) -> list[np.ndarray]:
    return [np.asarray(ax.images[0].get_array()) for ax in fig.axes if ax.images]


# ---------------------------------------------------------------- selection


def test_misclassified_indices_are_the_wrong_ones_worst_first():
    labels = torch.arange(20) % 10
    pred = labels.clone()
    wrong = {3: 0.6, 7: 0.9, 11: 0.7, 15: 0.95}  # index -> confidence of its wrong answer
    confidence = torch.full((20,), 0.99)
    for i, c in wrong.items():
        pred[i], confidence[i] = (labels[i] + 1) % 10, c
    got = figures.misclassified_indices(one_hot_probs(pred, confidence), labels)
    assert got.tolist() == [15, 7, 11, 3]


def test_misclassified_grid_shows_exactly_the_misread_images():
    n = 60
    answers = torch.arange(n) % 10
    brightness = 100 + torch.arange(n) * 2  # distinct, so confidences are distinct
    labels = answers.clone()
    wrong = [4, 9, 23, 31, 42, 57]
    labels[wrong] = (answers[wrong] + 3) % 10
    x = encoded_digits(answers, brightness)
    result = evaluate(PixelReader(), x, labels, MNIST_MEAN, MNIST_STD)
    assert result.accuracy == pytest.approx(100 * (n - len(wrong)) / n)

    fig = figures.misclassified_figure(x, labels, result.probabilities)
    expected = sorted(wrong, key=lambda i: -int(brightness[i]))  # brighter pixel: more confident mistake
    shown = shown_images(fig)
    assert len(shown) == len(wrong)
    for img, i in zip(shown, expected):
        np.testing.assert_array_equal(img, x[i].numpy())
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    assert titles[0].startswith(f"{labels[expected[0]]} → {answers[expected[0]]} (")

    limited = shown_images(figures.misclassified_figure(x, labels, result.probabilities, limit=2))
    assert len(limited) == 2 and all((a == x[i].numpy()).all() for a, i in zip(limited, expected[:2]))


def test_calibration_known_answers():
    labels = torch.zeros(100, dtype=torch.long)
    assert figures.calibration(one_hot_probs(labels, torch.ones(100)), labels)["ece"] == pytest.approx(0, abs=1e-4)
    pred = torch.where(torch.arange(100) < 80, 0, 1)  # 80% right at confidence 0.8: calibrated
    ece = figures.calibration(one_hot_probs(pred, torch.full((100,), 0.8)), labels)["ece"]
    assert ece == pytest.approx(0, abs=1e-4)
    assert figures.calibration(one_hot_probs(torch.ones(100, dtype=torch.long), torch.full((100,), 0.8)),
                              labels)["ece"] == pytest.approx(80, abs=1e-4)
    # half at 0.95 all right (gap 0.05), half at 0.55 with half right (gap 0.05): ECE 5%
    conf = torch.where(torch.arange(100) < 50, 0.95, 0.55)
    pred = torch.where((torch.arange(100) >= 50) & (torch.arange(100) % 2 == 1), 1, 0)
    cal = figures.calibration(one_hot_probs(pred, conf), labels)
    assert cal["ece"] == pytest.approx(5, abs=1e-4) and cal["counts"].sum() == 100


def test_smooth_keeps_a_constant_and_follows_a_step():
    assert np.allclose(figures.smooth([5.0] * 10, 4), 5.0)
    out = figures.smooth([0.0] * 50 + [1.0] * 50, 5)
    assert out[49] == 0 and 0.99 < out[-1] <= 1


def test_importing_report_leaves_matplotlib_backend_alone():
    code = ("import sys, matplotlib; before = matplotlib.rcParams._get_backend_or_none(); "
            "import mnist_cnn.report; assert 'matplotlib.pyplot' not in sys.modules; "
            "assert matplotlib.rcParams._get_backend_or_none() == before")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tensorboard_missing_is_a_clear_error(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    with pytest.raises(ValueError, match=r"pip install 'mnist-cnn\[tensorboard\]'"):
        report.require_tensorboard()
    assert cli.main(["train", "--tensorboard", "--out", str(tmp_path / "r")]) == 1  # before any training
    assert "mnist-cnn[tensorboard]" in capsys.readouterr().err
    assert not (tmp_path / "r" / "history.json").exists()


# ------------------------------------------------------------ a real run


def smaller(load_mnist):
    """load_mnist with 1,000 validation and 2,000 test images, to keep the test fast on a small CPU."""
    def load(*args, **kwargs):
        d = load_mnist(*args, **kwargs)
        return MNIST(d.train_x, d.train_y, d.val_x[:1000], d.val_y[:1000], d.test_x[:2000], d.test_y[:2000])
    return load


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, mnist_dir):
    """A real (tiny) training run through the CLI, which writes its report at the end."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(data, "load_mnist", smaller(data.load_mnist))
        assert cli.main(["train", "--recipe", "fast", "--epochs", "1", "--limit-train", "1000", "--device", "cpu",
                         "--data-dir", str(mnist_dir), "--out", str(out)]) == 0
    return out


def test_train_writes_valid_pngs_and_a_self_contained_html(run_dir):
    folder = run_dir / "report"
    assert {p.stem for p in folder.glob("*.png")} == FIGURES
    for png in folder.glob("*.png"):
        assert_png(png)
    page = (folder / "index.html").read_text()
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert sorted(base64.b64decode(e) for e in embedded) == sorted(p.read_bytes() for p in folder.glob("*.png"))
    assert all(src.startswith("data:") for src in re.findall(r'src="([^"]*)"', page))  # nothing to fetch
    assert "<link" not in page and "href=" not in page and "url(" not in page


def test_html_numbers_match_metrics_json(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    page = (run_dir / "report" / "index.html").read_text()
    shown: dict[str, list[str]] = {}
    for key, text in re.findall(r'data-key="([^"]+)">([^<]*)<', page):
        shown.setdefault(key, []).append(text)

    def number(text):
        return float(re.match(r"-?[\d.]+", text).group())

    decimals = {"test_accuracy": 2, "val_accuracy": 2, "test_loss": 4, "train_seconds": 1, "epochs": 0}
    for key, places in decimals.items():
        assert key in shown, key
        for text in shown[key]:  # the headline card and the metrics table
            assert number(text) == pytest.approx(round(metrics[key], places), abs=10 ** -places / 2), (key, text)
    for i, acc in enumerate(metrics["per_class"]):
        assert number(shown[f"per_class_{i}"][0]) == pytest.approx(round(acc, 2), abs=0.005)
    assert shown["device"] == [metrics["device"]]


def test_evaluate_report_into_another_folder(run_dir, mnist_dir, tmp_path, capsys, monkeypatch):
    read_split = data.read_split
    monkeypatch.setattr(data, "read_split", lambda folder, split: [t[:1500] for t in read_split(folder, split)])
    out = tmp_path / "rep"
    assert cli.main(["evaluate", str(run_dir), "--report", "--report-dir", str(out), "--json", "--device", "cpu",
                     "--data-dir", str(mnist_dir)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["report"] == str(out / "index.html") and printed["n"] == 1500
    assert {p.stem for p in out.glob("*.png")} == FIGURES  # the run's history gives the curves too
    assert f'data-key="test_accuracy">{printed["accuracy"]:.2f}%' in (out / "index.html").read_text()


def test_runs_lists_and_sorts_and_compare_draws(run_dir, tmp_path, capsys):
    unfinished = run_dir.parent / "unfinished"
    unfinished.mkdir(exist_ok=True)
    (unfinished / "config.json").write_text(json.dumps({"recipe": "default", "model": "bnnet", "epochs": 6}))
    better = run_dir.parent / "better"
    better.mkdir(exist_ok=True)
    (better / "config.json").write_text((run_dir / "config.json").read_text())
    (better / "metrics.json").write_text(json.dumps({"test_accuracy": 99.9, "train_seconds": 1e6, "epochs": 1}))

    assert cli.main(["runs", str(run_dir.parent)]) == 0
    lines = capsys.readouterr().out.splitlines()
    order = [line.split()[-1] for line in lines[2:]]
    assert order == [str(better), str(run_dir), str(unfinished)]  # best first, unfinished last
    assert "unfinished" in lines[-1] and "0/6" in lines[-1]

    rows = [runs.run_row(r) for r in runs.find_runs(run_dir.parent)]
    assert [r["path"] for r in runs.sort_rows(rows, "time")] == [str(run_dir), str(better), str(unfinished)]

    out = tmp_path / "cmp.png"
    assert cli.main(["compare", str(run_dir), str(better), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"curves: {out}" in printed and "99.90%" in printed and "tiny" in printed
    assert_png(out)


def test_runs_and_compare_errors_are_messages(tmp_path, capsys):
    assert cli.main(["runs", str(tmp_path / "missing")]) == 1
    assert cli.main(["compare", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "no such folder" in err and "not a run folder" in err
    assert cli.main(["runs", str(tmp_path)]) == 0
    assert "no runs in" in capsys.readouterr().out
