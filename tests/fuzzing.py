"""Fuzz targets shared by the test suite (a bounded, seeded number of cases) and
bench/fuzz.py (a long run).

Model loader: random mutations of a valid model file (bit flips, truncations, header
edits, settings edits). Each mutated file may only ever give the original's score exactly,
or be refused with a ModelFileError (the tool's one line and exit code 3): never another
exception, never a different score, never more than 300 MB of memory.

Image loader: random mutations of valid images (bit flips, truncations, header edits) and
random bytes. Each may only give an RGB image of at least 2x2 within the pixel limit, or an
ImageError (one line naming the file; exit code 1 in the tool).
"""

from __future__ import annotations

import json
import random
import resource
import struct
from pathlib import Path

import numpy as np

from ind_knn_ad.errors import ImageError, ModelFileError
from ind_knn_ad.io.images import MAX_PIXELS, load_image
from ind_knn_ad.io.preprocess import Preprocess
from ind_knn_ad.model_file.store import DIGESTS, METADATA_KEY, load_model

MEMORY_LIMIT = 300 * 2**20  # what one case may add to the peak resident memory


def peak_rss() -> int:
    """This process's peak resident memory so far, in bytes (Linux: ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _header(data: bytes) -> tuple[int, dict]:
    (size,) = struct.unpack("<Q", data[:8])
    return size, json.loads(data[8 : 8 + size])


def _with_header(data: bytes, header: dict) -> bytes:
    """`data` with its safetensors header replaced (padded to 8 bytes, as writers do)."""
    size, _ = _header(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data[8 + size :]


ODD_VALUES = [True, False, None, -1, 0, 1, 2**70, 1e308, -1e308, "x", "", [], {}, [1, 2], [[[]]]]


def _odd_settings(rng: random.Random, settings: dict) -> dict:
    """One setting, at any depth, replaced by an odd JSON value (or removed)."""
    settings = json.loads(json.dumps(settings))
    holder, key = settings, None
    while True:
        keys = list(holder) if isinstance(holder, dict) else list(range(len(holder)))
        if not keys:
            break
        key = rng.choice(keys)
        if isinstance(holder[key], (dict, list)) and holder[key] and rng.random() < 0.5:
            holder = holder[key]
            continue
        break
    if key is None:
        return settings
    if isinstance(holder, dict) and rng.random() < 0.15:
        del holder[key]
    else:
        holder[key] = rng.choice(ODD_VALUES)
    return settings


def mutate_model(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    """A random mutation of a model file's bytes, and its kind."""
    kind = rng.choice(["bits", "truncate", "header", "settings", "settings-unprotected"])
    if kind == "bits":
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            mutated[rng.randrange(len(mutated))] ^= 1 << rng.randrange(8)
        return kind, bytes(mutated)
    if kind == "truncate":
        return kind, data[: rng.randrange(len(data))]
    _, header = _header(data)
    if kind == "header":
        name = rng.choice([key for key in header if key != "__metadata__"])
        field = rng.choice(["dtype", "shape", "data_offsets"])
        header[name][field] = rng.choice(
            [["F32"], "F64", "U8", "I64", "BOOL", [0, 0], [1], [2**40, 1], [-1, 3], "x", None]
        )
        return kind, _with_header(data, header)
    metadata = header["__metadata__"]
    settings = _odd_settings(rng, json.loads(metadata[METADATA_KEY]))
    if kind == "settings-unprotected":  # a file as written before the SHA-256 record
        settings.pop(DIGESTS, None)
        header["__metadata__"] = {METADATA_KEY: json.dumps(settings)}
    else:
        metadata[METADATA_KEY] = json.dumps(settings, sort_keys=True)
    return kind, _with_header(data, header)


def score_model(path: Path, images: list[Path]) -> list[float] | ModelFileError:
    """What anomaly_detector.py would print for `images` with this model, or its refusal.
    Anything else that escapes is a failure of the target."""
    from ind_knn_ad.runtime.detector import Detector

    try:
        detector = Detector(load_model(path), "cpu", maps=False)
        scores = []
        for _, result in detector.score_files(images):
            if isinstance(result, ImageError):  # allowed only when the settings changed
                raise result
            scores.append(result.score)
        return scores
    except ModelFileError as error:
        return error


