"""Every bad input of issue 5 through the real command line, in a subprocess.

Each table row names a case, how to make it and what the tool must answer: the exit code,
the one stderr line naming the file and its problem, and what stays on stdout. Image rows
run together with a good image, which must still be scored.
"""

from __future__ import annotations

import csv
import ctypes
import hashlib
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from PIL import Image
from test_image_loader import encoded, half, noise, png_chunk, png_header, zero_png

from ind_knn_ad.cli import exit_codes
from ind_knn_ad.io.images import shown_name
from ind_knn_ad.model_file.schema import FORMAT_VERSION
from ind_knn_ad.model_file.store import METADATA_KEY, SETTINGS_DIGEST_KEY, load_model

RECORD = re.compile(r"^\d+\.\d{6}$")


def scorer(*args: str | Path, **kwargs) -> subprocess.CompletedProcess:
    """anomaly_detector.py as a user runs it. Output is decoded here, not by subprocess's
    text mode, which would turn a CR inside a quoted name into LF; bytes that are not
    UTF-8 (from such a name) survive as surrogates."""
    kwargs.setdefault("stdout", subprocess.PIPE)
    env = {**os.environ, "PYTHONPATH": str(ROOT), **kwargs.pop("env_update", {})}
    result = subprocess.run(
        [sys.executable, ROOT / "anomaly_detector.py", *args],
        stderr=subprocess.PIPE,
        env=env,
        **kwargs,
    )
    for stream in ("stdout", "stderr"):
        value = getattr(result, stream)
        setattr(result, stream, value.decode("utf-8", "surrogateescape") if value else "")
    return result


def records(stdout: str) -> list[list[str]]:
    """stdout read back by a CSV reader, every record checked to be file,score,flag."""
    rows = list(csv.reader(io.StringIO(stdout, newline="")))
    for row in rows:
        assert len(row) == 3 and RECORD.match(row[1]) and row[2] in ("0", "1"), row
    return rows


def error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr
    return stderr.splitlines()


# --- the images ----------------------------------------------------------------------------

Maker = Callable[[Path, bytes], None]


def copy_of_good(path: Path, good: bytes) -> None:
    path.write_bytes(good)


def converted(mode: str, fmt: str = "PNG", **options) -> Maker:
    def make(path: Path, good: bytes) -> None:
        path.write_bytes(encoded(Image.open(io.BytesIO(good)).convert(mode), fmt, **options))

    return make


def sixteen_bit(path: Path, good: bytes) -> None:
    gray = Image.open(io.BytesIO(good)).convert("L")
    path.write_bytes(encoded(gray.point(lambda v: v * 257, "I").convert("I;16"), "PNG"))


def exif_rotated(path: Path, good: bytes) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    path.write_bytes(encoded(Image.open(io.BytesIO(good)), "JPEG", quality=95, exif=exif))


def data(content: bytes) -> Maker:
    return lambda path, _good: path.write_bytes(content)


def nothing(_path: Path, _good: bytes) -> None:
    """A missing file: make nothing."""


def folder(path: Path, _good: bytes) -> None:
    path.mkdir()


def fifo(path: Path, _good: bytes) -> None:
    os.mkfifo(path)


def zeros(side: int, bit_depth: int) -> Maker:
    """A complete PNG of side x side zeros (made when the table is built into files)."""
    return lambda path, _good: path.write_bytes(zero_png(side, side, bit_depth))


def one_pixel(path: Path, _good: bytes) -> None:
    path.write_bytes(encoded(Image.new("RGB", (1, 1)), "PNG"))


@dataclass(frozen=True)
class ImageCase:
    id: str
    name: str
    make: Maker
    error: str | None = None  # regex the stderr line must match; None: scored normally


ODD_BUT_VALID = [
    ImageCase("space", "with space.png", copy_of_good),
    ImageCase("comma", "comma,name.png", copy_of_good),
    ImageCase("quote", 'quote"name.png', copy_of_good),
    ImageCase("newline", "new\nline.png", copy_of_good),
    ImageCase("carriage-return", "carriage\rreturn.png", copy_of_good),
    ImageCase("non-ascii", "écrou-ナット.png", copy_of_good),
    ImageCase("not-utf8", os.fsdecode(b"latin1-\xe9.png"), copy_of_good),
    ImageCase("leading-dash", "-dash.png", copy_of_good),
    ImageCase("grayscale", "gray.png", converted("L")),
    ImageCase("16-bit", "deep.png", sixteen_bit),
    ImageCase("palette", "palette.png", converted("P")),
    ImageCase("rgba", "rgba.png", converted("RGBA")),
    ImageCase("cmyk", "cmyk.jpg", converted("CMYK", "JPEG", quality=95)),
    ImageCase("exif-rotated", "rotated.jpg", exif_rotated),
    ImageCase("png-named-jpg", "png.jpg", copy_of_good),
]
BAD = [
    ImageCase("missing", "missing.png", nothing, "no such file"),
    ImageCase("empty-directory", "folder.png", folder, "is a directory with no image files"),
    ImageCase("fifo", "fifo.png", fifo, "not a regular file"),
    ImageCase("empty", "empty.png", data(b""), "not an image file"),
    ImageCase("not-an-image", "text.png", data(b"hello\n"), "not an image file"),
    ImageCase("truncated-png", "cut.png", data(half(encoded(noise(), "PNG"))), "truncated"),
    ImageCase("truncated-jpeg", "cut.jpg", data(half(encoded(noise(), "JPEG"))), "truncated"),
    ImageCase("one-pixel", "dot.png", one_pixel, "1x1, too small"),
    ImageCase(
        "zero-size", "zero.png", data(png_header(0, 0) + png_chunk(b"IEND", b"")), "not an image"
    ),
    ImageCase("huge", "huge.png", zeros(20000, 1), "pixel limit"),
    ImageCase("bomb", "bomb.png", zeros(10000, 8), "pixel limit"),
    ImageCase("bad-name", "text\nname.png", data(b"hello\n"), "not an image file"),
]


