"""The training job (pipeline.py): train -> calibrate -> test -> save -> report, for the CLI and the API alike.

These tests train on `tiny_mnist` (conftest), so each run takes a second or two.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

from mnist_cnn import cli, training
from mnist_cnn.recipes import get_config

SRC = Path(__file__).resolve().parents[1] / "src" / "mnist_cnn"


def test_resume_applies_and_records_new_epochs_and_lr(tiny_data, tmp_path, capsys):
    """`train --resume RUN --epochs 2 --lr 0.5` once silently ignored both flags."""
    run = tmp_path / "run"
    assert cli.main(["train", "--recipe", "fast", "--epochs", "1", "--out", str(run)]) == 0
    assert cli.main(["train", "--resume", str(run), "--epochs", "2", "--lr", "0.5"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert (config["epochs"], config["lr"]) == (2, 0.5)
    history = json.loads((run / "history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [1, 2]
    assert history["resumes"] == [{"epoch": 1, "changed": {"epochs": [1, 2], "lr": [0.1, 0.5]}}]
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 2


def test_resume_refuses_changes_it_cannot_apply(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", "--recipe", "fast", "--epochs", "1", "--out", str(run)]) == 0
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(run), "--batch-size", "64"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "batch_size" in err and err.count("\n") == 1


class _Reads:
    """Counts the calls that copy a tensor's value to the host (each one waits for the device)."""

    def __init__(self, monkeypatch):
        self.calls = []
        for name in ("item", "tolist", "__float__", "__bool__", "__int__"):
            real = getattr(torch.Tensor, name)

            def spy(self_, *a, _real=real, _name=name, **k):
                self.calls.append(_name)
                return _real(self_, *a, **k)

            monkeypatch.setattr(torch.Tensor, name, spy)


@pytest.mark.parametrize("augment", [{}, {"rotate": 5.0}, {"translate": 2.0}])
def test_the_training_loop_reads_the_device_only_at_log_points(monkeypatch, augment):
    """Each step once waited for the device twice (`loss.item()`, `acc.item()`)."""
    from conftest import tiny_mnist

    mnist = tiny_mnist()
    cfg = get_config("fast", epochs=1, batch_size=64, log_every=1000, **augment)
    model = training.build(cfg, "cpu")
    optimizer = training.make_optimizer(model, cfg)
    steps = len(mnist.train_x) // cfg.batch_size
    rows = []
    reads = _Reads(monkeypatch)
    training.train_one_epoch(model, optimizer, mnist, cfg, 0, 0, steps, steps, on_step=rows.append)
    monkeypatch.undo()
    assert len(reads.calls) <= 1, reads.calls  # one read of the whole epoch's losses and accuracies
    assert [r["step"] for r in rows] == list(range(steps))
    assert all(isinstance(r["loss"], float) and isinstance(r["acc"], float) for r in rows)


def _imports(path: Path) -> set[str]:
    """The package's modules that `path` imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mnist_cnn."):
            found.add(node.module.split(".")[1])
    return found - {path.stem}


def test_the_modules_import_each_other_without_cycles():
    """report and runs once imported each other; checkpoint, export and report imported data to write a file."""
    graph = {p.stem: _imports(p) for p in SRC.glob("*.py")}
    graph = {name: {m for m in deps if m in graph} for name, deps in graph.items()}

    def cycle_from(start, path):
        for nxt in sorted(graph[start]):
            if nxt == path[0]:
                return path + [nxt]
            if nxt not in path:
                found = cycle_from(nxt, path + [nxt])
                if found:
                    return found
        return None

    for name in graph:
        cycle = cycle_from(name, [name])
        assert cycle is None, " -> ".join(cycle)
    assert not graph["runs"] & {"training", "checkpoint", "report", "pipeline", "data"}  # listing only
    assert "training" not in graph["api"] or "pipeline" in graph["api"]  # the API trains through the pipeline


def test_files_are_written_by_the_files_module_only():
    """atomic_write lived in data.py, so checkpoint, export and report imported the data module to write a file."""
    for path in SRC.glob("*.py"):
        tree = ast.parse(path.read_text())
        defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        assert path.stem == "files" or "atomic_write" not in defined, path.name
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and any(a.name == "atomic_write" for a in node.names):
                assert node.module == "files", (path.name, node.module)
        assert "os.umask" not in path.read_text(), path.name  # reading the umask sets it, process-wide


def test_atomic_writes_get_the_permissions_of_any_new_file(tmp_path):
    """The umask is applied by the kernel at creation: never read (reading it sets it, process-wide)."""
    import os

    from mnist_cnn.files import atomic_write

    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "a" / "f.bin", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "a" / "f.bin").stat().st_mode & 0o777 == 0o640
    assert not list((tmp_path / "a").glob(".*.tmp"))
