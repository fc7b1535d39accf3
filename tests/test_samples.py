"""The samples store and labelled folders: round trips, concurrent writers, a writer killed mid-transaction,
damaged files reported and left alone, ImageFolder import and export."""

from __future__ import annotations

import io
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from mnist_cnn import imagefolder, images, preprocess, samples
from mnist_cnn.errors import UserError
from mnist_cnn.samples import Store, StoreError

SRC = str(Path(samples.__file__).resolve().parents[1])


def digit(seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (28, 28), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def png(seed: int = 0) -> bytes:
    return samples.mnist_png(digit(seed))


def drawing(kind: str, size: int = 160, width: int = 14) -> Image.Image:
    """A dark-on-light digit-like drawing: "1" a bar, "0" a ring, "7" a bar and a diagonal."""
    img = Image.new("L", (size, size), 255)
    d = ImageDraw.Draw(img)
    c = size // 2
    if kind == "1":
        d.line([(c, 20), (c + width - 14, size - 20)], fill=0, width=width)
    elif kind == "0":
        d.ellipse([c - 40, 20, c + 40, size - 20], outline=0, width=width)
    else:
        d.line([(c - 45, 25), (c + 45, 25), (c - 10, size - 20)], fill=0, width=width)
    return img


def write_png(path: Path, img: Image.Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")


# ------------------------------------------------------------------ the store


def test_round_trip_dedup_and_delete(tmp_path):
    path = tmp_path / "samples.db"
    with Store(path) as store:
        a, dup = store.add(digit(1), 3, png(1), predicted=5, probability=0.75, source="page", name="d.png")
        assert not dup
        assert store.add(digit(1), 3, png(1)) == (a, True)  # the same digit with the same label: kept once
        b, _ = store.add(digit(1), 4, png(1))  # ... with another label: a second sample
        c, _ = store.add(digit(2), 7, png(2), source="import")
        assert store.count() == 3
    with Store(path, create=False) as store:  # reopened: everything as it was written
        rows = list(store.rows(originals=True))
        assert [r.id for r in rows] == [a, b, c] and [r.label for r in rows] == [3, 4, 7]
        first = rows[0]
        assert torch.equal(first.mnist, digit(1)) and first.original == png(1)
        assert (first.predicted, first.probability, first.source, first.name) == (5, 0.75, "page", "d.png")
        assert rows[1].predicted is None and rows[1].source == "cli"
        x, y = store.tensors()
        assert x.shape == (3, 28, 28) and x.dtype == torch.uint8 and y.tolist() == [3, 4, 7]
        stats = store.stats()
        assert stats["count"] == 3 and stats["per_label"][3] == 1 and stats["per_source"] == {"page": 1, "cli": 1,
                                                                                               "import": 1}
        assert stats["model_wrong"] == 1
        assert store.delete([a, 999]) == [a]
        d, _ = store.add(digit(1), 3, png(1))
        assert d > c  # a deleted id is never handed out again
        assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize("kwargs, words", [
    (dict(mnist=digit(0), label=10, original=b"x"), "0 to 9"),
    (dict(mnist=digit(0), label=True, original=b"x"), "0 to 9"),
    (dict(mnist=torch.zeros(28, 28), label=1, original=b"x"), "uint8"),
    (dict(mnist=digit(0), label=1, original=b"x" * (samples.MAX_ORIGINAL_BYTES + 1)), "at most"),
    (dict(mnist=digit(0), label=1, original=b"x", source="web"), "source"),
])
def test_bad_samples_are_refused_and_nothing_is_written(tmp_path, kwargs, words):
    with Store(tmp_path / "s.db") as store:
        with pytest.raises(UserError, match=words):
            store.add_many([dict(mnist=digit(5), label=2, original=b"ok"), kwargs])  # all of them, or none
        assert store.count() == 0


def test_digest_is_order_free_and_label_sensitive():
    x, y = torch.stack([digit(1), digit(2)]), torch.tensor([1, 2])
    assert samples.digest(x, y) == samples.digest(x.flip(0), y.flip(0))
    assert samples.digest(x, y) != samples.digest(x, torch.tensor([1, 3]))


def test_an_original_is_capped():
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (1500, 1500, 3), dtype=np.uint8))
    raw = samples.encode_original(noise)
    assert len(raw) <= samples.MAX_ORIGINAL_BYTES
    assert max(Image.open(io.BytesIO(raw)).size) <= samples.ORIGINAL_SIDE
    small = drawing("1").convert("RGBA")
    back = Image.open(io.BytesIO(samples.encode_original(small)))
    assert back.size == small.size and back.mode == "RGBA"  # a drawing is kept as it came


