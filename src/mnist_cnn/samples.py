"""The store of people's labelled digits: one SQLite file (`samples.db` under the data folder).

Each row keeps what a correction needs to be trusted later: the original upload (a PNG, at most
`MAX_ORIGINAL_BYTES`), the 28x28 the network saw, the true label, the model's answer and its
probability, where the sample came from and when. The file is in WAL mode, and every write is
one `BEGIN IMMEDIATE` transaction, so the server's workers and a CLI import may write at once
without losing or corrupting a sample, and a writer killed mid-transaction leaves only what it had
committed. A file that is not a sound samples store is reported and left alone, never recreated.
Folders of labelled images (torchvision's ImageFolder layout) are `imagefolder.py`'s.

    mnist-cnn samples stats
"""

from __future__ import annotations

import hashlib
import io
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np
from PIL import Image

from .errors import UserError

if TYPE_CHECKING:  # torch is imported where tensors are made: a writer (and `samples stats`) need not wait for it
    import torch

DB_NAME = "samples.db"  # under data.default_data_dir(), unless told otherwise
APPLICATION_ID = 0x4D4E5354  # "MNST" in the SQLite header: the file is a samples store, not another database
SCHEMA_VERSION = 1  # PRAGMA user_version
SOURCES = ("page", "cli", "import")  # the web page (POST /api/samples), the Python API or CLI, a folder import
MAX_ORIGINAL_BYTES = 2 * 2**20  # an original is re-encoded smaller until its PNG fits
ORIGINAL_SIDE = 1024  # ...starting at this longer side (preprocess finds ink on a copy this big)
BUSY_TIMEOUT_MS = 30_000  # how long a writer waits for another's transaction before it gives up
SIDE = 28

SCHEMA = (f"""CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, so a deleted id stays deleted
    label INTEGER NOT NULL CHECK (label BETWEEN 0 AND 9),
    mnist BLOB NOT NULL CHECK (length(mnist) = {SIDE * SIDE}),  -- uint8 28x28, white ink on black
    original BLOB NOT NULL CHECK (length(original) <= {MAX_ORIGINAL_BYTES}),  -- PNG
    predicted INTEGER CHECK (predicted BETWEEN 0 AND 9),  -- the model's best guess, NULL when unknown
    probability REAL CHECK (probability BETWEEN 0 AND 1),
    source TEXT NOT NULL CHECK (source IN {SOURCES}),
    name TEXT,  -- the imported file, or the upload's name
    created TEXT NOT NULL  -- UTC, ISO 8601
)""", "CREATE UNIQUE INDEX IF NOT EXISTS samples_label_mnist ON samples (label, mnist)")  # the same digit once


class StoreError(UserError, RuntimeError):
    """A samples store that cannot be used (missing, damaged, not ours), phrased for a person."""


@dataclass
class Sample:
    id: int
    label: int
    mnist: "torch.Tensor" = field(repr=False)  # (28, 28) uint8
    predicted: int | None
    probability: float | None
    source: str
    name: str | None
    created: str
    original: bytes | None = field(default=None, repr=False)  # only when asked for (rows(originals=True))


def default_path() -> Path:
    from .data import default_data_dir

    return default_data_dir() / DB_NAME


def encode_original(img: Image.Image) -> bytes:
    """An upload as a PNG of at most MAX_ORIGINAL_BYTES (no EXIF: a phone's location stays out)."""
    if img.mode not in ("1", "L", "LA", "RGB", "RGBA"):
        img = img.convert("RGBA" if "A" in img.getbands() or "transparency" in img.info else "RGB")
    side = min(max(img.size), ORIGINAL_SIDE)
    while True:
        small = img.copy()
        small.thumbnail((side, side))
        buf = io.BytesIO()
        small.save(buf, format="PNG")
        if buf.tell() <= MAX_ORIGINAL_BYTES or side <= SIDE:
            return buf.getvalue()
        side //= 2


def _array(x) -> np.ndarray:
    """A CPU tensor or an array as a numpy array (no copy for a CPU tensor)."""
    return np.asarray(x.cpu() if hasattr(x, "cpu") else x)