@pytest.fixture(scope="module")
def good(sample_dataset: Path) -> bytes:
    return (sample_dataset / "test" / "good" / "000.png").read_bytes()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, good: bytes) -> Path:
    folder = tmp_path_factory.mktemp("inputs")
    (folder / "good.png").write_bytes(good)
    for case in ODD_BUT_VALID + BAD:
        case.make(folder / case.name, good)
    return folder


def test_odd_but_valid_images_in_one_call(sample_model: Path, inputs: Path) -> None:
    """Odd names and modes: all scored, in input order, each name read back exactly by a
    CSV reader; copies of good.png score exactly as it does, whatever their name."""
    names = ["good.png"] + [case.name for case in ODD_BUT_VALID]
    result = scorer("--model", sample_model, "--", *names, cwd=inputs)
    assert result.returncode == exit_codes.OK, result.stderr
    assert error_lines(result.stderr) == []
    rows = records(result.stdout)
    assert [row[0] for row in rows] == names
    # one physical line per record, except a quoted name with a line break in it
    assert result.stdout.count("\n") == len(names) + sum("\n" in n for n in names)
    by_name = {row[0]: row[1:] for row in rows}
    for case in ODD_BUT_VALID:
        if case.make is copy_of_good:
            assert by_name[case.name] == by_name["good.png"], case.id


def test_quoting_follows_rfc_4180(sample_model: Path, inputs: Path) -> None:
    result = scorer("--model", sample_model, "--", "comma,name.png", 'quote"name.png', cwd=inputs)
    lines = result.stdout.splitlines()
    assert lines[0].startswith('"comma,name.png",') and lines[1].startswith('"quote""name.png",')


@pytest.mark.parametrize("case", BAD, ids=[case.id for case in BAD])
def test_bad_image_beside_a_good_one(sample_model: Path, inputs: Path, case: ImageCase) -> None:
    result = scorer("--model", sample_model, "good.png", case.name, cwd=inputs)
    assert result.returncode == exit_codes.SOME_INPUTS_FAILED
    assert [row[0] for row in records(result.stdout)] == ["good.png"]
    [line] = error_lines(result.stderr)
    assert line.startswith(f"ERROR: {shown_name(case.name)}: ")
    assert re.search(case.error, line), line


def test_every_case_in_one_call(sample_model: Path, inputs: Path) -> None:
    """Good and bad mixed: every good one scored, every bad one its own line, in order."""
    pairs = zip_longest(ODD_BUT_VALID, BAD)
    cases = [case for pair in pairs for case in pair if case is not None]
    result = scorer("--model", sample_model, "--", *(case.name for case in cases), cwd=inputs)
    assert result.returncode == exit_codes.SOME_INPUTS_FAILED
    assert [row[0] for row in records(result.stdout)] == [c.name for c in cases if not c.error]
    lines = error_lines(result.stderr)
    bad = [case for case in cases if case.error]
    assert len(lines) == len(bad)
    for line, case in zip(lines, bad, strict=True):
        assert line.startswith(f"ERROR: {shown_name(case.name)}: ") and re.search(case.error, line)


# Address space for one scoring process: about twice what it needs with a good image.
BOUNDED = 1_500_000_000


def bounded(*args: str | Path, **kwargs) -> subprocess.CompletedProcess:
    """scorer() under `prlimit --as=BOUNDED`: more memory than that is a MemoryError."""
    if shutil.which("prlimit") is None:
        pytest.skip("prlimit (util-linux) is not installed")
    command = ["prlimit", f"--as={BOUNDED}", sys.executable, ROOT / "anomaly_detector.py"]
    result = subprocess.run(
        [*command, *args],
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        **kwargs,
    )
    result.stdout = result.stdout.decode("utf-8", "surrogateescape")
    result.stderr = result.stderr.decode("utf-8", "surrogateescape")
    return result


def test_thin_images_in_bounded_memory(sample_model: Path, inputs: Path, tmp_path: Path) -> None:
    """Issue 13, item 1: a 50000x2 PNG (150 bytes) resized whole to 256 px across would be
    12.8 M x 256 pixels, 2.4 GB; only the part that lands in the crop is resized now, so
    it is scored within the limit, and so is the good image beside it."""
    (tmp_path / "wide.png").write_bytes(zero_png(50000, 2))
    (tmp_path / "tall.png").write_bytes(zero_png(2, 50000))
    shutil.copy(inputs / "good.png", tmp_path / "good.png")
    result = bounded("--model", sample_model, "good.png", "wide.png", "tall.png", cwd=tmp_path)
    assert result.returncode == exit_codes.OK, result.stderr
    assert error_lines(result.stderr) == []
    assert [row[0] for row in records(result.stdout)] == ["good.png", "wide.png", "tall.png"]


def _remove_chain(top: Path) -> None:
    """Remove top/d/d/.../d, however deep, files at the bottom included, without the
    recursion that shutil.rmtree (and so pytest's clean-up of old runs) would need."""
    folders = [os.open(top, os.O_RDONLY)]
    while True:
        try:
            folders.append(os.open("d", os.O_RDONLY, dir_fd=folders[-1]))
        except FileNotFoundError:
            break
    for name in os.listdir(folders[-1]):
        os.unlink(name, dir_fd=folders[-1])
    os.close(folders.pop())
    while folders:
        os.rmdir("d", dir_fd=folders[-1])
        os.close(folders.pop())


