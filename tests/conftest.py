"""Shared fixtures: the real MNIST data, acquired once per test session."""

from __future__ import annotations

import pytest

from mnist_cnn import data


@pytest.fixture(scope="session")
def mnist_dir():
    """A folder with the four verified IDX files (acquired into the default cache if needed)."""
    return data.acquire()


@pytest.fixture(scope="session")
def test_split(mnist_dir):
    """(uint8 images (10000, 28, 28), int64 labels) of the MNIST test set."""
    return data.read_split(mnist_dir, "test")
