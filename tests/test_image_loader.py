"""The image loader: every Pillow mode becomes RGB, and every bad file becomes an ImageError.

The property tests feed random bytes, damaged encodings of random images and PNG headers
with random dimensions to `load_image`: whatever comes in, the only exception that may come
out is ImageError, and nothing larger than the pixel limit is ever decoded.
"""

from __future__ import annotations

import io
import os
import struct
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from ind_knn_ad.errors import ImageError
from ind_knn_ad.io.images import MAX_PIXELS, load_image, shown_name

PROPERTY = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header(width: int, height: int, bit_depth: int = 8, colour: int = 0) -> bytes:
    """PNG signature and IHDR: what the loader reads before deciding to decode or not."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)


def zero_png(width: int, height: int, bit_depth: int = 8) -> bytes:
    """A complete, valid grayscale PNG of zeros: tiny on disk, huge once decoded."""
    row = bytes(1 + (width * bit_depth + 7) // 8)  # filter byte + packed pixels
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return png_header(width, height, bit_depth) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    stream = io.BytesIO()
    image.save(stream, fmt, **options)
    return stream.getvalue()


def pattern(width: int = 40, height: int = 30) -> Image.Image:
    """An RGB image with a distinct value at every pixel, and a red top-left block."""
    y, x = np.mgrid[0:height, 0:width]
    array = np.stack([x * 6 % 256, y * 8 % 256, (x + y) * 3 % 256], axis=-1).astype(np.uint8)
    array[:10, :10] = (255, 0, 0)
    return Image.fromarray(array)


def noise(width: int = 40, height: int = 30) -> Image.Image:
    """Incompressible pixels, so that cutting the file in half cuts the pixel data."""
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), np.uint8))


def half(data: bytes) -> bytes:
    return data[: len(data) // 2]


@pytest.fixture
def write(tmp_path: Path):
    """Write bytes to a fresh file in tmp_path and return its path."""

    def _write(data: bytes, name: str = "image.png") -> Path:
        path = tmp_path / name
        path.write_bytes(data)
        return path

    return _write


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    """One file the property tests overwrite per example (hypothesis reuses fixtures)."""
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder) / "example.bin"


# --- modes: everything Pillow decodes comes out as 8-bit RGB of the right size ---------


def rgb(path: Path) -> np.ndarray:
    image = load_image(path)
    assert image.mode == "RGB"
    return np.asarray(image)


def test_rgb_png_is_exact(write) -> None:
    np.testing.assert_array_equal(rgb(write(encoded(pattern(), "PNG"))), np.asarray(pattern()))


def test_grayscale_becomes_equal_channels(write) -> None:
    gray = pattern().convert("L")
    array = rgb(write(encoded(gray, "PNG")))
    for channel in range(3):
        np.testing.assert_array_equal(array[..., channel], np.asarray(gray))


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_is_scaled_not_clipped(write, fmt: str) -> None:
    eight = np.asarray(pattern().convert("L"))
    sixteen = Image.fromarray(eight.astype(np.uint16) * 257)  # 255 -> 65535
    assert sixteen.mode == "I;16"
    array = rgb(write(encoded(sixteen, fmt), f"deep.{fmt.lower()}"))
    np.testing.assert_array_equal(array[..., 0], eight)


def test_float_image_in_unit_range(write) -> None:
    eight = np.asarray(pattern().convert("L"))
    floats = Image.fromarray(eight.astype(np.float32) / 255.0)
    array = rgb(write(encoded(floats, "TIFF"), "float.tif"))
    assert np.abs(array[..., 0].astype(int) - eight).max() <= 1


@pytest.mark.parametrize("mode", ["P", "RGBA", "LA", "1", "CMYK"])
def test_other_modes_match_pillows_conversion(write, mode: str) -> None:
    """Palette, alpha (dropped, not composited), bilevel and CMYK, losslessly stored."""
    image = pattern().convert(mode)
    fmt = "TIFF" if mode == "CMYK" else "PNG"
    expected = np.asarray(image.convert("RGB"))
    np.testing.assert_array_equal(rgb(write(encoded(image, fmt), f"m.{fmt.lower()}")), expected)


def test_palette_with_transparency(write) -> None:
    image = pattern().convert("P")
    data = encoded(image, "PNG", transparency=0)
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGBA").convert("RGB"))
    np.testing.assert_array_equal(rgb(write(data)), expected)


def test_cmyk_jpeg(write) -> None:
    array = rgb(write(encoded(pattern().convert("CMYK"), "JPEG", quality=95), "cmyk.jpg"))
    assert array.shape == (30, 40, 3)
    assert array[:10, :10, 0].mean() > 200 and array[:10, :10, 1:].mean() < 50  # still red


def test_png_named_jpg_is_read_as_png(write) -> None:
    array = rgb(write(encoded(pattern(), "PNG"), "really_a_png.jpg"))
    np.testing.assert_array_equal(array, np.asarray(pattern()))


@pytest.mark.parametrize(
    ("orientation", "red_corner"),
    [(1, "top-left"), (3, "bottom-right"), (6, "top-right"), (8, "bottom-left")],
)
def test_exif_orientation_is_honoured(write, orientation: int, red_corner: str) -> None:
    """The pixels come out as a viewer shows them: 6 means "rotate 90 degrees clockwise"."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encoded(pattern(), "JPEG", quality=95, exif=exif)
    array = rgb(write(data, "rotated.jpg"))
    assert array.shape == ((30, 40, 3) if orientation in (1, 3) else (40, 30, 3))
    height, width = array.shape[:2]
    corners = {
        "top-left": array[:8, :8],
        "top-right": array[:8, width - 8 :],
        "bottom-left": array[height - 8 :, :8],
        "bottom-right": array[height - 8 :, width - 8 :],
    }
    reddest = max(corners, key=lambda k: corners[k][..., 0].mean() - corners[k][..., 1].mean())
    assert reddest == red_corner


