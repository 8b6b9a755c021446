"""Fetch MVTec AD categories safely, so a first run needs no manual setup.

A download either yields a complete ``<root>/<category>/train/good`` tree or leaves ``root``
as it found it: everything is staged in a hidden scratch folder inside ``root`` (same file
system, so the final rename is atomic) and removed on any failure, Ctrl-C included. Archives
come from the network, so every member is vetted before anything touches the disk.

MVTec publishes no checksum per category, so none is pinned: a download is checked for its
HTTP status, its full declared length, an archive that decompresses, members that are plain
files and folders inside the category's folder, and images in ``train/good``. The SHA-256 of
what was fetched is shown, to compare with a copy one trusts; an ``Archive`` given a
``sha256`` (a mirror's table, the tests) is verified against it.
"""

from __future__ import annotations

import hashlib
import http.client
import lzma
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from ind_knn_ad import __version__
from ind_knn_ad.errors import DownloadError
from ind_knn_ad.io.images import is_image_file

BASE_URL_ENV = "IND_KNN_AD_MVTEC_URL"

_SHARE = "https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download"
# MVTec's own download page serves pill from a separate share.
_PILL_SHARE = "https://www.mydrive.ch/shares/43421/11a215a5749fcfb75e331ddd5f8e43ee/download"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Archive:
    """One downloadable archive; ``sha256`` is None where no trustworthy checksum is known
    (every MVTec category: MVTec publishes a sum for the whole 4.9 GB archive only)."""

    url: str
    sha256: str | None = None


MVTEC_CATEGORIES: dict[str, Archive] = {
    "bottle": Archive(f"{_SHARE}/420937370-1629951468/bottle.tar.xz"),
    "cable": Archive(f"{_SHARE}/420937413-1629951498/cable.tar.xz"),
    "capsule": Archive(f"{_SHARE}/420937454-1629951595/capsule.tar.xz"),
    "carpet": Archive(f"{_SHARE}/420937484-1629951672/carpet.tar.xz"),
    "grid": Archive(f"{_SHARE}/420937487-1629951814/grid.tar.xz"),
    "hazelnut": Archive(f"{_SHARE}/420937545-1629951845/hazelnut.tar.xz"),
    "leather": Archive(f"{_SHARE}/420937607-1629951964/leather.tar.xz"),
    "metal_nut": Archive(f"{_SHARE}/420937637-1629952063/metal_nut.tar.xz"),
    "pill": Archive(f"{_PILL_SHARE}/420938129-1629953099/pill.tar.xz"),
    "screw": Archive(f"{_SHARE}/420938130-1629953152/screw.tar.xz"),
    "tile": Archive(f"{_SHARE}/420938133-1629953189/tile.tar.xz"),
    "toothbrush": Archive(f"{_SHARE}/420938134-1629953256/toothbrush.tar.xz"),
    "transistor": Archive(f"{_SHARE}/420938166-1629953277/transistor.tar.xz"),
    "wood": Archive(f"{_SHARE}/420938383-1629953354/wood.tar.xz"),
    "zipper": Archive(f"{_SHARE}/420938385-1629953449/zipper.tar.xz"),
}


class _Rejected(Exception):
    """Our own reason to give up on an archive (bad checksum, member or layout)."""


# Everything that can go wrong while fetching or unpacking, turned into DownloadError.
_FAILURES = (
    OSError,  # URLError, HTTPError, timeouts, disk errors
    ValueError,  # malformed URL, e.g. a mistyped mirror
    http.client.HTTPException,
    tarfile.TarError,
    EOFError,
    lzma.LZMAError,
    zlib.error,
    _Rejected,
)
_DAMAGE = (tarfile.TarError, EOFError, lzma.LZMAError, zlib.error)


def archive_url(category: str, base_url: str | None = None) -> str:
    """URL of ``category``'s archive; a mirror (argument, else env var) keeps files flat."""
    if category not in MVTEC_CATEGORIES:
        known = ", ".join(MVTEC_CATEGORIES)
        raise DownloadError(f"unknown MVTec AD category {category!r}; choose one of: {known}.")
    base = base_url if base_url is not None else os.environ.get(BASE_URL_ENV)
    if base:
        return f"{base.rstrip('/')}/{category}.tar.xz"
    return MVTEC_CATEGORIES[category].url


