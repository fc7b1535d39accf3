"""Shared fixtures: the real MNIST data, acquired once per test session.

A test that uses the real data (`mnist_dir` or `test_split`, directly or through another
fixture) is marked `slow` here, so `pytest -m "not slow"` runs without it, in well under a minute.
"""

from __future__ import annotations

import pytest

from mnist_cnn import data

REAL_DATA = {"mnist_dir", "test_split"}


def pytest_collection_modifyitems(items):
    for item in items:
        if REAL_DATA & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def mnist_dir():
    """A folder with the four verified IDX files (acquired into the default cache if needed)."""
    return data.acquire()


@pytest.fixture(scope="session")
def test_split(mnist_dir):
    """(uint8 images (10000, 28, 28), int64 labels) of the MNIST test set."""
    return data.read_split(mnist_dir, "test")


def tiny_mnist(n_train: int = 640, n_val: int = 64, n_test: int = 128, seed: int = 0):
    """A learnable stand-in for MNIST, in memory: class k is a bright bar at column 2k+4 (plus noise)."""
    import torch

    from mnist_cnn.data import MNIST

    g = torch.Generator().manual_seed(seed)

    def split(n):
        y = torch.randint(0, 10, (n,), generator=g)
        x = torch.randint(0, 40, (n, 28, 28), generator=g, dtype=torch.uint8)
        for i, k in enumerate(y.tolist()):
            x[i, 4:24, 2 * k + 4:2 * k + 6] = 255
        return x, y

    return MNIST(*split(n_train), *split(n_val), *split(n_test))


@pytest.fixture
def tiny_data(monkeypatch):
    """`data.load_mnist` gives `tiny_mnist` (seconds-fast training runs), and run reports draw no figures."""
    from mnist_cnn import report

    def load(data_dir=None, val_size=5000, split_seed=0, limit_train=None, device="cpu", log=lambda m: None):
        mnist = tiny_mnist()
        mnist.train_x, mnist.train_y = mnist.train_x[:limit_train], mnist.train_y[:limit_train]
        return mnist.to(device)

    monkeypatch.setattr(data, "load_mnist", load)
    monkeypatch.setattr(report, "write_run_report", lambda run_dir, *a, **k: None)
    return tiny_mnist()