def test_folder_nested_1500_deep(sample_model: Path, inputs: Path, tmp_path: Path) -> None:
    """Issue 13, item 11: os.walk's recursion failed 1,000 folders down, and nothing was
    scored; the image at the bottom and the file after the folder are both scored."""
    shutil.copy(inputs / "good.png", tmp_path / "good.png")
    (tmp_path / "top").mkdir()
    try:
        folder = os.open(tmp_path / "top", os.O_RDONLY)
        for _ in range(1500):  # not mkdir(parents=True): pathlib recurses too
            os.mkdir("d", dir_fd=folder)
            inner = os.open("d", os.O_RDONLY, dir_fd=folder)
            os.close(folder)
            folder = inner
        image = os.open("deep.png", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=folder)
        os.write(image, (inputs / "good.png").read_bytes())
        os.close(image)
        os.close(folder)
        result = scorer("--model", sample_model, "top", "good.png", cwd=tmp_path)
    finally:
        _remove_chain(tmp_path / "top")
    assert result.returncode == exit_codes.OK, result.stderr
    assert error_lines(result.stderr) == []
    rows = records(result.stdout)
    assert [row[0] for row in rows] == [os.path.join("top", *["d"] * 1500, "deep.png"), "good.png"]
    assert rows[0][1:] == rows[1][1:]


def _without_permission_override() -> None:
    """Drop root's power to read any file (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH) from the
    capability bounding set, so that the process exec'd next is refused a mode-000 file."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def test_unreadable_image(sample_model: Path, inputs: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.png"
    shutil.copy(inputs / "good.png", secret)
    secret.chmod(0o000)
    options = {"preexec_fn": _without_permission_override} if os.geteuid() == 0 else {}
    try:
        result = scorer("--model", sample_model, "good.png", secret, cwd=inputs, **options)
    except subprocess.SubprocessError as error:
        pytest.skip(f"cannot drop root's file permission override here ({error})")
    assert result.returncode == exit_codes.SOME_INPUTS_FAILED, result.stderr
    assert [row[0] for row in records(result.stdout)] == ["good.png"]
    assert error_lines(result.stderr) == [f"ERROR: {secret}: permission denied"]


def test_unlistable_directory(sample_model: Path, inputs: Path, tmp_path: Path) -> None:
    """A directory argument whose subdirectory cannot be listed: the images that can be
    reached are scored, and the subdirectory gets its own error line."""
    shutil.copy(inputs / "good.png", tmp_path / "a.png")
    (tmp_path / "locked").mkdir()
    shutil.copy(inputs / "good.png", tmp_path / "locked" / "b.png")
    (tmp_path / "locked").chmod(0o000)
    options = {"preexec_fn": _without_permission_override} if os.geteuid() == 0 else {}
    try:
        result = scorer("--model", sample_model, tmp_path, **options)
    except subprocess.SubprocessError as error:
        pytest.skip(f"cannot drop root's file permission override here ({error})")
    finally:
        (tmp_path / "locked").chmod(0o755)
    assert result.returncode == exit_codes.SOME_INPUTS_FAILED, result.stderr
    assert [row[0] for row in records(result.stdout)] == [str(tmp_path / "a.png")]
    assert error_lines(result.stderr) == [f"ERROR: {tmp_path / 'locked'}: permission denied"]


# --- model files -----------------------------------------------------------------------------


ModelMaker = Callable[[Path, Path], None]  # (sample model, where to write the case)


def variant(
    settings: Callable[[dict], object] | None = None,
    graph: bytes | None = None,
    bank: Callable[[np.ndarray], object] | None = None,
) -> ModelMaker:
    """A maker for the sample model with its settings changed, its graph replaced or its
    bank changed, written as a file from before the SHA-256 record (which the loader still
    reads, unverified), so that what is checked is the change itself."""

    def make(model: Path, target: Path) -> None:
        from safetensors.numpy import save_file

        loaded = load_model(model)
        if settings is not None:
            settings(loaded.settings)
        memory_bank = loaded.tensors["memory_bank"].copy()
        if bank is not None:
            bank(memory_bank)
        tensors = {
            "memory_bank": memory_bank,
            "feature_graph": np.frombuffer(graph or loaded.feature_graph, np.uint8),
        }
        save_file(tensors, target, metadata={METADATA_KEY: json.dumps(loaded.settings)})

    return make


def raw(change: Callable[[dict, dict], object]) -> ModelMaker:
    """A maker for the sample model's own metadata and tensors, SHA-256 record included,
    changed by `change(metadata, tensors)` as a tool that ignores the record would."""

    def make(model: Path, target: Path) -> None:
        from safetensors import safe_open
        from safetensors.numpy import save_file

        with safe_open(str(model), framework="numpy") as reader:
            metadata = reader.metadata()
            tensors = {key: reader.get_tensor(key) for key in reader.keys()}  # noqa: SIM118
        change(metadata, tensors)
        save_file(tensors, target, metadata=metadata)

    return make


def flipped(tensor: str) -> ModelMaker:
    """One bit flipped in the middle of a tensor's bytes, in place in the file."""

    def make(model: Path, target: Path) -> None:
        data = bytearray(model.read_bytes())
        (size,) = struct.unpack("<Q", data[:8])
        start, end = json.loads(data[8 : 8 + size])[tensor]["data_offsets"]
        data[8 + size + (start + end) // 2] ^= 0x10
        target.write_bytes(bytes(data))

    return make


def flipped_threshold(model: Path, target: Path) -> None:
    """One bit flipped in the threshold's first digit (2 -> 3, say): still valid JSON."""
    data = bytearray(model.read_bytes())
    at = data.index(b'\\"value\\": ') + len(b'\\"value\\": ')
    assert chr(data[at]).isdigit()
    data[at] ^= 0x01
    target.write_bytes(bytes(data))


def other_graph(metadata: dict, tensors: dict) -> None:
    """Another valid graph computing the same features: only its producer name differs."""
    import onnx

    graph = onnx.load_from_string(tensors["feature_graph"].tobytes())
    graph.producer_name = "someone else"
    tensors["feature_graph"] = np.frombuffer(graph.SerializeToString(), np.uint8)


def nested_settings(metadata: dict, _tensors: dict) -> None:
    """Settings nested 100,000 lists deep (json.loads: RecursionError), no SHA-256 record."""
    metadata.clear()
    metadata[METADATA_KEY] = "[" * 100000 + "]" * 100000


def set_bank_value(value: float) -> Callable[[np.ndarray], None]:
    def change(bank: np.ndarray) -> None:
        bank[0, 0] = value

    return change


def foreign_safetensors(_model: Path, target: Path) -> None:
    from safetensors.numpy import save_file

    save_file({"weight": np.zeros((2, 2), np.float32)}, target)


def signed(change: Callable[[dict], object]) -> ModelMaker:
    """The sample model with its settings changed and signed afresh, every SHA-256 valid,
    as anyone can sign a crafted file: only the settings' own checks stand."""

    def make(model: Path, target: Path) -> None:
        from safetensors import safe_open
        from safetensors.numpy import save_file

        with safe_open(str(model), framework="numpy") as reader:
            settings = json.loads(reader.metadata()[METADATA_KEY])
            tensors = {key: reader.get_tensor(key) for key in reader.keys()}  # noqa: SIM118
        change(settings)
        text = json.dumps(settings, sort_keys=True)
        digest = hashlib.sha256(text.encode()).hexdigest()
        save_file(tensors, target, metadata={METADATA_KEY: text, SETTINGS_DIGEST_KEY: digest})

    return make


def split_header(data: bytes) -> tuple[dict, bytes]:
    """A safetensors file's JSON header and its data bytes."""
    (size,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + size]), data[8 + size :]


