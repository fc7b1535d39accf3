"""Files: the one place a file is written (atomically), and bounded reads of files we do not choose.

`atomic_write` writes then renames, so a crash or a concurrent reader never sees half a file;
the temporary file is created with mode 0666 and the kernel applies the process's umask, as for
any other new file, so the umask is never read (reading it means setting it, process-wide).

A path given on a command line may name a regular file, a device (/dev/zero never ends) or a
FIFO (which may never get a writer); `read_bounded` reads any of them with a byte limit and a
deadline, so one such path costs at most `limit` bytes and `timeout_s` seconds.

    python -c "from mnist_cnn.files import read_bounded; print(len(read_bounded('/dev/zero', 10)))"
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import select
import stat
import time
from pathlib import Path

from .errors import UserError


class TooBig(UserError, ValueError):
    """More than `limit` bytes; `size` is the whole size where the file system knows it (regular files)."""

    def __init__(self, limit: int, size: int | None = None):
        self.limit, self.size = limit, size
        mib = f"{size / 2**20:.0f} MiB" if size is not None else f"over {limit / 2**20:.0f} MiB"
        super().__init__(f"the file is {mib}; the limit is {limit / 2**20:.0f} MiB")


def read_bounded(path: str | Path, limit: int, timeout_s: float = 10.0) -> bytes:
    """The bytes of `path`, or TooBig past `limit` bytes, or TimeoutError past `timeout_s` seconds.

    The file is opened non-blocking, so a FIFO without a writer cannot hang the open.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        regular = stat.S_ISREG(info.st_mode)
        if regular and info.st_size > limit:  # the common case of a big file: no need to read it
            raise TooBig(limit, info.st_size)
        chunks, size, deadline = [], 0, time.monotonic() + timeout_s
        while size <= limit:
            if not regular:  # devices and pipes: wait for data, but not past the deadline
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([fd], [], [], left)[0]:
                    raise TimeoutError(errno.ETIMEDOUT, f"no end of data after {timeout_s:g} s "
                                                        "(a pipe or device that never finishes?)")
            try:
                chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            except BlockingIOError:
                continue
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:  # a device such as /dev/zero, or a file that grew while we read it
            raise TooBig(limit)
        return b"".join(chunks)
    finally:
        os.close(fd)


# ------------------------------------------------------------------ writing


def atomic_write(path: str | Path, raw: bytes) -> None:
    """Write then rename, so a crash or a concurrent reader never sees half a file.

    The temporary file is `.NAME.<random>.tmp` beside `path` (`remove_partial_writes` knows the
    pattern); it is created 0666 & ~umask by the kernel, so the file gets normal permissions.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:  # another writer drew the same name: draw again
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_partial_writes(folder: Path) -> None:
    """Delete the temporary files of writes that a kill interrupted (`atomic_write` names them .NAME.*.tmp)."""
    folder = Path(folder)
    if folder.is_dir():
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)


def write_json(path: str | Path, obj) -> None:
    atomic_write(Path(path), (json.dumps(obj, indent=2) + "\n").encode())


def read_json(path: str | Path, default=None):
    """A JSON file's content, `default` when there is no such file, or a UserError when it is not JSON."""
    path = Path(path)
    if not path.exists():
        return default
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc}); was it edited or cut short?") from None
