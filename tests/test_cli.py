"""The command line itself: help, version, usage errors, devices, progress lines, main.sh's last words."""

from __future__ import annotations

import argparse
import io
import json
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

import mnist_cnn
from mnist_cnn import cli, cli_args, cli_handwriting, data
from mnist_cnn.progress import TrainProgress
from mnist_cnn.recipes import RECIPES, get_config

ROOT = Path(__file__).resolve().parents[1]


def usage_error(argv, capsys) -> str:
    """stderr of a command that argparse refuses (exit 2, as for any usage error)."""
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_version_is_the_packages(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert exc.value.code == 0 and capsys.readouterr().out == f"mnist-cnn {version}\n"
    assert mnist_cnn.__version__ == version


def test_every_flag_has_help_and_shows_its_default():
    parser = cli.build_parser()
    commands = cli_args.subcommands(parser)
    assert set(commands) == set(cli.COMMANDS)
    assert all(action.help for action in parser._actions)
    nested = {f"{name} {action}": p for name, sub in commands.items()
              for action, p in cli_args.subcommands(sub).items()}
    assert set(nested) == {f"samples {action}" for action in cli_handwriting.SAMPLES_ACTIONS}  # `mnist-cnn samples list` ...
    for name, parser in {**commands, **nested}.items():
        text = " ".join(parser.format_help().split())  # unwrapped
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            where = f"{name} {'/'.join(action.option_strings) or action.dest}"
            assert action.help and len(action.help.split()) >= 2, f"{where} has no help"
            if action.default not in (None, False):
                assert f"(default: {action.default})" in text, f"{where}: its default is not shown"


def test_defaults_spelled_in_help_are_their_owners():
    """Defaults owned by modules that import torch are written out in cli_args, so --help stays cheap: here they
    are checked against their owners."""
    from mnist_cnn import distributed, export, imagefolder, runs, samples

    train = " ".join(cli_args.subcommands(cli.build_parser())["train"].format_help().split())
    assert f"(default: {distributed.DEFAULT_TIMEOUT_S:g})" in train
    assert cli_args.CALIBRATION_HELP == str(export.CALIBRATION_IMAGES)
    assert cli_args.SORT_CHOICES == list(runs.SORT_KEYS)
    assert cli_args.EXPORT_IMAGES == list(imagefolder.IMAGES)
    assert cli_args.SAMPLES_DB_HELP.endswith(samples.DB_NAME)
    for arch in cli_args.ARCHS:  # convert's --arch: a recipe of that name trains that network
        assert RECIPES[arch]().model == arch


def test_help_and_usage_errors_do_not_import_torch():
    """`mnist-cnn --help` used to take 3.3 s, most of it importing torch."""
    code = (
        "import sys\n"
        "from mnist_cnn import cli, cli_handwriting\n"
        "for argv in [['--help'], ['--version'], ['predict', '--top-k', '3', 'x.png'], ['train', '--epochs', '0'],\n"
        "             *[[name, '--help'] for name in cli.COMMANDS],\n"
        "             *[['samples', a, '--help'] for a in cli_handwriting.SAMPLES_ACTIONS]]:\n"
        "    try:\n"
        "        cli.main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = sorted(m for m in ('torch', 'numpy', 'PIL', 'matplotlib', 'safetensors') if m in sys.modules)\n"
        "print('heavy:', *heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "heavy:"
    assert "usage: mnist-cnn predict" in proc.stdout + proc.stderr
    real = subprocess.run([sys.executable, "-m", "mnist_cnn", "--help"], capture_output=True, text=True, timeout=60)
    assert real.returncode == 0 and real.stdout.startswith("usage: mnist-cnn")


def test_unknown_flag_gets_the_subcommands_usage_and_the_nearest_flag(capsys):
    err = usage_error(["predict", "--top-k", "3", "x.png"], capsys)
    assert err.startswith("usage: mnist-cnn predict")
    assert err.splitlines()[-1] == "mnist-cnn predict: error: unrecognized arguments: --top-k (did you mean --topk?)"
    err = usage_error(["train", "--epohcs=3"], capsys)
    assert err.startswith("usage: mnist-cnn train") and "(did you mean --epochs?)" in err
    assert "did you mean" not in usage_error(["evaluate", "--zzz"], capsys)


@pytest.mark.parametrize("argv, suggestion", [
    (["trian"], "did you mean 'train'?"),
    (["train", "--recipe", "defualt"], "did you mean 'default'?"),
    (["predict", "x.png", "--format", "jsno"], "did you mean 'json'?"),
])
def test_a_misspelt_choice_gets_the_nearest(argv, suggestion, capsys):
    assert suggestion in usage_error(argv, capsys)


@pytest.mark.parametrize("argv, message", [
    (["train", "--epochs", "0"], "argument --epochs: must be 1 or more"),
    (["train", "--batch-size", "-3"], "argument --batch-size: must be 1 or more"),
    (["train", "--lr", "-1"], "argument --lr: must be more than 0, not -1"),
    (["train", "--lr", "nan"], "argument --lr: must be more than 0, not nan"),
    (["train", "--limit-train", "0"], "argument --limit-train: must be 1 or more"),
    (["train", "--ensemble", "0"], "argument --ensemble: must be 1 or more"),
    (["train", "--font-share", "1"], "argument --font-share: must be from 0 up to 1 (not 1), not 1"),
    (["train", "--dist-timeout", "0"], "argument --dist-timeout: must be more than 0"),
    (["predict", "x.png", "--min-confidence", "1.5"], "argument --min-confidence: must be from 0 to 1, not 1.5"),
    (["serve", "--min-confidence", "-0.1"], "argument --min-confidence: must be from 0 to 1"),
    (["train", "--lr", "fast"], "argument --lr: invalid number value: 'fast'"),
])
def test_bad_option_values_are_usage_errors_that_name_the_flag(argv, message, capsys, monkeypatch):
    monkeypatch.setattr(data, "load_mnist", lambda *a, **k: pytest.fail("loaded MNIST for a bad flag"))
    err = usage_error(argv, capsys)
    assert err.startswith(f"usage: mnist-cnn {argv[0]}") and message in err.splitlines()[-1]


@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_an_unavailable_device_is_one_line_and_leaves_no_run_folder(device, tmp_path, capsys, monkeypatch):
    if device == "cuda" and torch.cuda.is_available() or device == "mps" and torch.backends.mps.is_available():
        pytest.skip(f"this machine has {device}; the test is for one that lacks it")
    monkeypatch.setattr(data, "load_mnist", lambda *a, **k: pytest.fail("loaded MNIST before checking the device"))
    for argv in (["train", "--device", device, "--out", str(tmp_path / "run")],
                 ["evaluate", "--device", device], ["serve", "--device", device]):
        assert cli.main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"error: --device {device}, but this torch has no") and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------- progress


def _fake_training(progress: TrainProgress, epochs: int, steps: int) -> None:
    with progress:
        for epoch in range(epochs):
            for step in range(epoch * steps, (epoch + 1) * steps):
                progress.step({"step": step, "epoch": epoch, "loss": 0.5, "acc": 90.0, "lr": 0.1})
            progress.epoch({"epoch": epoch + 1, "seconds": 1.0, "val_acc": 99.0})


def test_progress_in_a_log_file_is_lines_not_a_redrawn_bar(capsys):
    """Not a terminal (CI, nohup, a file): no bar with its carriage returns, one line per epoch and log step."""
    cfg = get_config("fast", epochs=2, log_every=40)
    _fake_training(TrainProgress(cfg, n_train=100 * cfg.batch_size), epochs=2, steps=100)
    out, err = capsys.readouterr()
    assert err == ""
    assert out.splitlines() == [
        *(f"Train Step: {s}\tLoss: 0.5000000000\tAccuracy: 90.0000000000" for s in (0, 40, 80)),
        "epoch 1/2: 1.0 s, validation accuracy 99.00%",
        *(f"Train Step: {s}\tLoss: 0.5000000000\tAccuracy: 90.0000000000" for s in (120, 160)),
        "epoch 2/2: 1.0 s, validation accuracy 99.00%"]


def test_progress_on_a_terminal_is_a_bar(capsys):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    screen = Terminal()
    cfg = get_config("fast", epochs=1)
    _fake_training(TrainProgress(cfg, n_train=50 * cfg.batch_size, stream=screen), epochs=1, steps=50)
    assert "\r" in screen.getvalue() and "step" in screen.getvalue()
    assert "epoch 1/1" in capsys.readouterr().out


# ----------------------------------------------------------------- main.sh


def test_main_sh_ends_with_commands_that_use_the_new_model(tmp_path):
    """scripts/main.sh with stand-ins for set-up and mnist-cnn: what it prints last are commands our parser takes."""
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "main.sh").write_text((ROOT / "scripts" / "main.sh").read_text())
    (tmp_path / "scripts" / "setup.sh").write_text("exit 0\n")
    stub = tmp_path / ".venv" / "bin" / "mnist-cnn"
    stub.parent.mkdir(parents=True)
    stub.write_text("#!/bin/sh\necho \"(mnist-cnn $*)\"\n")
    stub.chmod(0o755)
    proc = subprocess.run(["bash", str(tmp_path / "scripts" / "main.sh"), "--recipe", "fast"], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "(mnist-cnn train --out runs/main-" in proc.stdout and "--recipe fast)" in proc.stdout
    suggested = [shlex.split(line, comments=True)[1:] for line in proc.stdout.splitlines()
                 if line.strip().startswith(".venv/bin/mnist-cnn ")]
    assert [argv[0] for argv in suggested] == ["predict", "serve"]
    for argv in suggested:
        args = cli.build_parser().parse_args(argv)
        assert str(args.model) == "latest"


def test_samples_commands_import_list_export_delete_stats(tmp_path, capsys):
    """`mnist-cnn samples ...` on a folder of drawings; the model's answers are recorded on import."""
    from PIL import Image, ImageDraw

    folder, db = tmp_path / "mine", str(tmp_path / "s.db")
    for label, width in (("1", 14), ("1", 22), ("7", 16)):
        img = Image.new("L", (160, 160), 255)
        draw = ImageDraw.Draw(img)
        draw.line([(80, 20), (80 + width - 14, 140)] if label == "1" else [(35, 25), (125, 25), (70, 140)],
                  fill=0, width=width)
        (folder / label).mkdir(parents=True, exist_ok=True)
        img.save(folder / label / f"w{width}.png")
    (folder / "7" / "broken.png").write_bytes(b"not a png")
    assert cli.main(["samples", "import", str(folder), "--db", db]) == 1  # one file could not be read
    out, err = capsys.readouterr()
    assert "imported 3 samples" in out and "holds 3" in out
    assert err.strip() == f"{folder}/7/broken.png: not imported: not an image (or not in a format Pillow can read)"
    assert cli.main(["samples", "list", "--db", db, "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["id"], r["label"], r["source"]) for r in rows] == [(1, 1, "import"), (2, 1, "import"), (3, 7, "import")]
    assert all(r["predicted"] in range(10) and 0 < r["probability"] <= 1 for r in rows)
    assert cli.main(["samples", "stats", "--db", db]) == 0
    assert "3 samples" in capsys.readouterr().out
    assert cli.main(["samples", "export", str(tmp_path / "out"), "--db", db, "--images", "28x28"]) == 0
    assert sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*.png")) == [
        "1/1.png", "1/2.png", "7/3.png"]
    assert cli.main(["samples", "delete", "2", "9", "--db", db]) == 1
    out, err = capsys.readouterr()
    assert "deleted 1 sample(s)" in out and "holds 2" in out and "no such sample: 9" in err
    (tmp_path / "bad.db").write_bytes(b"garbage" * 20)
    assert cli.main(["samples", "list", "--db", str(tmp_path / "bad.db")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "damaged" in err and err.count("\n") == 1
    assert cli.main(["samples", "stats", "--db", str(tmp_path / "none.db")]) == 1  # reading never creates one
    assert not (tmp_path / "none.db").exists()
