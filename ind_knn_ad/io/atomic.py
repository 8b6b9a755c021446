"""Atomic files: write beside the target, flush, rename over it, so readers never see a torn
file and an interrupt leaves the old one.

Generic file code, not model-file code: the model, its results, its contact sheet and every
heatmap are written through here.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import signal
import stat
import threading
from collections.abc import Iterator
from pathlib import Path


def check_writable(path: Path) -> None:
    """Raise OSError now if `path` could not be written later, so that a long fit does not
    end in a failed save. Creates the missing parent folders, as the save would."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory", str(path))
    _refuse_special(path)
    probe = _temporary_beside(path)
    with open(probe, "xb"):
        pass
    os.unlink(probe)


_SPECIAL_KINDS = {
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
}


def _refuse_special(path: Path) -> None:
    """Raise OSError if `path` (followed through links) exists and is not a regular file:
    a rename would replace the device node, FIFO or socket itself (`--model /dev/full` as
    root turned the device into a 3 MB file)."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, "is a directory", str(path))
    if not stat.S_ISREG(mode):
        kind = _SPECIAL_KINDS.get(stat.S_IFMT(mode), "not a regular file")
        raise OSError(
            errno.EEXIST, f"is {kind}, not a regular file: refusing to replace it", str(path)
        )


def _name_max(folder: Path) -> int:
    """The longest file name, in bytes, that `folder`'s file system takes."""
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _temporary_beside(path: Path) -> Path:
    """A fresh hidden name in the target's folder (created if missing), so that the final
    rename stays on one file system and is atomic. It is never longer than the target's
    own name allows: a name near the limit is cut short in the temporary name, whose
    random part keeps it unique."""
    if path.parent.exists() and not path.parent.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "parent is not a folder", str(path.parent))
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(8)
    room = _name_max(path.parent) - len(f"..{token}.tmp")
    name = os.fsencode(path.name)
    if len(name) > room:
        name = name[: max(room, 0)]
    return path.parent / os.fsdecode(b"." + name + b"." + token.encode() + b".tmp")


def atomic_write(path: Path, data: bytes) -> None:
    """Write via a temporary file beside the target, flushed to disk, then renamed over it.

    Readers see either the old file or the new one, never a torn one; a failed write (full
    disk) or an interrupt (Ctrl-C, SIGTERM) leaves the old file in place and no temporary
    file behind. The new file gets the usual permissions (0666 less the umask), so other
    users can read a model as they could any file this user writes.
    """
    write_together([(Path(path), data)])


def write_together(files: list[tuple[Path, bytes]]) -> None:
    """Write several files as one unit (a model, its results and its contact sheet).

    Each goes to a temporary file beside its target, flushed to disk; only when all are
    written are they renamed over their targets, one after another with SIGINT and SIGTERM
    held back, so that an interrupt leaves either every old file or every new one (the
    interrupt then arrives just after). A failure or interrupt before the renames removes
    the temporaries and leaves the old files.
    """
    pending: list[tuple[Path, Path]] = []
    try:
        for path, data in files:
            path = Path(path)
            _refuse_special(path)
            temporary = _temporary_beside(path)
            pending.append((temporary, path))
            with open(temporary, "xb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
        with _interrupts_held():
            for temporary, path in pending:
                os.replace(temporary, path)
    except BaseException:
        for temporary, _ in pending:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
        raise
    for folder in dict.fromkeys(path.parent for _, path in pending):
        _fsync_folder(folder)


@contextlib.contextmanager
def _interrupts_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block is done, then take effect as they would have.

    Their Python handlers are swapped for ones that only note the signal. A signal mask
    would not do: it holds back the calling thread alone, and the kernel may hand the
    process's signal to any thread (fits run thread pools), whose delivery Python then
    acts on in the main thread at once. Handlers can only be set from the main thread;
    elsewhere the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {number: signal.signal(number, lambda got, _: caught.append(got)) for number in held}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)
        for number in caught:
            signal.raise_signal(number)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable, so a power cut cannot bring the old file back."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