# --- refusals: each bad file is one ImageError naming it ---------------------------------


def tiff_with_rational_strip_offset() -> bytes:
    """A 4x4 grey TIFF whose StripOffsets is a RATIONAL (3/2): Pillow raised TypeError
    (found by bench/fuzz.py)."""
    entries = [  # tag, type (3 SHORT, 4 LONG, 5 RATIONAL), count, value
        (256, 3, 1, 4),
        (257, 3, 1, 4),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 5, 1, None),
        (277, 3, 1, 1),
        (278, 3, 1, 4),
        (279, 4, 1, 16),
    ]
    after_ifd = 8 + 2 + 12 * len(entries) + 4
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        if value is None:
            ifd += struct.pack("<HHII", tag, kind, count, after_ifd)
        elif kind == 3:
            ifd += struct.pack("<HHIHH", tag, kind, count, value, 0)
        else:
            ifd += struct.pack("<HHII", tag, kind, count, value)
    ifd += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<II", 3, 2) + bytes(16)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (tiff_with_rational_strip_offset(), "cannot decode image .*TypeError"),
        (b"", "not an image file"),
        (b"hello, world\n", "not an image file"),
        (half(encoded(noise(), "PNG")), "cannot decode image .*truncated"),
        (half(encoded(noise(), "JPEG")), "cannot decode image .*truncated"),
        (encoded(Image.new("RGB", (1, 1)), "PNG"), "image is 1x1, too small"),
        (encoded(Image.new("RGB", (1, 50)), "PNG"), "image is 1x50, too small"),
        (png_header(0, 0) + png_chunk(b"IEND", b""), "not an image file"),
        (png_header(20000, 20000, 8, 2) + png_chunk(b"IDAT", b""), "more than the 67108864 pixel"),
    ],
    ids=[
        "rational-strip-offset",
        "empty",
        "text",
        "truncated-png",
        "truncated-jpeg",
        "1x1",
        "1x50",
        "0x0",
        "20000^2",
    ],
)
def test_bad_files(write, data: bytes, message: str) -> None:
    path = write(data)
    with pytest.raises(ImageError, match=message) as caught:
        load_image(path)
    assert str(caught.value).startswith(f"{path}: ") and "\n" not in str(caught.value)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize(("side", "bit_depth"), [(20000, 1), (10000, 8)])
def test_decompression_bombs_are_refused_undecoded(write, side: int, bit_depth: int) -> None:
    """Real, complete PNGs of a few hundred kB that would decode to 100-400 Mpixels: the
    1-bit one trips Pillow's own guard, the 8-bit one (below it) ours."""
    data = zero_png(side, side, bit_depth)
    assert len(data) < 1_000_000
    with pytest.raises(ImageError, match="pixel limit"):
        load_image(write(data))


