"""The resident scorer: one process per user that keeps models loaded, so that a loop
calling `anomaly_detector.py --resident IMAGE` once per image (or with
ANOMALY_DETECTOR_RESIDENT=1 in the environment) pays for Python's start alone.

A call sends its arguments and working folder over a Unix socket and prints the bytes the
scorer sends back: what a plain call would have printed on stdout and stderr, and its exit
code (the scorer runs `cli.score.main` on them). Where there is no working scorer (none can
start, no Unix sockets, names read from stdin), the call scores in its own process, with the
same output. The socket is private: mode 0600 in a 0700 folder of the user's runtime
folder, and a peer of another uid (SO_PEERCRED) is refused. A model file that changes
(another inode, size or time) is loaded again before it scores. The scorer exits after
IDLE_SECONDS without a call, and a socket left by one that died is replaced.

Standard library only until the scorer itself starts: a call must not load NumPy.
"""

from __future__ import annotations

import _socket  # socket's C core: the socket module's own imports would double a call's
import os
import stat
import struct
import sys
import time
import zlib

TYPE_CHECKING = False  # typing's, without importing typing: a call's imports are its cost
if TYPE_CHECKING:
    import socket
    import subprocess
    from collections.abc import Callable

    from ind_knn_ad.cli.resident_models import Resident

    # What the scorer runs for a request: (argv, cwd, prog, models) to (code, stdout, stderr).
    Answer = Callable[[list[str], str, str, Resident | None], tuple[int, bytes, bytes]]

# exit_codes.WRITE_ERROR, not imported: its logging import alone would double a call's
# time (tests/test_resident.py checks that they agree).
WRITE_ERROR = 6
IDLE_SECONDS = float(os.environ.get("ANOMALY_DETECTOR_IDLE_SECONDS", 600))
_REPLY = struct.Struct("!iQQ")  # exit code, stdout bytes, stderr bytes
# A request is its fields joined by NULs (which no argument, folder or name can hold), ended
# by the client closing its side; the scorer reads at most this much of one, far more than
# the kernel lets any command line be.
_REQUEST_BYTES = 1 << 24
_START_SECONDS = 10.0  # how long a call waits for a scorer it started to listen


