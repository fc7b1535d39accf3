"""User mistakes are one line on stderr; bugs keep their tracebacks (`errors.UserError` draws the line)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from mnist_cnn import cli, images, preprocess

PACKAGE_ROOT = Path(preprocess.__file__).resolve().parents[1]  # the checkout under test, for subprocesses


def test_a_bug_that_raises_valueerror_keeps_its_traceback(monkeypatch):
    """cli.main once caught every ValueError, so a bug printed one line and lost where it happened."""
    def buggy(args):
        raise ValueError("a bug, not the user's mistake")

    monkeypatch.setattr(cli, "cmd_data", buggy)
    with pytest.raises(ValueError, match="a bug"):
        cli.main(["data"])


def test_a_bug_in_preprocessing_is_not_reported_as_a_bad_image(tmp_path, monkeypatch):
    """predict once caught every Exception per input: a bug read "cannot process it (ZeroDivisionError())"."""
    image = tmp_path / "digit.png"
    Image.new("L", (28, 28)).save(image)
    monkeypatch.setattr(preprocess, "to_mnist", lambda img: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        cli.main(["predict", str(image)])


def test_a_bug_prints_a_traceback_from_the_command_line(tmp_path):
    image = tmp_path / "digit.png"
    Image.new("L", (28, 28)).save(image)
    code = ("import sys; from mnist_cnn import cli, preprocess; preprocess.to_mnist = lambda img: 1 / 0; "
            "sys.exit(cli.main(sys.argv[1:]))")
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT)}
    done = subprocess.run([sys.executable, "-c", code, "predict", str(image)], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, env=env)
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr and "ZeroDivisionError" in done.stderr


@pytest.mark.parametrize("argv, message", [
    (["evaluate", "absent.safetensors"], "error: absent.safetensors: no such checkpoint\n"),
    (["runs", "no-such-folder"], "error: no-such-folder: no such folder\n"),
    (["convert", "absent.pt", "--out", "m.safetensors"], "error: absent.pt: no such file\n"),
])
def test_a_user_mistake_is_one_line_on_stderr(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 1
    out = capsys.readouterr()
    assert out.err == message and out.out == ""


def test_every_error_for_people_is_a_user_error():
    from mnist_cnn import checkpoint, data, distributed, errors, export, files, segment

    for cls in (images.ImageError, data.DataError, checkpoint.CheckpointError, distributed.DistributedError,
                files.TooBig, export.ExportError, segment.TooManyDigits):
        assert issubclass(cls, errors.UserError), cls