def test_missing_directory_and_fifo(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo.png")  # opening it to read would block forever
    (tmp_path / "file.png").write_bytes(b"")
    cases = {
        "missing.png": "no such file",
        "": "is a directory with no image files",
        "fifo.png": "not a regular file",
        "file.png/x.png": "no such file",
    }
    for name, message in cases.items():
        with pytest.raises(ImageError, match=message):
            load_image(tmp_path / name)


def test_permission_denied(write, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests may run as root, for whom chmod 000 stops nothing: make open() refuse instead
    (the CLI test covers the real case as an unprivileged user)."""

    def refuse(*_args, **_kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Image, "open", refuse)
    with pytest.raises(ImageError, match="permission denied"):
        load_image(write(encoded(pattern(), "PNG")))


def test_names_with_control_characters_stay_on_one_line() -> None:
    assert shown_name("a b,é.png") == "a b,é.png"
    assert shown_name("a\nb.png") == "'a\\nb.png'"
    assert shown_name(os.fsdecode(b"bad\xff.png")) == "'bad\\udcff.png'"


# --- properties ----------------------------------------------------------------------------


def loads_or_refuses(path: Path) -> Image.Image | None:
    """The property: an RGB image of at least 2x2 within the limit, or an ImageError naming
    the file in one line. Any other exception fails the test."""
    try:
        image = load_image(path)
    except ImageError as error:
        assert str(error).startswith(f"{path}: ") and "\n" not in str(error)
        return None
    assert image.mode == "RGB"
    assert min(image.size) >= 2 and image.size[0] * image.size[1] <= MAX_PIXELS
    return image


@pytest.mark.filterwarnings("ignore")
@PROPERTY
@given(data=st.binary(max_size=4096))
def test_random_bytes(scratch: Path, data: bytes) -> None:
    scratch.write_bytes(data)
    loads_or_refuses(scratch)


FORMATS = {
    "PNG": ["RGB", "RGBA", "L", "LA", "P", "1", "I;16"],
    "JPEG": ["RGB", "L", "CMYK"],
    "BMP": ["RGB", "L", "P", "1"],
    "TIFF": ["RGB", "RGBA", "L", "I;16", "F", "CMYK"],
    "GIF": ["P", "L"],
    "WEBP": ["RGB", "RGBA"],
    "PPM": ["RGB", "L", "I"],
}
LOADED_FORMATS = {"PNG", "JPEG", "BMP", "TIFF"}


@st.composite
def damaged_images(draw: st.DrawFn) -> tuple[bytes, tuple[int, int], bool]:
    """A random-size image in a random format and mode, possibly truncated or with bytes
    overwritten; returns the bytes, the true size and whether it was damaged or in a format
    the loader does not read (GIF, WebP, PPM)."""
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    mode = draw(st.sampled_from(FORMATS[fmt]))
    size = (draw(st.integers(1, 70)), draw(st.integers(1, 70)))
    seed = draw(st.integers(0, 2**32 - 1))
    pixels = np.random.default_rng(seed).integers(0, 256, (*size[::-1], 3), dtype=np.uint8)
    data = bytearray(encoded(Image.fromarray(pixels).convert(mode), fmt))
    damage = draw(st.sampled_from(["none", "truncate", "overwrite"]))
    if damage == "truncate":
        del data[draw(st.integers(0, len(data) - 1)) :]
    elif damage == "overwrite":
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data), size, damage != "none" or fmt not in LOADED_FORMATS


@pytest.mark.filterwarnings("ignore")
@PROPERTY
@given(example=damaged_images())
def test_random_images_and_damage(scratch: Path, example: tuple[bytes, tuple, bool]) -> None:
    data, size, damaged = example
    scratch.write_bytes(data)
    image = loads_or_refuses(scratch)
    if not damaged:  # an intact image we read loads exactly when it is big enough to inspect
        assert (image is not None) == (min(size) >= 2)
        assert image is None or image.size == size


@pytest.mark.filterwarnings("ignore")
@PROPERTY
@given(
    width=st.integers(0, 2**31 - 1),
    height=st.integers(0, 2**31 - 1),
    depth_colour=st.sampled_from([(1, 0), (8, 0), (16, 0), (8, 2), (16, 2), (8, 6)]),
    payload=st.binary(max_size=256),
)
def test_random_png_dimensions(
    scratch: Path, width: int, height: int, depth_colour: tuple[int, int], payload: bytes
) -> None:
    """Any declared size, tiny data: over the limit is refused unread, and nothing else
    than a loaded image or an ImageError comes out."""
    idat = zlib.compress(payload)
    data = png_header(width, height, *depth_colour) + png_chunk(b"IDAT", idat)
    scratch.write_bytes(data + png_chunk(b"IEND", b""))
    if width * height > MAX_PIXELS:
        with pytest.raises(ImageError, match="pixel limit"):
            load_image(scratch)
    else:
        loads_or_refuses(scratch)


# --- bounded memory (issue 13, item 1) -----------------------------------------------------

THIN = """
import sys
from PIL import Image
from ind_knn_ad.io.alignment import Box, find_pose
from ind_knn_ad.io.preprocess import Preprocess
for size in [(50000, 2), (2, 50000), (8192, 3), (256, 256)]:
    image = Image.new("RGB", size, (200, 200, 200))
    image.paste((20, 20, 20), (size[0] // 3, 0, size[0] // 2, size[1]))
    chosen = [Preprocess(), Preprocess(1024, 1024), Preprocess(256, align=Box(1, 0.3))]
    for preprocess in [*chosen, Preprocess(100000)]:  # --image-size 100000: the crop alone
        assert preprocess(image).shape[1:] == preprocess.size[::-1]
    find_pose(image)
print("ok")
"""


def test_thin_images_preprocess_in_bounded_memory() -> None:
    """A 50000x2 image resized whole to 1024 px across would take 150 GB, and found at
    128 px across (alignment) 2.4 GB, and any image at --image-size 100000 more still (issue
    13, items 1 and 2); each preprocess stays within 600 MB of address space."""
    import shutil
    import subprocess
    import sys

    from conftest import ROOT

    if shutil.which("prlimit") is None:
        pytest.skip("prlimit (util-linux) is not installed")
    # One BLAS thread: OpenBLAS reserves buffers per thread, which on a 16-core machine
    # alone overran the limit before any image was opened (seen on the CUDA check host).
    threads = {name: "1" for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    result = subprocess.run(
        ["prlimit", "--as=600000000", sys.executable, "-c", THIN],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), **threads},
    )
    assert result.returncode == 0 and result.stdout == "ok\n", result.stderr


def _whole_then_crop(image: Image.Image, resize: int, crop: int) -> Image.Image:
    """The preprocessing geometry as it was: resize the whole image, then crop."""
    width, height = image.size
    scale = resize / min(width, height)
    size = (max(crop, round(width * scale)), max(crop, round(height * scale)))
    left, top = (size[0] - crop) // 2, (size[1] - crop) // 2
    return image.resize(size, Image.BICUBIC).crop((left, top, left + crop, top + crop))


@pytest.mark.parametrize(
    ("size", "resize", "crop"),
    [
        ((900, 900), 256, 224),
        ((700, 900), 256, 224),
        ((1024, 640), 1024, 1024),
        ((64, 48), 256, 224),
        ((281, 997), 241, 119),
        ((3000, 40), 256, 224),
    ],
)
def test_ordinary_images_preprocess_as_before(
    size: tuple[int, int], resize: int, crop: int
) -> None:
    """Bounding memory changed no result: every image whose resized frame is no larger than
    it (or than four crops) takes the old path, bit for bit."""
    from ind_knn_ad.io.preprocess import Preprocess

    image = noise(*size)
    expected = np.asarray(_whole_then_crop(image, resize, crop))
    np.testing.assert_array_equal(np.asarray(Preprocess(resize, crop).geometry(image)), expected)


def test_thin_image_matches_whole_resize_closely() -> None:
    """The thin-image path resizes only the cropped region; Pillow may order its two passes
    differently there, so values may differ by rounding, but the picture is the same."""
    from ind_knn_ad.io.preprocess import Preprocess

    image = noise(4000, 12)
    expected = np.asarray(_whole_then_crop(image, 64, 48)).astype(int)
    got = np.asarray(Preprocess(64, 48).geometry(image)).astype(int)
    assert got.shape == expected.shape and np.abs(got - expected).mean() < 2


def test_fuzzed_images_load_or_are_refused(tmp_path: Path) -> None:
    """The image-loader fuzz target (tests/fuzzing.py), 300 seeded cases, through the
    loader and the preprocessing; bench/fuzz.py runs thousands."""
    import random
    from collections import Counter

    from fuzzing import check_image_case, image_seeds, mutate_image

    from ind_knn_ad.io.preprocess import Preprocess

    rng, seeds, preprocess = random.Random(13), image_seeds(), Preprocess()
    outcomes = Counter(
        check_image_case(mutate_image(rng, seeds), tmp_path / "case.img", preprocess)
        for _ in range(300)
    )
    assert outcomes["refused"] > 0 and outcomes["loaded"] > 0, outcomes


MAKE_LARGEST = """
import io, sys
from PIL import Image
from ind_knn_ad.io.images import DECODE_BYTES, MAX_PIXELS, decode_need
mode = sys.argv[2]
header = {"RGB": (8, 2), "I;16": (16, 0), "RGBA": (8, 6), "L": (8, 0)}[mode]
sys.path.insert(0, sys.argv[4])
from test_image_loader import png_chunk, png_header

def need(side):  # what the loader counts for a PNG of this side, from its header alone
    data = png_header(side, side, *header) + png_chunk(b"IDAT", b"")
    return decode_need(Image.open(io.BytesIO(data)))[0]

low, high = 2, int(MAX_PIXELS**0.5)
while low < high:  # the largest side within DECODE_BYTES
    middle = (low + high + 1) // 2
    low, high = (middle, high) if need(middle) <= DECODE_BYTES else (low, middle - 1)
Image.new(mode, (low, low), 90).save(sys.argv[1])
Image.new(mode, (low + 1, low + 1), 90).save(sys.argv[3])
"""
# In a process of its own, so that making the image does not raise the peak first.
LOAD_LARGEST = """
import resource, sys
from ind_knn_ad.io.images import load_image
from ind_knn_ad.io.preprocess import Preprocess
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
Preprocess()(load_image(sys.argv[1]))
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


@pytest.mark.parametrize("mode", ["RGB", "I;16", "RGBA", "L"])
def test_the_largest_image_takes_one_copy(tmp_path: Path, mode: str) -> None:
    """The largest PNG the loader takes in each mode (8192x8192 RGB; smaller where the
    mode needs a conversion) decodes within the fuzz contract's 300 MB, and one pixel more
    across is refused from the header. No copies for orientation or an RGB conversion that
    changes nothing; 16-bit pixels scaled a block at a time (8192x8192 RGB peaked at 744 MB
    before, 16-bit at 1065, and RGBA, before its limit, at 510)."""
    import subprocess
    import sys

    from conftest import ROOT

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    path = tmp_path / "largest.png"
    beyond = tmp_path / "beyond.png"
    tests = Path(__file__).parent
    command = [sys.executable, "-c", MAKE_LARGEST, path, mode, beyond, tests]
    subprocess.run(command, env=env, check=True)
    result = subprocess.run(
        [sys.executable, "-c", LOAD_LARGEST, path], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) < 300, f"{mode}: peak grew by {result.stdout.strip()} MB"
    with pytest.raises(ImageError, match=r"refused before decoding"):
        load_image(beyond)


LIBTIFF_CASE = """
import io, struct, sys
from PIL import Image
buffer = io.BytesIO()
Image.new("I;16", (32, 24), 900).save(buffer, "TIFF", compression="tiff_lzw")
data = bytearray(buffer.getvalue())
first = struct.unpack("<I", data[4:8])[0]
for entry in range(struct.unpack("<H", data[first : first + 2])[0]):
    at = first + 2 + 12 * entry
    if data[at : at + 2] == bytes.fromhex("0201"):  # BitsPerSample: count 1 -> 16777217
        data[at + 7] ^= 1
open(sys.argv[1], "wb").write(data)
if sys.argv[2] == "pillow":
    try:
        Image.open(sys.argv[1]).load()
    except Exception:
        pass
else:
    from ind_knn_ad.io.images import load_image
    from ind_knn_ad.errors import ImageError
    try:
        load_image(sys.argv[1])
    except ImageError as error:
        print(error)
"""


def test_libtiff_prints_nothing_of_its_own(tmp_path: Path) -> None:
    """An LZW TIFF with one flipped bit in BitsPerSample's count (found by the fuzz target,
    about one damaged TIFF in 3000) makes libtiff print "TIFFReadDirectory: IO error ..."
    on stderr from C; the loader turns libtiff's error handler off, so the file's
    ImageError is all a user sees."""
    import subprocess
    import sys

    from conftest import ROOT

    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}

    def run(how: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-c", LIBTIFF_CASE, str(tmp_path / "case.tif"), how]
        return subprocess.run(command, capture_output=True, text=True, env=env)

    plain = run("pillow")
    assert "TIFFReadDirectory" in plain.stderr  # the case still provokes libtiff
    loaded = run("loader")
    assert loaded.stderr == ""
    assert loaded.stdout.startswith(str(tmp_path / "case.tif") + ": ")