def joined(header: dict, body: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + body


def header_changed(change: Callable[[dict], object]) -> ModelMaker:
    """The sample model, as a file from before the SHA-256 record, with its header's
    tensor entries changed by `change(header)` and its data bytes as they were."""

    def make(model: Path, target: Path) -> None:
        variant()(model, target)
        header, body = split_header(target.read_bytes())
        change(header)
        target.write_bytes(joined(header, body))

    return make


def moved(tensor: str, by: int, grow: bool = False) -> Callable[[dict], None]:
    """Shift a tensor's byte range by `by` (its start too, unless `grow`)."""

    def change(header: dict) -> None:
        start, end = header[tensor]["data_offsets"]
        header[tensor]["data_offsets"] = [start if grow else start + by, end + by]
        if grow:
            header[tensor]["shape"] = [end + by - start]

    return change


def bank_as_bytes(header: dict) -> None:
    """The memory bank's bytes declared as one row of uint8: the right size, wrong type."""
    start, end = header["memory_bank"]["data_offsets"]
    header["memory_bank"].update(dtype="U8", shape=[end - start])


def sparse(nbytes: int, tensor: str = "junk") -> ModelMaker:
    """The sample model (from before the SHA-256 record) with `tensor` declared `nbytes`
    long, after the others: the junk tensor added, or the memory bank grown to as many
    rows. The file is extended sparsely (os.truncate), so the disk holds none of it."""

    def make(model: Path, target: Path) -> None:
        variant()(model, target)
        header, body = split_header(target.read_bytes())
        start, end = header["feature_graph"]["data_offsets"]
        size, entry = nbytes, {"dtype": "U8", "shape": [nbytes]}
        if tensor == "memory_bank":
            channels = header[tensor]["shape"][1]
            body, size = body[start:end], nbytes // (4 * channels) * 4 * channels
            header["feature_graph"]["data_offsets"] = [0, len(body)]
            entry = {"dtype": "F32", "shape": [size // (4 * channels), channels]}
        header[tensor] = {**entry, "data_offsets": [len(body), len(body) + size]}
        target.write_bytes(joined(header, body))
        os.truncate(target, target.stat().st_size + size)

    return make


MODEL_CASES: list[tuple[str, ModelMaker, str]] = [
    ("missing", lambda _m, _t: None, "model file not found"),
    ("directory", lambda _m, t: t.mkdir(), "model file is a directory"),
    ("empty", lambda _m, t: t.write_bytes(b""), "not a readable model file"),
    ("truncated", lambda m, t: t.write_bytes(half(m.read_bytes())), "not a readable model"),
    ("an-image", lambda _m, t: t.write_bytes(encoded(noise(), "PNG")), "not a readable model"),
    ("foreign-safetensors", foreign_safetensors, "not an ind_knn_ad model file"),
    (
        "newer-version",
        variant(lambda s: s.update(format_version=FORMAT_VERSION + 1)),
        rf"model format version {FORMAT_VERSION + 1} is newer than this tool supports "
        rf"\({FORMAT_VERSION}\); upgrade",
    ),
    ("broken-graph", variant(graph=b"not onnx"), "feature graph cannot run"),
    ("bad-preprocess", variant(lambda s: s["preprocess"].pop("crop")), "bad preprocess"),
    (
        "bad-align-box",
        variant(
            lambda s: s.update(
                format_version=2, preprocess={**s["preprocess"], "align": {"length": -1}}
            )
        ),
        "bad preprocess",
    ),
    ("bad-image-score", variant(lambda s: s.update(image_score="mean")), "unknown image score"),
    # issue 13, item 9: integrity and strict JSON types
    ("flipped-bit-in-graph", flipped("feature_graph"), "feature graph fails its SHA-256"),
    ("flipped-bit-in-bank", flipped("memory_bank"), "memory bank fails its SHA-256"),
    ("flipped-bit-in-settings", flipped_threshold, "settings fail their SHA-256"),
    ("other-graph", raw(other_graph), "feature graph fails its SHA-256"),
    ("extra-tensor", raw(lambda _m, t: t.update(extra=np.zeros(1))), "not those recorded"),
    (
        "settings-record-lost",
        raw(lambda m, _t: m.pop("ind_knn_ad.sha256")),
        "SHA-256 record is incomplete",
    ),
    (
        "threshold-true",
        variant(lambda s: s["threshold"].update(value=True)),
        "threshold value is missing or not a finite number",
    ),
    (
        "layers-true",
        variant(lambda s: s.update(layers=[True, 3])),
        "'layers' is not a list of stage numbers",
    ),
    # issue 13, item 10: crafted settings and values
    (
        "two-value-mean",
        variant(lambda s: s["preprocess"].update(mean=[0.5, 0.5])),
        r"bad preprocess settings \(mean is not three finite numbers",
    ),
    (
        "string-std",
        variant(lambda s: s["preprocess"].update(std=["1", 1, 1])),
        r"bad preprocess settings \(std is not three finite numbers",
    ),
    (
        "huge-input",
        variant(lambda s: s["preprocess"].update(resize=100000, crop=100000)),
        r"cannot score with this model here: a 100000x100000 px input needs about",
    ),
    (
        "huge-bank-value",
        variant(bank=set_bank_value(3e38)),
        "memory bank holds values beyond",
    ),
    (
        "nested-json",
        raw(nested_settings),
        r"not an ind_knn_ad model file \(bad settings\)",
    ),
    # issue 26, item 5: the header is checked before any tensor is read
    ("junk-tensor-2GB-sparse", sparse(2 * 10**9), "holds tensor 'junk', which a patchcore"),
    (
        "header-length-beyond-file",
        lambda m, t: t.write_bytes(struct.pack("<Q", m.stat().st_size) + m.read_bytes()[8:]),
        r"not a readable model file \(header length \d+ does not fit its \d+ bytes\)",
    ),
    (
        "offsets-overlap",
        header_changed(moved("feature_graph", -4)),
        r"'feature_graph' starts at data byte \d+, not \d+: tensors overlap or leave a gap",
    ),
    (
        "offsets-leave-a-gap",
        header_changed(moved("feature_graph", 4)),
        r"'feature_graph' starts at data byte \d+, not \d+: tensors overlap or leave a gap",
    ),
    (
        "offsets-past-the-end",
        header_changed(moved("feature_graph", 4, grow=True)),
        r"its tensors take \d+ bytes, its data \d+",
    ),
    (
        "offsets-not-the-shape",
        header_changed(lambda h: h["feature_graph"].update(shape=[1])),
        r"tensor 'feature_graph' spans \d+ bytes, not the 1 its shape takes",
    ),
    (
        "bank-declared-as-bytes",
        header_changed(bank_as_bytes),
        r"memory bank has shape \(\d+,\) and type uint8, expected \(K, \d+\) float32",
    ),
    # issue 26, item 12: crafted settings with valid digests
    (
        "signed-negative-threshold",
        signed(lambda s: s["threshold"].update(value=-1e308)),
        "threshold value is missing or not a finite number above 0",
    ),
    (
        "signed-stage-99",
        signed(lambda s: s.update(layers=[2, 3, 99])),
        "setting 'layers' is not a list of stage numbers from 0 to 7",
    ),
    (
        "signed-huge-neighbourhood",
        signed(lambda s: s.update(neighbourhood=10**6)),
        "setting 'neighbourhood' 1000000 is not an odd number from 1 to 31",
    ),
    (
        "signed-even-neighbourhood",
        signed(lambda s: s.update(neighbourhood=4)),
        "setting 'neighbourhood' 4 is not an odd number from 1 to 31",
    ),
    (
        "signed-coreset-fraction",
        signed(lambda s: s["coreset"].update(fraction=1.5)),
        r"setting 'coreset' fraction 1.5 is not in \(0, 1\]",
    ),
    (
        "signed-coreset-size",
        signed(lambda s: s["coreset"].update(size=s["coreset"]["total_patches"] + 1)),
        r"setting 'coreset' size \d+ is not a bank size from 1 to its total_patches",
    ),
]


@pytest.mark.parametrize(
    ("make", "message"), [c[1:] for c in MODEL_CASES], ids=[c[0] for c in MODEL_CASES]
)
def test_bad_model_file(
    sample_model: Path, inputs: Path, tmp_path: Path, make: ModelMaker, message: str
) -> None:
    target = tmp_path / "case.safetensors"
    make(sample_model, target)
    result = scorer("--model", target, "good.png", cwd=inputs)
    assert result.returncode == exit_codes.MODEL_ERROR
    assert result.stdout == ""
    [line] = error_lines(result.stderr)
    assert line.startswith(f"ERROR: {target}: ") and re.search(message, line), line


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (sparse(2 * 10**9), "holds tensor 'junk', which a patchcore model does not have"),
        (
            sparse(2 * 10**9, "memory_bank"),
            r"cannot load this model here: its tensors take 2 GB, more than the 1.5 GB",
        ),
    ],
    ids=["junk-tensor", "memory-bank"],
)
def test_sparse_2GB_tensor_refused_before_it_is_read(
    sample_model: Path, inputs: Path, tmp_path: Path, make: ModelMaker, message: str
) -> None:
    """Issue 26, item 5: 2 GB declared in a sparse file, under an address-space limit of
    1.5 GB: refused from the header, with one line and exit 3, not a MemoryError or a
    panic from reading it."""
    target = tmp_path / "sparse.safetensors"
    make(sample_model, target)
    assert target.stat().st_size > 2 * 10**9 > target.stat().st_blocks * 512
    result = bounded("--model", target, "good.png", cwd=inputs, timeout=60)
    assert result.returncode == exit_codes.MODEL_ERROR, result.stderr
    assert result.stdout == ""
    [line] = error_lines(result.stderr)
    assert line.startswith(f"ERROR: {target}: ") and re.search(message, line), line


# --- options -------------------------------------------------------------------------------

OPTION_CASES = [
    ("unknown-option", ["--bogus"], "unrecognized arguments: --bogus"),
    ("threshold-word", ["--threshold", "high"], "threshold must be 'auto' or a number"),
    ("threshold-auto", ["--threshold", "auto"], "--threshold here takes a number"),
    ("threshold-zero", ["--threshold", "0"], "threshold must be a finite positive number"),
    ("threshold-negative", ["--threshold", "-1"], "threshold must be a finite positive number"),
    ("threshold-nan", ["--threshold", "nan"], "threshold must be a finite positive number"),
    ("threshold-inf", ["--threshold", "inf"], "threshold must be a finite positive number"),
    ("bad-device", ["--device", "tpu"], "invalid choice: 'tpu'"),
    ("bad-loglevel", ["-l", "loud"], "invalid choice: 'loud'"),
]


@pytest.mark.parametrize(
    ("options", "message"), [c[1:] for c in OPTION_CASES], ids=[c[0] for c in OPTION_CASES]
)
def test_bad_option(sample_model: Path, inputs: Path, options: list[str], message: str) -> None:
    result = scorer("--model", sample_model, *options, "good.png", cwd=inputs)
    assert result.returncode == exit_codes.USAGE
    assert result.stdout == ""
    lines = error_lines(result.stderr)
    assert lines[0].startswith("usage: anomaly_detector.py")
    assert lines[-1].startswith("anomaly_detector.py: error: ") and message in lines[-1]


def test_no_image_given(sample_model: Path) -> None:
    result = scorer("--model", sample_model)
    assert result.returncode == exit_codes.USAGE
    assert "the following arguments are required: imagefile" in result.stderr


def test_cuda_without_a_gpu(sample_model: Path, inputs: Path) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this ONNX Runtime has CUDA")
    result = scorer("--model", sample_model, "--device", "cuda", "good.png", cwd=inputs)
    assert result.returncode == exit_codes.USAGE
    assert result.stdout == ""
    [line] = error_lines(result.stderr)
    assert line.startswith("ERROR: ")
    assert "--device cuda was asked for, but ONNX Runtime has no CUDA support" in line


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_cuda_provider_that_does_not_start(
    sample_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ONNX Runtime lists CUDA but cannot start it: an error, not a silent run on the CPU."""
    import onnxruntime

    from ind_knn_ad.runtime.detector import PROVIDERS, Detector

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: list(PROVIDERS.values()))
    monkeypatch.setattr(onnxruntime, "InferenceSession", _cpu_only_session(onnxruntime))
    with pytest.raises(ValueError, match="the CUDA provider failed to start"):
        Detector(load_model(sample_model), "cuda")


def _cpu_only_session(onnxruntime):
    """InferenceSession that, like a CUDA build on a machine without a GPU, falls back."""
    real = onnxruntime.InferenceSession

    def session(graph, options, providers):
        return real(graph, options, providers=["CPUExecutionProvider"])

    return session


def test_stderr_holds_only_our_lines_when_home_is_unwritable(
    sample_model: Path, inputs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 13, item 15: ONNX Runtime printed a coloured telemetry warning to stderr when
    it could not write its device ID under HOME. The command turns telemetry off itself,
    so the child starts without the variable, whatever this environment holds."""
    monkeypatch.delenv("ORT_DISABLE_TELEMETRY", raising=False)
    result = scorer("--model", sample_model, "good.png", cwd=inputs, env_update={"HOME": "/proc"})
    assert result.returncode == exit_codes.OK
    assert result.stderr == ""


# --- outputs that cannot be written --------------------------------------------------------


def test_stdout_on_a_full_disk(sample_model: Path, inputs: Path) -> None:
    with open("/dev/full", "w") as full:
        result = scorer("--model", sample_model, "good.png", cwd=inputs, stdout=full)
    assert result.returncode == exit_codes.WRITE_ERROR
    assert error_lines(result.stderr) == [
        "ERROR: cannot write results to stdout: No space left on device"
    ]


def test_stdout_closed_early(sample_model: Path, inputs: Path) -> None:
    """`anomaly_detector.py ... | head -1`: the reader takes one line and goes away. The
    output (~130 kB) is more than a pipe holds, so the tool must still write after that."""
    long_name = "g" * 240 + ".png"
    shutil.copy(inputs / "good.png", inputs / long_name)
    process = subprocess.Popen(
        [sys.executable, ROOT / "anomaly_detector.py", "--model", sample_model] + [long_name] * 500,
        cwd=inputs,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert process.stdout.readline().startswith(long_name.encode())
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait() == exit_codes.WRITE_ERROR
    assert error_lines(stderr) == ["ERROR: cannot write results to stdout: Broken pipe"]


def test_heatmaps_for_long_names_and_one_that_cannot_be_written(
    sample_model: Path, inputs: Path, tmp_path: Path
) -> None:
    """Issue 13, items 4 and 5: a heatmap name of 254 bytes, and one hashed down to 255,
    are written (their temporary names fit too); a FIFO where a heatmap goes is left as it
    is and costs that image alone: the others are scored, and the exit code is 6."""
    from ind_knn_ad.report.heatmap import heatmap_name

    names = ["n" * 250, "d" * 200 + "/" + "h" * 252, "blocked.png", "good.png"]
    (tmp_path / ("d" * 200)).mkdir()
    for name in names:
        shutil.copy(inputs / "good.png", tmp_path / name)
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / heatmap_name("blocked.png"))
    result = scorer("--model", sample_model, "--heatmap", out, *names, cwd=tmp_path)
    assert result.returncode == exit_codes.WRITE_ERROR, result.stderr
    assert [row[0] for row in records(result.stdout)] == [names[0], names[1], names[3]]
    [line] = error_lines(result.stderr)
    assert line == (
        f"ERROR: cannot write heatmap for blocked.png: [Errno 17] is a FIFO, not a regular "
        f"file: refusing to replace it: '{out / 'blocked.png.png'}'"
    )
    folder, hashed = heatmap_name(names[1]).split("/")  # the input's folder, mirrored
    assert folder == "d" * 200 and "~" in hashed and len(hashed.encode()) <= 255
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if not p.is_dir())
    assert written == sorted(heatmap_name(name) for name in names)  # no temporary left
    assert (out / "blocked.png.png").is_fifo()


# --- make_model.py: backbone weights and output folder --------------------------------------

MAKE_MODEL_CASES = [
    (
        "backbone-offline",
        ["--backbone", "wide_resnet50_2"],
        exit_codes.BACKBONE_ERROR,
        "cannot get pretrained weights for backbone 'wide_resnet50_2'.*"
        r"--backbone efficientnet_lite0.*--weights FILE",
    ),
    (
        "weights-not-a-weights-file",
        ["--backbone", "efficientnet_lite0", "--weights", "{tmp}/garbage.pt"],
        exit_codes.BACKBONE_ERROR,
        "garbage.pt: cannot read weights",
    ),
    (
        "output-parent-is-a-file",
        ["--model", "{tmp}/garbage.pt/model.safetensors"],
        exit_codes.WRITE_ERROR,
        "cannot write .*parent is not a folder",
    ),
    (
        "output-is-a-folder",
        ["--model", "{tmp}"],
        exit_codes.WRITE_ERROR,
        "cannot write .*is a directory",
    ),
    (
        "output-is-a-fifo",
        ["--model", "{tmp}/fifo"],
        exit_codes.WRITE_ERROR,
        "cannot write .*fifo: .*is a FIFO, not a regular file: refusing to replace it",
    ),
    (
        "contact-sheet-name-too-long",  # 252 bytes: fits, but not with .contact_sheet.png
        ["--model", "{tmp}/" + "m" * 240 + ".safetensors"],
        exit_codes.WRITE_ERROR,
        r"cannot write .*m\.contact_sheet\.png: .*File name too long",
    ),
    # issue 13, items 2, 7, 8, 12: said up front, in the user's terms, with the table's code
    (
        "one-training-image",
        ["--data-dir", "{tmp}/one"],
        exit_codes.DATA_ERROR,
        "one: 1 training image; a fit needs at least 2",
    ),
    (
        "padim-two-images",
        ["--data-dir", "{tmp}/two", "--method", "padim", "--backbone", "efficientnet_lite0"],
        exit_codes.DATA_ERROR,
        "two: cannot fit on these images \\(PaDiM needs at least 3 training images, not 2\\)",
    ),
    (
        "coreset-too-small",
        ["--backbone", "efficientnet_lite0", "--coreset", "1e-9"],
        exit_codes.USAGE,
        "--coreset 1e-09 keeps 1 of about 31360 patches: a one-patch bank tells nothing "
        "apart, .*needs at least 2. Use a coreset of 6.4e-05 or more, or a fixed threshold",
    ),
    (
        "layers-out-of-range",
        ["--backbone", "efficientnet_lite0", "--layers", "2", "9"],
        exit_codes.USAGE,
        r"--layers 9: backbone efficientnet_lite0 has stages 0 to 4 \(default: 2 3\)",
    ),
    (
        # Not in the registry: its stages come from timm's architecture (no weights).
        "layers-out-of-range-timm-backbone",
        ["--settings", "fixed", "--backbone", "resnet18", "--layers", "2", "7"],
        exit_codes.USAGE,
        r"--layers 7: backbone resnet18 has stages 0 to 4 \(default: 2 3\)",
    ),
    ("negative-seed", ["--seed", "-1"], exit_codes.USAGE, "--seed must be a whole number from 0"),
    (
        "input-too-large",
        ["--image-size", "100000", "--crop", "100000"],
        exit_codes.USAGE,
        "--crop 100000 .*: a 100000x100000 px input needs about .* GB per image, more than",
    ),
    (
        "aligned-input-too-large",
        ["--backbone", "efficientnet_lite0", "--image-size", "100000", "--align"],
        exit_codes.USAGE,
        "--image-size 100000 with --align: a .* px input needs about .* GB per image",
    ),
    (
        "batch-size-zero",
        ["--batch-size", "0"],
        exit_codes.USAGE,
        "must be a positive whole number, not '0'",
    ),
]


@pytest.fixture(scope="module")
def make_model_results(
    sample_dataset: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, subprocess.CompletedProcess]:
    """All make_model.py cases at once (each pays for importing torch). The hub is offline
    and its caches empty, as on a machine without network."""
    tmp = tmp_path_factory.mktemp("make_model")
    (tmp / "garbage.pt").write_bytes(b"this is not a weights file\n")
    os.mkfifo(tmp / "fifo")
    (tmp / "one" / "train" / "good").mkdir(parents=True)
    shutil.copy(sample_dataset / "train" / "good" / "000.png", tmp / "one" / "train" / "good")
    shutil.copytree(tmp / "one", tmp / "two")
    shutil.copy(sample_dataset / "train" / "good" / "001.png", tmp / "two" / "train" / "good")
    offline = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp / "hf"), "TORCH_HOME": str(tmp / "th")}

    def run(case: tuple) -> subprocess.CompletedProcess:
        options = [part.format(tmp=tmp) for part in case[1]]
        if "--model" not in options:
            options += ["--model", str(tmp / f"{case[0]}.safetensors")]
        return subprocess.run(
            [sys.executable, "make_model.py", "--data-dir", str(sample_dataset), *options],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT), **offline},
        )

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = pool.map(run, MAKE_MODEL_CASES)
        return {case[0]: result for case, result in zip(MAKE_MODEL_CASES, results, strict=True)}


