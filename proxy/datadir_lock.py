"""One serving process per embedded data dir.

The embedded default keeps SQLite files and an embedded Chroma under the data dir, and caches per-user state
(staged items, duplicate caches, job ownership) in process memory. Two processes writing the same files
disagree about what a user has and break forget (a forget in one worker left the other serving the user's
text), so a second server over the same data dir refuses to start instead. Several processes need the
shared-state backend (`database_url`).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_NAME = "rapport.lock"


class DataDirInUse(RuntimeError):
    pass


class DataDirLock:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            # flock, not fcntl record locks: it is held per open file, so a second server in the same
            # process (a test, an embedding app) is refused too, and the kernel drops it when the holder dies.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise DataDirInUse(
                f"another Rapport server (pid {holder}) is serving the data dir {self.path.parent}. The embedded "
                "store allows one serving process: run one worker (server.workers: 1), or set database_url "
                "(RAPPORT_DATABASE_URL) to a PostgreSQL database to run several."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode("ascii"), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