# ------------------------------------------------------- writers at once, crashes

WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    sys.path.insert(0, {src!r})
    from mnist_cnn.samples import Store
    path, tag, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    with Store(path) as store:
        print("ready", flush=True)
        sys.stdin.readline()  # every writer starts at once
        for i in range(n):  # one transaction each
            x = np.zeros((28, 28), np.uint8)
            x.flat[:3] = tag, i // 256, i % 256
            store.add(x, i % 10, b"png", source="cli")
        assert "torch" not in sys.modules  # a writer starts in a blink
""")


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    path, n = tmp_path / "s.db", 100
    code = WRITER.format(src=SRC)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path), str(tag), str(n)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for tag in (1, 2)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    for p in procs:
        assert p.wait(timeout=120) == 0
    with Store(path) as store:
        x, _ = store.tensors()
        assert store.count() == 2 * n
        tags = x.view(len(x), -1)[:, 0].tolist()
        assert tags.count(1) == n and tags.count(2) == n
        assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


KILLED = textwrap.dedent("""
    import sys, time
    import numpy as np
    sys.path.insert(0, {src!r})
    from mnist_cnn.samples import Store
    store = Store(sys.argv[1])
    for i in range(5):  # five committed samples
        store.add(np.full((28, 28), i, np.uint8), i, b"png")

    class Stall:  # the store's connection, but the batch's third insert never returns
        def __init__(self, db):
            self.db, self.inserts = db, 0
        def execute(self, sql, *args):
            out = self.db.execute(sql, *args)
            self.inserts += sql.startswith("INSERT")
            if self.inserts == 3:
                print("inside", flush=True)
                time.sleep(600)
            return out
        def __getattr__(self, name):
            return getattr(self.db, name)

    store.db = Stall(store.db)
    store.add_many(dict(mnist=np.full((28, 28), 100 + i, np.uint8), label=1, original=b"png")
                   for i in range(10))
