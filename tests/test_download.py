"""download.py against a real local HTTP server: success, mirrors and every failure path."""

from __future__ import annotations

import hashlib
import io
import socket
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from ind_knn_ad.io import download
from ind_knn_ad.io.download import (
    BASE_URL_ENV,
    MVTEC_CATEGORIES,
    Archive,
    DownloadError,
    archive_url,
    download_category,
)

CATEGORY = "metal_nut"


@dataclass
class Route:
    """What the server answers for one path."""

    body: bytes
    declared_length: int | None = None  # lie about Content-Length to fake a dropped link
    hang: bool = False  # never answer, to exercise the client timeout


@dataclass
class Server:
    url: str
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    def serve(self, name: str, route: Route) -> str:
        """Publish ``route`` as ``/<name>/metal_nut.tar.xz``; return the mirror base URL."""
        self.routes[f"/{name}/{CATEGORY}.tar.xz"] = route
        return f"{self.url}/{name}"


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer

    def do_GET(self) -> None:
        state = self.server.state
        state.requests.append(self.path)
        route = state.routes.get(self.path)
        if route is None:
            self.send_error(404, "Not Found")
            return
        if route.hang:
            state.release.wait(5)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/x-xz")
        self.send_header("Content-Length", str(route.declared_length or len(route.body)))
        self.end_headers()
        self.wfile.write(route.body)
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        """Keep pytest output clean."""


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    state: Server

    def handle_error(self, request: object, client_address: object) -> None:
        """Clients that gave up (timeouts) cause broken pipes; they are expected here."""


@pytest.fixture
def server() -> Iterator[Server]:
    httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
    httpd.state = Server(url=f"http://127.0.0.1:{httpd.server_address[1]}")
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield httpd.state
    finally:
        httpd.state.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture(autouse=True)
