"""File-system steps of a crash-safe save: one writer per index folder, an atomic swap, durable renames.

    with WriterLock(out_dir):          # DIR/../.NAME.lock, fcntl: the kernel releases it when the writer dies
        ...write a temporary sibling...
        exchange(tmp, out_dir)         # renameat2(RENAME_EXCHANGE): at every instant out_dir is a whole index

Linux only for the swap; where the file system cannot exchange (EINVAL), store.py falls back to two renames.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
from pathlib import Path

from model.errors import PatchCoreError

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


class WriterBusyError(PatchCoreError):
    """Another process is writing the same index folder."""


class FolderNotWritableError(PatchCoreError):
    """The index folder's parent cannot be written (read-only, not ours)."""


def lock_path(out_dir: Path) -> Path:
    return out_dir.parent / f".{out_dir.name}.lock"


class WriterLock:
    """An exclusive lock for writing out_dir, held from before the build to after the save.

    Raises WriterBusyError (another writer holds it) or FolderNotWritableError (read-only, no permission) on
    entry, so a builder refuses before spending minutes on a build it could not save.
    """

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir).absolute()
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        return lock_path(self.out_dir)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> WriterLock:
        try:
            self.out_dir.parent.mkdir(parents=True, exist_ok=True)
            self.out_dir = self.out_dir.parent.resolve() / self.out_dir.name  # one lock per real folder
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise FolderNotWritableError(
                f"cannot write in {self.out_dir.parent} ({exc.strerror or exc}): the folder is read-only or not "
                "yours; fix its permissions or choose another --out"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise WriterBusyError(
                f"another patchcore-build-index (pid {holder}) is writing {self.out_dir}; wait for it to finish, "
                "or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc_info) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)  # the file stays: unlinking it would race a waiting writer
            os.close(self._fd)
            self._fd = None


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step; False where the system cannot (then nothing was done)."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:  # not glibc >= 2.28
        return False
    renameat2.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def fsync_dir(path: Path) -> None:
    """Make a rename in this folder durable (best effort: some file systems refuse to fsync a folder)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())