def check_model_case(
    rng: random.Random, original: bytes, expected: list[float], scratch: Path, images: list[Path]
) -> str:
    """One mutated model file through the target; returns its kind and outcome, raising
    AssertionError when the contract breaks."""
    kind, data = mutate_model(rng, original)
    scratch.write_bytes(data)
    before = peak_rss()
    try:
        outcome = score_model(scratch, images)
    except ImageError as error:
        assert kind == "settings-unprotected", (kind, error)
        outcome = error
    grew = peak_rss() - before
    assert grew <= MEMORY_LIMIT, f"{kind}: peak memory grew by {grew / 2**20:.0f} MB"
    if isinstance(outcome, Exception):  # the tool prints it as one line, with exit 3
        assert "\n" not in str(outcome), str(outcome)
        return f"{kind}: refused"
    if kind == "settings-unprotected":  # a changed setting may change the score, finitely
        assert all(np.isfinite(outcome)), (kind, outcome)
        return f"{kind}: scored"
    assert outcome == expected, f"{kind}: scored {outcome}, not {expected}"
    return f"{kind}: same score"


# --- images ----------------------------------------------------------------------------------


def mutate_image(rng: random.Random, seeds: list[bytes]) -> bytes:
    """Random bytes, or one of `seeds` with bits flipped, bytes overwritten or cut short."""
    if rng.random() < 0.1:
        return rng.randbytes(rng.randrange(4096))
    data = bytearray(rng.choice(seeds))
    kind = rng.choice(["bits", "bytes", "truncate", "both"])
    if kind in ("bits", "both"):
        for _ in range(rng.randint(1, 16)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    if kind == "bytes":
        for _ in range(rng.randint(1, 8)):
            at = rng.randrange(min(len(data), 64))  # the header, where sizes are
            data[at] = rng.randrange(256)
    if kind in ("truncate", "both"):
        del data[rng.randrange(1, len(data)) :]
    return bytes(data)


def check_image_case(data: bytes, scratch: Path, preprocess: Preprocess) -> str:
    """One file through the image loader and the preprocessing: an RGB image or an
    ImageError naming the file in one line, within the memory limit."""
    scratch.write_bytes(data)
    before = peak_rss()
    try:
        image = load_image(scratch)
        array = preprocess(image)
    except ImageError as error:
        message = str(error)
        assert message.startswith(f"{scratch}: ") and "\n" not in message, message
        outcome = "refused"
    else:
        assert image.mode == "RGB" and min(image.size) >= 2
        assert image.size[0] * image.size[1] <= MAX_PIXELS
        assert array.shape == (3, *preprocess.size[::-1]) and np.isfinite(array).all()
        outcome = "loaded"
    grew = peak_rss() - before
    assert grew <= MEMORY_LIMIT, f"peak memory grew by {grew / 2**20:.0f} MB"
    return outcome


def image_seeds() -> list[bytes]:
    """Small valid images in every format and several modes, to mutate."""
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = Image.fromarray(rng.integers(0, 256, (24, 32, 3), np.uint8))
    seeds = []
    for fmt, modes in {
        "PNG": ["RGB", "RGBA", "L", "P", "1", "I;16"],
        "JPEG": ["RGB", "L", "CMYK"],
        "BMP": ["RGB", "P"],
        "TIFF": ["RGB", "I;16", "F", "CMYK"],
        "GIF": ["P"],
        "WEBP": ["RGB"],
    }.items():
        for mode in modes:
            stream = io.BytesIO()
            pixels.convert(mode).save(stream, fmt)
            seeds.append(stream.getvalue())
    # What the loader counts per format before decoding (issue 26, item 3): a progressive
    # JPEG's coefficients, a one-strip compressed TIFF's strip, an EXIF turn's copy; and
    # formats Pillow reads that the loader refuses by content.
    exif = Image.Exif()
    exif[0x0112] = 6
    for fmt, options in [
        ("JPEG", {"progressive": True}),
        ("TIFF", {"compression": "tiff_lzw", "tiffinfo": {278: 24}}),
        ("PNG", {"exif": exif}),
        ("JPEG", {"exif": exif}),
        ("JPEG2000", {}),
        ("AVIF", {}),
    ]:
        stream = io.BytesIO()
        try:
            pixels.save(stream, fmt, **options)
        except (KeyError, OSError):  # a Pillow built without this codec
            continue
        seeds.append(stream.getvalue())
    return seeds