@pytest.mark.parametrize(
    ("case", "code", "message"),
    [(c[0], *c[2:]) for c in MAKE_MODEL_CASES],
    ids=[c[0] for c in MAKE_MODEL_CASES],
)
def test_make_model_errors(
    make_model_results: dict[str, subprocess.CompletedProcess], case: str, code: int, message: str
) -> None:
    result = make_model_results[case]
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    assert "Model written" not in result.stdout
    text = " ".join(result.stderr.split())  # rich wraps long lines at 80 columns
    assert re.search(f"error: .*{message}", text), text


def test_no_network_fails_with_what_to_do_instead(sample_dataset: Path, tmp_path: Path) -> None:
    """Issue 13, item 15: offline, the fixed settings' backbone says what to use instead
    (exit 5). (The automatic settings choose among offline backbones.)"""
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
        pytest.skip("the weights host is reachable from here")
    except OSError:
        pass
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    command = [sys.executable, "make_model.py", "--settings", "fixed", "--data-dir"]
    result = subprocess.run(
        [*command, sample_dataset, "--model", tmp_path / "m"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**env, "PYTHONPATH": str(ROOT), "HF_HOME": str(tmp_path / "hf")},
    )
    assert result.returncode == exit_codes.BACKBONE_ERROR, result.stderr
    assert "cannot get pretrained weights for backbone 'wide_resnet50_2'" in result.stderr