def _no_env_mirror(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BASE_URL_ENV, raising=False)


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (90, 90, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _folder(name: str) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    return info, b""


def _good_members() -> list[tuple[tarfile.TarInfo, bytes]]:
    png = _png()
    return [
        _folder(CATEGORY),
        _folder(f"{CATEGORY}/train"),
        _folder(f"{CATEGORY}/train/good"),
        _file(f"{CATEGORY}/train/good/000.png", png),
        _file(f"{CATEGORY}/train/good/001.png", png),
        _file(f"{CATEGORY}/test/good/000.png", png),
        _file(f"{CATEGORY}/test/bent/000.png", png),
        _file(f"{CATEGORY}/ground_truth/bent/000_mask.png", png),
        _file(f"{CATEGORY}/license.txt", b"CC BY-NC-SA 4.0\n"),
    ]


def _tar_xz(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return buffer.getvalue()


def _special(name: str, kind: bytes, target: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, b""


def _closed_port() -> int:
    """A port nobody listens on: bind, read the number, close."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def good_archive() -> bytes:
    return _tar_xz(_good_members())


def _assert_layout(dataset: Path, root: Path) -> None:
    assert dataset == root / CATEGORY
    assert sorted(p.name for p in (dataset / "train" / "good").iterdir()) == ["000.png", "001.png"]
    assert (dataset / "test" / "bent" / "000.png").is_file()
    assert (dataset / "ground_truth" / "bent" / "000_mask.png").is_file()
    assert [p.name for p in root.iterdir()] == [CATEGORY]  # no scratch left behind


def test_table_covers_all_categories() -> None:
    assert len(MVTEC_CATEGORIES) == 15
    for category, entry in MVTEC_CATEGORIES.items():
        assert entry.url.startswith("https://www.mydrive.ch/shares/")
        assert entry.url.endswith(f"/{category}.tar.xz")


def test_archive_url_prefers_argument_then_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert archive_url("wood") == MVTEC_CATEGORIES["wood"].url
    monkeypatch.setenv(BASE_URL_ENV, "https://env.example/mvtec/")
    assert archive_url("wood") == "https://env.example/mvtec/wood.tar.xz"
    assert archive_url("wood", "https://arg.example") == "https://arg.example/wood.tar.xz"


def test_unknown_category_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="unknown MVTec AD category 'bolt'"):
        download_category("bolt", tmp_path / "data", show_progress=False)
    assert not (tmp_path / "data").exists()


def test_downloads_from_base_url_argument(
    server: Server, good_archive: bytes, tmp_path: Path
) -> None:
    base = server.serve("mirror", Route(good_archive))
    root = tmp_path / "data" / "mvtec"  # missing parents are created
    dataset = download_category(CATEGORY, root, base_url=base + "/", show_progress=False)
    _assert_layout(dataset, root)
    assert server.requests == [f"/mirror/{CATEGORY}.tar.xz"]


def test_downloads_from_env_mirror_with_progress_bar(
    server: Server,
    good_archive: bytes,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(BASE_URL_ENV, server.serve("env", Route(good_archive)))
    dataset = download_category(CATEGORY, tmp_path, show_progress=True)
    _assert_layout(dataset, tmp_path)
    shown = capsys.readouterr()
    assert shown.out == ""  # the bar goes to stderr only
    # No sum is pinned for the category, so the user is shown the fetched archive's.
    digest = hashlib.sha256(good_archive).hexdigest()
    assert f"{CATEGORY}.tar.xz SHA-256 {digest} (no published sum" in shown.err


def test_verified_checksum_is_accepted(
    server: Server, good_archive: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest = hashlib.sha256(good_archive).hexdigest()
    monkeypatch.setitem(MVTEC_CATEGORIES, CATEGORY, Archive("unused", digest))
    base = server.serve("sum", Route(good_archive))
    _assert_layout(download_category(CATEGORY, tmp_path, base, show_progress=False), tmp_path)


def test_existing_dataset_is_returned_without_network(server: Server, tmp_path: Path) -> None:
    good = tmp_path / CATEGORY / "train" / "good"
    good.mkdir(parents=True)
    assert download_category(CATEGORY, tmp_path, server.url, show_progress=False) == good.parents[1]
    assert server.requests == []


def test_incomplete_existing_folder_is_not_overwritten(server: Server, tmp_path: Path) -> None:
    (tmp_path / CATEGORY).mkdir()
    with pytest.raises(DownloadError, match="has no train/good folder"):
        download_category(CATEGORY, tmp_path, server.url, show_progress=False)
    assert server.requests == []
    assert [p.name for p in tmp_path.iterdir()] == [CATEGORY]


def _truncated(archive: bytes) -> Route:
    return Route(archive[: len(archive) // 2])


def _dropped(archive: bytes) -> Route:
    return Route(archive[: len(archive) // 2], declared_length=len(archive))


def _with(extra: tuple[tarfile.TarInfo, bytes]) -> Callable[[bytes], Route]:
    """An otherwise good archive plus one ``extra`` member."""
    return lambda _: Route(_tar_xz([*_good_members(), extra]))


_EVIL_PNG = f"{CATEGORY}/train/good/002.png"


def _no_train(_: bytes) -> Route:
    return Route(_tar_xz([_file(f"{CATEGORY}/test/good/000.png", _png())]))


def _wrong_top(_: bytes) -> Route:
    return Route(_tar_xz([_file("bottle/train/good/000.png", _png())]))


@pytest.mark.parametrize(
    ("make_route", "message"),
    [
        (_truncated, "archive is damaged or truncated"),
        (_dropped, "transfer truncated: received"),
        (_with(_file("../evil", b"x")), "refusing archive member '../evil': it points outside"),
        (_with(_file("/tmp/evil", b"x")), "refusing archive member '/tmp/evil'"),
        (_with(_file(f"{CATEGORY}/../../evil", b"x")), "points outside the archive"),
        (_with(_special(_EVIL_PNG, tarfile.SYMTYPE, "/etc/passwd")), "it is a symlink"),
        (_with(_special(_EVIL_PNG, tarfile.LNKTYPE, "/etc/passwd")), "it is a hardlink"),
        (_with(_special(_EVIL_PNG, tarfile.FIFOTYPE)), "it is a fifo"),
        (_with(_special(_EVIL_PNG, tarfile.CHRTYPE)), "it is a device"),
        (_no_train, f"archive has no images in {CATEGORY}/train/good"),
        (_wrong_top, f"archive has no top-level {CATEGORY}/ folder"),
    ],
    ids=[
        "truncated",
        "dropped-link",
        "dot-dot",
        "absolute",
        "nested-dot-dot",
        "symlink",
        "hardlink",
        "fifo",
        "device",
        "no-train-good",
        "wrong-top",
    ],
)
def test_bad_archives_leave_nothing_behind(
    server: Server,
    good_archive: bytes,
    tmp_path: Path,
    make_route: Callable[[bytes], Route],
    message: str,
) -> None:
    base = server.serve("bad", make_route(good_archive))
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(DownloadError) as caught:
        download_category(CATEGORY, tmp_path, base, show_progress=False)
    text = str(caught.value)
    assert message in text
    assert text.startswith(f"could not download {CATEGORY} from {base}/{CATEGORY}.tar.xz: ")
    assert text.endswith(f"so that {tmp_path / CATEGORY / 'train' / 'good'} exists.")
    assert "\n" not in text
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
    assert not (tmp_path.parent / "evil").exists()


def test_wrong_checksum(
    server: Server, good_archive: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(MVTEC_CATEGORIES, CATEGORY, Archive("unused", "0" * 64))
    base = server.serve("sum", Route(good_archive))
    root = tmp_path / "data"
    with pytest.raises(DownloadError, match="SHA-256 mismatch"):
        download_category(CATEGORY, root, base, show_progress=False)
    assert not root.exists()  # we created it, so we removed it


def test_http_404(server: Server, tmp_path: Path) -> None:
    root = tmp_path / "data"
    with pytest.raises(DownloadError, match=r"HTTP Error 404: Not Found\. Download it by hand"):
        download_category(CATEGORY, root, server.url, show_progress=False)
    assert not root.exists()


def test_unreachable_host(tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(DownloadError, match=f"could not download {CATEGORY} from {base}"):
        download_category(CATEGORY, tmp_path, base, timeout=2, show_progress=False)
    assert list(tmp_path.iterdir()) == []


def test_timeout(server: Server, tmp_path: Path) -> None:
    base = server.serve("slow", Route(b"", hang=True))
    with pytest.raises(DownloadError, match="timed out"):
        download_category(CATEGORY, tmp_path, base, timeout=0.2, show_progress=False)
    assert list(tmp_path.iterdir()) == []


def test_malformed_mirror_url(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="unknown url type"):
        download_category(CATEGORY, tmp_path, "not-a-url", show_progress=False)
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_cleans_up_and_propagates(
    server: Server, good_archive: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(archive: Path, dest: Path, category: str) -> None:
        assert archive.stat().st_size == len(good_archive)  # the download itself finished
        raise KeyboardInterrupt

    monkeypatch.setattr(download, "_extract", interrupted)
    base = server.serve("ok", Route(good_archive))
    root = tmp_path / "data"
    with pytest.raises(KeyboardInterrupt):
        download_category(CATEGORY, root, base, show_progress=False)
    assert not root.exists()