""")


def test_a_writer_killed_mid_transaction_loses_only_its_uncommitted_batch(tmp_path):
    path = tmp_path / "s.db"
    proc = subprocess.Popen([sys.executable, "-c", KILLED.format(src=SRC), str(path)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "inside"  # holding the write lock, three rows inserted
        assert Path(f"{path}-wal").exists()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    with Store(path) as store:  # opens at once: the dead writer's lock went with it
        x, y = store.tensors()
        assert y.tolist() == [0, 1, 2, 3, 4]  # every committed sample, and none of the batch
        assert [int(img[0, 0]) for img in x] == [0, 1, 2, 3, 4]
        assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        store.add(digit(9), 9, b"png")  # and it takes writes again
        assert store.count() == 6


# ------------------------------------------------------------ damaged files


def test_a_file_that_is_not_a_database_is_reported_and_left_alone(tmp_path):
    path = tmp_path / "samples.db"
    path.write_bytes(b"this is not a database, but someone's notes " * 100)
    before = path.read_bytes()
    with pytest.raises(StoreError, match="damaged.*left as it is"):
        Store(path)
    assert path.read_bytes() == before and not Path(f"{path}-wal").exists()


def test_a_damaged_store_is_reported_and_left_alone(tmp_path):
    path = tmp_path / "samples.db"
    with Store(path) as store:
        store.add_many(dict(mnist=digit(i), label=i % 10, original=png(i)) for i in range(200))
    size = path.stat().st_size
    with open(path, "r+b") as f:  # scribble over pages in the middle of the file
        f.seek(size // 2)
        f.write(b"\xa5" * 8192)
    before = path.read_bytes()
    with pytest.raises(StoreError, match="damaged"):
        Store(path)
    assert path.read_bytes() == before


def test_another_sqlite_database_is_not_taken_over(tmp_path):
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE notes (text TEXT)")
    with pytest.raises(StoreError, match="not a mnist-cnn samples store"):
        Store(path)
    with sqlite3.connect(path) as db:
        assert [r[0] for r in db.execute("SELECT name FROM sqlite_master")] == ["notes"]


def test_a_missing_store_is_not_created_when_reading(tmp_path):
    with pytest.raises(StoreError, match="no samples store"):
        imagefolder.load_labelled(tmp_path / "none.db")
    assert not (tmp_path / "none.db").exists()


# ------------------------------------------------------------ labelled folders


@pytest.fixture
def folder(tmp_path):
    """0/, 1/, 7/ of drawings, with one broken file, one blank image and a stray file."""
    root = tmp_path / "mine"
    for i, width in enumerate((10, 16, 24)):
        for kind in ("0", "1", "7"):
            write_png(root / kind / f"{kind}-{i}.png", drawing(kind, width=width))
    (root / "7" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    write_png(root / "1" / "blank.png", Image.new("L", (60, 60), 255))
    (root / "README.txt").write_text("my digits")
    return root


def test_import_reports_what_it_could_not_read_and_export_round_trips(folder, tmp_path):
    with Store(tmp_path / "a.db") as store:
        report = imagefolder.import_folder(store, folder)
        assert len(report.added) == 9 and report.duplicates == 0
        assert dict(report.failed) == {"README.txt": "not a digit's folder (0 to 9)", "1/blank.png": "no ink found",
                                       "7/broken.png": "not an image (or not in a format Pillow can read)"}
        again = imagefolder.import_folder(store, folder)
        assert again.added == [] and again.duplicates == 9 and store.count() == 9
        first = next(store.rows())
        assert first.source == "import" and first.name == "0/0-0.png"
        # The oracle: what `mnist-cnn predict` sees of the same file.
        assert torch.equal(first.mnist, preprocess.to_mnist(images.open_image(folder / "0" / "0-0.png")))
        written = imagefolder.export_folder(store, tmp_path / "out", "both")
        assert written == {"original": 9, "28x28": 9}
        x, y = store.tensors()
    with Store(tmp_path / "b.db") as other:  # the exported originals, imported again: the same samples
        back = imagefolder.import_folder(other, tmp_path / "out" / "original")
        assert len(back.added) == 9 and not back.failed
        assert samples.digest(*other.tensors()) == samples.digest(x, y)
    small = sorted((tmp_path / "out" / "28x28").glob("*/*.png"))
    assert len(small) == 9 and {p.parent.name for p in small} == {"0", "1", "7"}
    assert {np.asarray(Image.open(p)).tobytes() for p in small} == {img.numpy().tobytes() for img in x}


def test_load_reads_a_folder_or_a_store(folder, tmp_path):
    found = imagefolder.load_labelled(folder)
    assert len(found) == 9 and sorted(found.y.tolist()) == [0] * 3 + [1] * 3 + [7] * 3 and len(found.failed) == 3
    with Store(tmp_path / "s.db") as store:
        imagefolder.import_folder(store, folder)
    stored = imagefolder.load_labelled(tmp_path / "s.db")
    assert stored.record()["sha256"] == found.record()["sha256"] and stored.record()["count"] == 9
    with pytest.raises(UserError, match="no such folder"):
        imagefolder.scan(tmp_path / "nowhere")
