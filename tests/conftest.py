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