@pytest.mark.parametrize("listening", [False, True])
def test_an_unreachable_weights_host_keeps_the_hub_offline(
    listening: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What makes the message above come at once, not after the hub's 53 s of retries: a
    fit that may download is told to stay offline when the host does not answer, and only
    then."""
    import socket

    from ind_knn_ad.cli import fit

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    if listening:
        server.listen()
    monkeypatch.setattr(fit, "WEIGHTS_HOST", server.getsockname())
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with server:
        fit.offline_unless_reachable(fit.parse_args(["--settings", "fixed", "--model", "m"]))
    assert os.environ.get("HF_HUB_OFFLINE") == (None if listening else "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def test_bad_masks_cost_only_their_pixel_metric(
    sample_model: Path, sample_dataset: Path, tmp_path: Path
) -> None:
    """Issue 13, item 6: a mask that is not an image, and one of the wrong size, each get
    a warning line naming them and are left out of the pixel ROC AUC; the evaluation still
    completes, with both images in the image metrics."""
    data = tmp_path / "data"
    shutil.copytree(sample_dataset, data)
    masks = sorted((data / "ground_truth").rglob("*_mask.png"))
    garbage, small = masks[0], masks[1]
    garbage.write_bytes(b"not a PNG at all\n")
    Image.new("L", (10, 10), 255).save(small)
    model = tmp_path / "model.safetensors"
    shutil.copy(sample_model, model)
    result = subprocess.run(
        [sys.executable, "make_model.py", "--data-dir", data, "--model", model, "--evaluate-only"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == exit_codes.OK, result.stderr
    warnings_ = [line for line in error_lines(result.stderr) if line.startswith("warning: ")]
    assert warnings_ == [
        f"warning: {garbage}: not an image file (or an unsupported format); left out of the "
        "pixel ROC AUC",
        f"warning: {small}: mask is 10x10, its image 256x256; left out of the pixel ROC AUC",
    ]
    results = json.loads(model.with_name("model.results.data.json").read_text())  # not its fit's
    assert results["pixel_rocauc"] is not None
    assert len(results["images"]) == len(list((data / "test").rglob("*.png")))


def test_the_readme_command_runs_with_any_python3_on_path(sample_model: Path, inputs: Path) -> None:
    """Issue 13, item 14: `./anomaly_detector.py IMAGE` as the README writes it, with a
    python3 on PATH that lacks the dependencies: the script runs itself again with the
    project's venv and scores; where that cannot be, one line says what to do (exit 2)."""
    bare = {"PATH": "/usr/bin:/bin"}
    probe = subprocess.run(
        ["/usr/bin/env", "python3", "-c", "import numpy"], env=bare, capture_output=True
    )
    if probe.returncode == 0 or not (ROOT / ".venv" / "bin" / "python").is_file():
        pytest.skip("needs a python3 on PATH without NumPy, and the project's .venv")
    command = [ROOT / "anomaly_detector.py", "--model", sample_model, "good.png"]
    result = subprocess.run(command, cwd=inputs, env=bare, capture_output=True, text=True)
    assert result.returncode == exit_codes.OK, result.stderr
    assert result.stdout.startswith("good.png,") and result.stderr == ""
    stuck = subprocess.run(
        command,
        cwd=inputs,
        env={**bare, "IND_KNN_AD_RESTARTED": "1"},  # as if there were no venv to run
        capture_output=True,
        text=True,
    )
    assert stuck.returncode == exit_codes.USAGE and stuck.stdout == ""
    [line] = error_lines(stuck.stderr)
    assert line.startswith("anomaly_detector.py: this Python (") and "run `make demo`" in line


def test_fuzzed_model_files_through_the_tool(
    sample_model: Path, inputs: Path, tmp_path: Path
) -> None:
    """A few cases of the model-loader fuzz target (tests/fuzzing.py) through the real
    command line: the original's output exactly, or one line and exit code 3."""
    import random

    from fuzzing import mutate_model

    expected = scorer("--model", sample_model, "good.png", cwd=inputs)
    assert expected.returncode == exit_codes.OK
    rng, original = random.Random(7), sample_model.read_bytes()
    for case in range(10):
        kind, data = mutate_model(rng, original)
        target = tmp_path / f"case{case}.safetensors"
        target.write_bytes(data)
        result = scorer("--model", target, "good.png", cwd=inputs)
        if result.returncode == exit_codes.OK and kind != "settings-unprotected":
            assert result.stdout == expected.stdout, kind
            continue
        if result.returncode == exit_codes.OK:  # an old-style file with a valid change
            records(result.stdout)
            continue
        assert result.returncode == exit_codes.MODEL_ERROR, (kind, result.stderr)
        [line] = error_lines(result.stderr)
        assert line.startswith(f"ERROR: {target}: "), (kind, line)


def test_every_library_error_has_an_exit_code() -> None:
    """Each error class of the library is reported as one line with a code, not as a
    traceback: a class added to ind_knn_ad.errors without a code fails here."""
    from ind_knn_ad import errors

    kinds = [
        kind
        for kind in vars(errors).values()
        if isinstance(kind, type)
        and issubclass(kind, Exception)
        and kind.__module__ == errors.__name__
    ]
    assert len(kinds) >= 7
    for kind in kinds:
        assert exit_codes.exit_code(kind("x")) in (2, 3, 4, 5, 6), kind