def mnist_png(x) -> bytes:
    """A (28, 28) uint8 image (tensor or array) as a PNG (white ink on black, as the network saw it)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(_array(x), dtype=np.uint8), "L").save(buf, format="PNG")
    return buf.getvalue()


def digest(x, y) -> str:
    """SHA-256 of a set of labelled 28x28 digits, whatever their order: what a model was tuned on."""
    x, y = _array(x).astype(np.uint8), _array(y)
    rows = sorted(bytes([int(label)]) + img.tobytes() for img, label in zip(x, y))
    h = hashlib.sha256()
    for row in rows:
        h.update(row)
    return h.hexdigest()


class Store:
    """A samples.db, opened (and created if `create` and absent). Safe to share between threads.

    Use as a context manager, or call close(). Every method is one transaction.
    """

    def __init__(self, path: str | Path | None = None, create: bool = True):
        self.path = Path(path) if path is not None else default_path()
        self._lock = threading.Lock()
        exists = self.path.exists() and self.path.stat().st_size > 0  # an empty file is an empty database
        if not exists and not create:
            raise StoreError(f"{self.path}: no samples store here; collect samples with `mnist-cnn serve "
                             "--collect`, or import a folder with `mnist-cnn samples import DIR`")
        if exists:
            _check_header(self.path)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                      check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open the samples store: {exc}") from None
        try:
            self._prepare(exists)
        except BaseException:
            self.db.close()
            raise

    def _prepare(self, existed: bool) -> None:
        with self._guard():
            self.db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if existed:
                self._check()
            # WAL: readers never block the writer; FULL: a committed sample survives a power cut too.
            if self._to_wal().lower() != "wal":
                raise StoreError(f"{self.path}: SQLite cannot use WAL mode here (a network file system?)")
            self.db.execute("PRAGMA synchronous = FULL")
            self.db.execute("BEGIN IMMEDIATE")  # two processes creating the store at once: one after the other
            try:  # statement by statement: executescript would commit the transaction first
                for statement in SCHEMA:
                    self.db.execute(statement)
                self.db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    def _to_wal(self) -> str:
        """Switch to WAL and return the journal mode. The switch takes the file for a moment, and SQLite
        answers "locked" at once rather than wait for it: two processes creating the store together
        (the second's switch while the first's ran) retry for as long as a writer waits."""
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                return self.db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _check(self) -> None:
        """An existing file: ours, of a schema we read, and sound (PRAGMA quick_check)."""
        app_id, version = (self.db.execute(f"PRAGMA {p}").fetchone()[0] for p in ("application_id", "user_version"))
        fresh = app_id == 0 and not self.db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if app_id != APPLICATION_ID and not fresh:  # (fresh: a creator stopped before its first commit)
            raise StoreError(f"{self.path}: an SQLite database, but not a mnist-cnn samples store; "
                             "it was left as it is (name another file with --db)")
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path}: a samples store of schema {version}, newer than this mnist-cnn "
                             f"reads ({SCHEMA_VERSION}); upgrade mnist-cnn")
        problems = [row[0] for row in self.db.execute("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            raise damaged(self.path, "; ".join(problems))

    def _guard(self):
        return _Guard(self)

    # ---------------------------------------------------------------- writing

    def add(self, mnist, label: int, original: bytes, *, predicted: int | None = None,
            probability: float | None = None, source: str = "cli", name: str | None = None) -> tuple[int, bool]:
        """Store one sample (its 28x28 a uint8 tensor or array); (its id, False), or (the id it already has, True)
        for a digit stored with that label already."""
        return self.add_many([dict(mnist=mnist, label=label, original=original, predicted=predicted,
                                   probability=probability, source=source, name=name)])[0]

    def add_many(self, rows: Iterable[dict]) -> list[tuple[int, bool]]:
        """Store samples (add's keyword arguments, as dicts) in one transaction: all of them, or none."""
        rows = [_row(**r) for r in rows]
        out = []
        with self._guard():
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for row in rows:
                    cur = self.db.execute(
                        "INSERT OR IGNORE INTO samples (label, mnist, original, predicted, probability, source, "
                        "name, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
                    if cur.rowcount:
                        out.append((cur.lastrowid, False))
                    else:  # the unique index: this digit is in the store with this label already
                        out.append((self.db.execute("SELECT id FROM samples WHERE label = ? AND mnist = ?",
                                                    row[:2]).fetchone()[0], True))
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        return out

    def delete(self, ids: Iterable[int]) -> list[int]:
        """Remove samples by id in one transaction; the ids that were there."""
        ids = [int(i) for i in ids]
        with self._guard():
            self.db.execute("BEGIN IMMEDIATE")
            try:
                found = [i for i in ids if self.db.execute("DELETE FROM samples WHERE id = ?", (i,)).rowcount]
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        return found

    # ---------------------------------------------------------------- reading

    def count(self) -> int:
        with self._guard():
            return self.db.execute("SELECT count(*) FROM samples").fetchone()[0]

    def rows(self, originals: bool = False, ids: Iterable[int] | None = None) -> Iterator[Sample]:
        """Every sample (or those with these ids) in id order; read in one snapshot."""
        import torch

        columns = "id, label, mnist, predicted, probability, source, name, created"
        columns += ", original" if originals else ""
        query, args = f"SELECT {columns} FROM samples ORDER BY id", ()
        if ids is not None:
            args = tuple(int(i) for i in ids)
            query = f"SELECT {columns} FROM samples WHERE id IN ({','.join('?' * len(args))}) ORDER BY id"
        with self._guard():
            found = self.db.execute(query, args).fetchall()
        for r in found:
            mnist = torch.frombuffer(bytearray(r[2]), dtype=torch.uint8).reshape(SIDE, SIDE)
            yield Sample(r[0], r[1], mnist, r[3], r[4], r[5], r[6], r[7], r[8] if originals else None)

    def tensors(self) -> tuple["torch.Tensor", "torch.Tensor"]:
        """(uint8 images (N, 28, 28), int64 labels) of every sample."""
        import torch

        found = list(self.rows())
        x = torch.stack([s.mnist for s in found]) if found else torch.empty(0, SIDE, SIDE, dtype=torch.uint8)
        return x, torch.tensor([s.label for s in found], dtype=torch.int64)

    def stats(self) -> dict:
        """Counts: in all, per label, per source; how many the model had wrong; first and last dates."""
        with self._guard():
            q = self.db.execute
            total, first, last = q("SELECT count(*), min(created), max(created) FROM samples").fetchone()
            per_label = dict(q("SELECT label, count(*) FROM samples GROUP BY label").fetchall())
            per_source = dict(q("SELECT source, count(*) FROM samples GROUP BY source").fetchall())
            wrong = q("SELECT count(*) FROM samples WHERE predicted IS NOT NULL AND predicted != label").fetchone()[0]
        return {"path": str(self.path), "count": total, "per_label": {d: per_label.get(d, 0) for d in range(10)},
                "per_source": per_source, "model_wrong": wrong, "first": first, "last": last}

    def close(self) -> None:
        with self._lock:
            self.db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Guard:
    """The store's lock, with SQLite's errors turned into StoreErrors a person can act on."""

    def __init__(self, store: Store):
        self.store = store

    def __enter__(self):
        self.store._lock.acquire()

    def __exit__(self, kind, exc, tb):
        self.store._lock.release()
        if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
            raise StoreError(f"{self.store.path}: another writer held the store for over "
                             f"{BUSY_TIMEOUT_MS / 1000:g} s; try again") from None
        if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.IntegrityError):
            raise damaged(self.store.path, str(exc)) from None
        return False


def damaged(path: Path, why: str) -> StoreError:
    return StoreError(f"{path}: the samples store is damaged ({why}); it was left as it is. Move it aside to start "
                      f"a new one; `sqlite3 {path} .recover` may rescue its rows")


def _check_header(path: Path) -> None:
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise StoreError(f"{path}: cannot read the samples store: {exc.strerror or exc}") from None
    if head != b"SQLite format 3\x00":
        raise damaged(path, "it is not an SQLite database")


def _row(mnist, label, original, predicted=None, probability=None, source="cli", name=None) -> tuple:
    """One sample's column values, checked (the table's CHECKs are the last line, not the message)."""
    mnist = _array(mnist)
    if mnist.dtype != np.uint8 or mnist.shape != (SIDE, SIDE):
        raise UserError(f"a sample's image is uint8 (28, 28), not {mnist.dtype} {tuple(mnist.shape)}")
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label <= 9:
        raise UserError(f"a label is a digit from 0 to 9, not {label!r}")
    if not isinstance(original, (bytes, bytearray)) or len(original) > MAX_ORIGINAL_BYTES:
        raise UserError(f"a sample's original is PNG bytes of at most {MAX_ORIGINAL_BYTES:,} (encode_original)")
    if source not in SOURCES:
        raise UserError(f"a sample's source is one of {', '.join(SOURCES)}, not {source!r}")
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return (label, np.ascontiguousarray(mnist).tobytes(), bytes(original),
            None if predicted is None else int(predicted),
            None if probability is None else float(probability), source, name, created)