def folder() -> str:
    """$XDG_RUNTIME_DIR/ind_knn_ad, else a folder of this uid in $TMPDIR or /tmp (the
    scorer runs on Linux alone; `tempfile` would cost a call more than the rest of its
    imports)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "ind_knn_ad")
    return os.path.join(os.environ.get("TMPDIR") or "/tmp", f"ind_knn_ad-{os.getuid()}")


def scorer_files() -> tuple[str, str]:
    """The scorer's socket and lock file (holding its pid), in the private folder.

    Named after the Python and the code that run it (this package's folder and its newest
    source file), so that a call from another venv or checkout, or after an upgrade, never
    gets an answer from other code: it starts a scorer of its own. OSError if the folder
    is someone else's or open to others.
    """
    path = folder()
    os.makedirs(path, mode=0o700, exist_ok=True)
    info = os.lstat(path)
    if info.st_uid != os.getuid() or info.st_mode & 0o077 or not stat.S_ISDIR(info.st_mode):
        raise PermissionError(f"{path} is not a private folder of this user")
    package = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    newest = max(
        os.stat(os.path.join(root, name)).st_mtime_ns
        for root, _, names in os.walk(package)
        for name in names
        if name.endswith(".py")
    )
    code = "\0".join((sys.executable, package, str(newest)))
    key = f"{zlib.crc32(code.encode()):08x}"
    return os.path.join(path, f"scorer-{key}.sock"), os.path.join(path, f"scorer-{key}.lock")


def usable(argv: list[str]) -> bool:
    """Whether a call can go to the resident scorer: Unix sockets with peer credentials
    (Linux), and no names from stdin (its stdin is not the scorer's)."""
    unix = hasattr(_socket, "AF_UNIX") and hasattr(_socket, "SO_PEERCRED")
    return unix and "-" not in argv


def call(argv: list[str]) -> int | None:
    """Score through the resident scorer, started if needed: its exit code once its output
    is printed, or None (nothing printed) where no scorer answers."""
    try:
        reply = _ask(argv)
    except (OSError, ValueError):
        return None
    if reply is None:
        return None
    code, out, err = reply
    sys.stderr.buffer.write(err)
    sys.stderr.flush()
    try:
        sys.stdout.buffer.write(out)
        sys.stdout.flush()
    except OSError as error:  # as a plain call says it (cli/score.py _stdout_failed)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print(f"ERROR: cannot write results to stdout: {error.strerror}", file=sys.stderr)
        return WRITE_ERROR
    return code


def _ask(argv: list[str]) -> tuple[int, bytes, bytes] | None:
    path, _ = scorer_files()
    try:
        connection = _connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        connection = _wait_for(path, _start())
    try:
        connection.sendall(request(argv, os.getcwd(), os.path.basename(sys.argv[0])))
        connection.shutdown(_socket.SHUT_WR)
        return _read_reply(connection)
    finally:
        connection.close()


def request(argv: list[str], cwd: str, prog: str) -> bytes:
    """A call's request: the working folder, the program's name, then its arguments."""
    return b"\0".join(os.fsencode(field) for field in (cwd, prog, *argv))


def _read_request(connection: socket.socket) -> tuple[list[str], str, str]:
    """(argv, cwd, prog) of a request; ValueError if it is too long or lacks a field."""
    chunks, size = [], 0
    while chunk := connection.recv(1 << 16):
        size += len(chunk)
        if size > _REQUEST_BYTES:
            raise ValueError("request too long")
        chunks.append(chunk)
    cwd, prog, *argv = (os.fsdecode(field) for field in b"".join(chunks).split(b"\0"))
    return argv, cwd, prog


def _connect(path: str) -> _socket.socket:
    connection = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        connection.connect(path)
    except OSError:
        connection.close()
        raise
    return connection


def _start() -> subprocess.Popen:
    """Start a scorer, detached from this call (its own session, no terminal)."""
    import subprocess  # here: most calls find a scorer running

    command = [sys.executable, "-m", "ind_knn_ad.cli.resident"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
    )


def _wait_for(path: str, scorer: subprocess.Popen) -> _socket.socket:
    """A connection to the scorer once it listens; OSError if it does not in time, or if
    the one started exited (it found another running: that one answers) and none does."""
    deadline = time.monotonic() + _START_SECONDS
    while True:
        exited = scorer.poll() is not None
        try:
            return _connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            if exited or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _read_reply(connection: _socket.socket) -> tuple[int, bytes, bytes] | None:
    """The scorer's answer, or None where it closed without one (refused, or it died)."""
    chunks = []
    while chunk := connection.recv(1 << 20):
        chunks.append(chunk)
    data = b"".join(chunks)
    if len(data) < _REPLY.size:
        return None
    code, out, err = _REPLY.unpack_from(data)
    body = data[_REPLY.size :]
    if len(body) != out + err:
        return None
    return code, body[:out], body[out:]


def peer_uid(connection: socket.socket) -> int:
    """The uid of the process at the other end of a Unix socket (Linux SO_PEERCRED)."""
    credentials = connection.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
    return struct.unpack("3i", credentials)[1]


def main() -> None:
    """The scorer: hold the lock (one scorer per user), listen, answer, exit when idle."""
    import contextlib
    import fcntl  # Unix only, as the scorer is; never on a plain call's import path
    import socket

    from ind_knn_ad.cli.resident_models import Resident, answer

    path, lock_path = scorer_files()
    with open(lock_path, "a+") as lock:  # "w" would empty another's
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return  # another scorer runs
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")  # which process it is, for people and tests
        lock.flush()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a socket left by a scorer that died
        old_mask = os.umask(0o177)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(path)
        os.umask(old_mask)
        server.listen(16)
        server.settimeout(IDLE_SECONDS)
        models = Resident()
        try:
            while True:
                try:
                    connection, _ = server.accept()
                except TimeoutError:
                    return
                with connection:
                    _serve(connection, models, answer)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def _serve(connection: socket.socket, models: Resident | None, answer: Answer) -> None:
    """One request; a peer of another uid, or one that goes away, costs only itself."""
    if peer_uid(connection) != os.getuid():
        return
    connection.settimeout(10)  # a request is a command line
    try:
        argv, cwd, prog = _read_request(connection)
        code, out, err = answer(argv, cwd, prog, models)
        connection.settimeout(None)
        connection.sendall(_REPLY.pack(code, len(out), len(err)) + out + err)
    except (OSError, ValueError):
        return


if __name__ == "__main__":
    main()
