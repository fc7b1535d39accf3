"""Reading files whose kind we do not choose: what `mnist-cnn predict` gets from a command line.

A path may name a regular file, a device (/dev/zero never ends) or a FIFO (which may never get
a writer); `read_bounded` reads any of them with a byte limit and a deadline, so one such path
costs at most `limit` bytes and `timeout_s` seconds.

    python -c "from mnist_cnn.files import read_bounded; print(len(read_bounded('/dev/zero', 10)))"
"""

from __future__ import annotations

import errno
import os
import select
import stat
import time
from pathlib import Path


class TooBig(ValueError):
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
