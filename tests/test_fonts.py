"""Handwriting-font digits for training (fonts.py): the pinned tarballs verified, their fonts' digits drawn in
MNIST's form and read right, and mixed into a training run at the recipe's share, never outnumbering MNIST."""

from __future__ import annotations

import dataclasses
import io
import json
import tarfile
from pathlib import Path

import matplotlib
import pytest
import torch

import mnist_cnn
from mnist_cnn import data, fonts
from mnist_cnn.cli import main
from mnist_cnn.pipeline import with_fonts
from mnist_cnn.recipes import DefaultConfig, get_config, run_config

from conftest import tiny_mnist

DEJAVU = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"  # a font every install has


def tarball(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, raw in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return buffer.getvalue()


def test_a_fonts_digits_are_drawn_in_mnists_form_and_read_as_themselves():
    x, y = fonts.draw([DEJAVU.read_bytes()], variants=2, seed=0)
    assert x.shape == (20, 28, 28) and x.dtype == torch.uint8 and y.tolist() == [d for d in range(10) for _ in (0, 1)]
    for img in x:  # MNIST's form: the ink's longer side fills the 20-pixel box (anti-aliasing adds a pixel or two)
        rows, cols = img.amax(1).nonzero(), img.amax(0).nonzero()
        assert 19 <= max(rows.max() - rows.min(), cols.max() - cols.min()) + 1 <= 22
    read = mnist_cnn.load().predict(list(x.numpy()))
    assert sum(p.digit == int(label) for p, label in zip(read, y)) >= 19  # a clear sans-serif, bent and re-stroked
    again, _ = fonts.draw([DEJAVU.read_bytes()], variants=2, seed=0)
    other, _ = fonts.draw([DEJAVU.read_bytes()], variants=2, seed=1)
    assert torch.equal(x, again) and not torch.equal(x, other)  # the seed alone decides the drawings


def test_only_the_latin_regular_weights_are_taken_from_a_tarball(tmp_path):
    font = DEJAVU.read_bytes()
    path = tmp_path / "f.tgz"
    path.write_bytes(tarball({
        "package/files/f-latin-700-normal.woff": font + b"7", "package/files/f-latin-400-normal.woff": font + b"4",
        "package/files/f-latin-ext-400-normal.woff": b"ext", "package/files/f-cyrillic-400-normal.woff": b"cyr",
        "package/files/f-latin-400-italic.woff": b"italic", "package/files/f-latin-400-normal.woff2": b"woff2",
        "package/README.md": b"readme"}))
    assert fonts.font_files(path) == [font + b"4", font + b"7"]


def test_each_tarball_is_verified_and_fetched_once(tmp_path, monkeypatch):
    raw = tarball({"package/files/f-latin-400-normal.woff": DEJAVU.read_bytes()})
    monkeypatch.setattr(fonts, "FAMILIES", {"fake": data.sha256(raw)})
    fetched = []

    def fetch(url):
        fetched.append(url)
        return raw

    path, = fonts.acquire(tmp_path, fetch=fetch)
    assert path.read_bytes() == raw and fetched == [fonts.URL.format(name="fake", version=fonts.VERSION)]
    fonts.acquire(tmp_path, fetch=fetch)
    assert len(fetched) == 1  # the verified cache
    path.write_bytes(raw[:-1] + b"x")  # tampered with: fetched again
    fonts.acquire(tmp_path, fetch=fetch)
    assert len(fetched) == 2 and path.read_bytes() == raw
    path.unlink()
    with pytest.raises(data.DataError, match="SHA-256 mismatch"):
        fonts.acquire(tmp_path, fetch=lambda url: raw + b"!")
    with pytest.raises(data.DataError, match="--font-share 0"):
        fonts.acquire(tmp_path, fetch=lambda url: (_ for _ in ()).throw(OSError("no network")))
    assert not path.exists()  # nothing unverified was kept


def test_the_digits_are_drawn_once_and_again_for_other_fonts(tmp_path, monkeypatch):
    raw = tarball({"package/files/f-latin-400-normal.woff": DEJAVU.read_bytes()})
    monkeypatch.setattr(fonts, "FAMILIES", {"fake": data.sha256(raw)})
    monkeypatch.setattr(fonts, "_download", lambda url: raw)
    drawn = []
    real = fonts.draw
    monkeypatch.setattr(fonts, "draw", lambda *a, **k: drawn.append(1) or real(*a, **k))
    x, y = fonts.font_digits(tmp_path, variants=1)
    again = fonts.font_digits(tmp_path, variants=1)
    assert len(drawn) == 1 and torch.equal(again[0], x) and torch.equal(again[1], y) and len(y) == 10
    other = tarball({"package/files/g-latin-400-normal.woff": DEJAVU.read_bytes()})  # another pin
    monkeypatch.setattr(fonts, "FAMILIES", {"fake": data.sha256(other)})
    monkeypatch.setattr(fonts, "_download", lambda url: other)
    fonts.font_digits(tmp_path, variants=1)
    assert len(drawn) == 2


def test_font_digits_never_outnumber_mnists_own():
    mnist = tiny_mnist()  # 640 training images
    x, y = torch.randint(0, 255, (500, 28, 28), dtype=torch.uint8), torch.arange(500) % 10
    mixed, added = with_fonts(mnist, x, y, 0.2, seed=0)
    assert added == round(0.2 * 640 / 0.8) == 160 and len(mixed.train_y) == 800
    assert torch.equal(mixed.train_x[:640], mnist.train_x) and torch.equal(mixed.test_x, mnist.test_x)
    drawn = {tuple(img.flatten().tolist()[:8]) for img in mixed.train_x[640:]}
    assert len(drawn) == 160 and drawn <= {tuple(img.flatten().tolist()[:8]) for img in x}
    everything, added = with_fonts(mnist, x[:50], y[:50], 0.2, seed=0)
    assert added == 50 and torch.equal(everything.train_x[640:], x[:50])  # fewer than the share: all of them


def test_the_default_recipe_trains_on_fonts_and_a_run_records_how_many(tiny_data, tmp_path, monkeypatch):
    assert get_config("default").font_share > 0 and get_config("seed").font_share == 0
    x, y = tiny_mnist(n_train=100, seed=3).train_x, tiny_mnist(n_train=100, seed=3).train_y
    monkeypatch.setattr(fonts, "font_digits", lambda data_dir=None, log=None: (x, y))
    run = tmp_path / "run"
    assert main(["train", "--recipe", "fast", "--epochs", "1", "--font-share", "0.1", "--out", str(run),
                 "--device", "cpu"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["font_digits"] == round(0.1 * 640 / 0.9) and json.loads((run / "config.json").read_text())[
        "font_share"] == 0.1
    assert main(["train", "--recipe", "fast", "--epochs", "1", "--out", str(tmp_path / "plain"), "--device", "cpu"]) == 0
    assert json.loads((tmp_path / "plain" / "metrics.json").read_text())["font_digits"] == 0


@pytest.mark.slow
def test_a_pinned_tarball_is_fetched_from_the_npm_registry(tmp_path, monkeypatch):
    """The URL scheme and a pin, for real: the smallest family's tarball, verified, and its fonts drawn."""
    monkeypatch.setattr(fonts, "FAMILIES", {"sue-ellen-francisco": fonts.FAMILIES["sue-ellen-francisco"]})
    path, = fonts.acquire(tmp_path)
    x, y = fonts.draw(fonts.font_files(path), variants=1)
    assert len(y) == 10


def test_mnist_data_warns_but_succeeds_when_the_fonts_cannot_be_fetched(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(data, "acquire", lambda data_dir=None, log=None: tmp_path)

    def offline(data_dir=None, log=None):
        raise data.DataError("could not fetch the handwriting font caveat (...); or train with --font-share 0")

    monkeypatch.setattr(fonts, "acquire", offline)
    assert main(["data", "--data-dir", str(tmp_path)]) == 0  # MNIST is what `data` must give; `fast` needs no fonts
    out, err = capsys.readouterr()
    assert "MNIST ready" in out and err.startswith("warning: could not fetch the handwriting font") and "--font-share 0" in err


def test_a_run_from_before_the_fonts_resumes_without_them():
    then = {k: v for k, v in dataclasses.asdict(DefaultConfig()).items() if k != "font_share"}  # its config.json
    assert run_config(then).font_share == 0.0
    assert run_config(dataclasses.asdict(DefaultConfig())).font_share == 0.08