def download_category(
    category: str,
    root: Path,
    base_url: str | None = None,
    timeout: float = 60.0,
    show_progress: bool = True,
) -> Path:
    """Make sure ``root/category/train/good`` exists, downloading it if needed.

    An existing folder is returned untouched (no network). The archive's checksum is
    verified when known, also from a mirror, since mirrors serve the same files; when none
    is known, its SHA-256 is shown on stderr (with the progress bar).
    """
    url = archive_url(category, base_url)
    root = Path(root)
    target = root / category
    good = target / "train" / "good"
    if target.exists():
        if good.is_dir():
            return target
        raise DownloadError(
            f"{target} exists but has no train/good folder; complete it by hand so that "
            f"{good} exists, or remove it to download again."
        )
    expected = MVTEC_CATEGORIES[category].sha256
    created_root = not root.exists()
    scratch: Path | None = None
    done = False
    try:
        root.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{category}.partial-", dir=root))
        archive = scratch / "archive"
        with archive.open("wb") as out:
            actual = _fetch(url, out, timeout, show_progress, category)
        if expected is not None and actual != expected:
            raise _Rejected(f"SHA-256 mismatch (expected {expected}, got {actual})")
        if expected is None and show_progress:
            Console(stderr=True).print(
                f"{category}.tar.xz SHA-256 {actual} (no published sum to check it against)",
                highlight=False,
                soft_wrap=True,
            )
        unpacked = scratch / "unpacked"
        unpacked.mkdir()
        _extract(archive, unpacked, category)
        os.replace(unpacked / category, target)
        done = True
    except _FAILURES as exc:
        raise DownloadError(
            f"could not download {category} from {url}: {_reason(exc)}. "
            f"Download it by hand and extract it so that {good} exists."
        ) from exc
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        if created_root and not done:
            with suppress(OSError):
                root.rmdir()
    return target


def _fetch(url: str, out: BinaryIO, timeout: float, show_progress: bool, label: str) -> str:
    """Stream ``url`` into ``out`` and return its SHA-256, hashing as bytes arrive."""
    request = urllib.request.Request(url, headers={"User-Agent": f"ind_knn_ad/{__version__}"})
    digest = hashlib.sha256()
    received = 0
    with urllib.request.urlopen(request, timeout=timeout) as response:
        if response.status not in (None, 200):  # None: file:// mirrors
            raise _Rejected(f"unexpected HTTP status {response.status}")
        total = _content_length(response.headers.get("Content-Length"))
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            disable=not show_progress,
        )
        with progress:
            task = progress.add_task(label, total=total)
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                progress.advance(task, len(chunk))
    if total is not None and received != total:
        raise _Rejected(f"transfer truncated: received {received} of {total} bytes")
    return digest.hexdigest()


def _content_length(value: str | None) -> int | None:
    """Declared body size, or None when the server did not say (or said nonsense)."""
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _extract(archive: Path, dest: Path, category: str) -> None:
    """Unpack into ``dest`` after vetting every member, then check the MVTec layout."""
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        base = os.path.realpath(dest)
        for member in members:
            _vet(member, base)
        # The "data" filter is defence in depth; it exists from Python 3.10.12/3.11.4 on.
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, members=members, filter="data")
        else:
            tar.extractall(dest, members=members)
    folder = dest / category
    if not folder.is_dir():
        raise _Rejected(f"archive has no top-level {category}/ folder")
    good = folder / "train" / "good"
    if not good.is_dir() or not any(p.is_file() and is_image_file(p) for p in good.iterdir()):
        raise _Rejected(f"archive has no images in {category}/train/good")


def _vet(member: tarfile.TarInfo, base: str) -> None:
    """Refuse anything but plain files and folders that stay inside folder ``base``."""
    name = member.name
    if not (member.isfile() or member.isdir()):
        raise _Rejected(f"refusing archive member {name!r}: it is a {_kind(member)}")
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise _Rejected(f"refusing archive member {name!r}: it points outside the archive")
    if os.path.commonpath([base, os.path.realpath(os.path.join(base, name))]) != base:
        raise _Rejected(f"refusing archive member {name!r}: it resolves outside the archive")


def _kind(member: tarfile.TarInfo) -> str:
    """Human name of a non-regular tar member type."""
    if member.issym():
        return "symlink"
    if member.islnk():
        return "hardlink"
    if member.isdev():
        return "fifo" if member.isfifo() else "device"
    return "special file"


def _reason(exc: BaseException) -> str:
    """One short line describing ``exc`` for the DownloadError message."""
    if isinstance(exc, urllib.error.HTTPError):
        text = f"HTTP Error {exc.code}: {exc.reason}"
    elif isinstance(exc, urllib.error.URLError):
        text = str(exc.reason)
    else:
        text = str(exc) or type(exc).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    text = lines[0].rstrip(":.") if lines else type(exc).__name__
    if isinstance(exc, _DAMAGE):
        return f"archive is damaged or truncated ({text})"
    return text
