"""A small synthetic dataset in MVTec AD layout, so the tool can be tried and tested offline.

The part is a dark metallic nut with four lobes, each carrying a notch on one side: it is
chiral, so a mirrored part is a genuine defect and not just another good pose. Good images
vary slightly (position, rotation, brightness, noise) so that a model must generalise, while
the defects are large enough for PatchCore to flag every one of them.

NumPy and Pillow only, and no font rendering, so the output is byte-identical between runs
with the same seed and generating it takes a fraction of a second per image.
"""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

DEFECT_KINDS: tuple[str, ...] = ("scratch", "color", "bent", "flip")

# Geometry in pixels of a 256 px image; everything scales with the requested size.
_BASE = 256.0
_BODY_RADIUS = 62.0
_LOBE_RADIUS = 92.0
_HOLE_RADIUS = 26.0
_COLLAR_RADIUS = 38.0
# One lobe's outline over its 90-degree sector, as (fraction of the sector, radius as a
# fraction of the way from body to lobe tip). The small tooth and notch after the main lobe
# make the part chiral.
_LOBE_PROFILE = (
    (0.00, 0.00),
    (0.08, 0.00),
    (0.20, 0.92),
    (0.26, 1.00),
    (0.46, 1.00),
    (0.50, 0.45),
    (0.55, 0.45),
    (0.58, 0.78),
    (0.64, 0.78),
    (0.70, 0.00),
    (1.00, 0.00),
)
# A bent lobe keeps this fraction of its length, leans by this fraction of its sector, and
# is this much darker because its face is tilted away from the camera and the light.
_BENT_LENGTH = 0.5
_BENT_LEAN = 0.15
_BENT_SHADE = 0.55
_SUPERSAMPLE = 4
_LIGHT = np.array([-0.6, -0.8])  # from the upper left, in image (x, y) coordinates
_TINT = np.array([0.96, 0.98, 1.03])  # a faintly blue steel grey
_MAX_SHIFT = 4.0
_MAX_ROTATION = 3.0
_MAX_BRIGHTNESS = 0.05
_NOISE_SIGMA = 2.0 / 255.0


def _outline(
    center: tuple[float, float], angle: float, scale: float, bent_lobe: int | None = None
) -> list[tuple[float, float]]:
    """The outer contour as a polygon; `bent_lobe` folds that lobe's tip down and sideways."""
    phases, heights = np.array(_LOBE_PROFILE).T
    turns = np.arange(720) / 720.0
    lobe, phase = np.divmod(4.0 * turns, 1.0)
    radius = _BODY_RADIUS + np.interp(phase, phases, heights) * (_LOBE_RADIUS - _BODY_RADIUS)
    if bent_lobe is not None:
        # Folded out of plane and pushed over: seen from above, the lobe looks shorter and
        # leans sideways, the kind of damage a dropped part gets.
        bent = np.interp(phase - _BENT_LEAN, phases, heights) * _BENT_LENGTH
        bent_radius = _BODY_RADIUS + bent * (_LOBE_RADIUS - _BODY_RADIUS)
        radius = np.where(lobe == bent_lobe, bent_radius, radius)
    theta = 2.0 * math.pi * turns + angle
    xs = center[0] + scale * radius * np.cos(theta)
    ys = center[1] + scale * radius * np.sin(theta)
    return list(zip(xs.tolist(), ys.tolist(), strict=True))


def _silhouette(
    size: int, polygon: list[tuple[float, float]], pose: dict | None = None
) -> np.ndarray:
    """Anti-aliased coverage in [0, 1], drawn supersampled so edges are smooth but exact.

    With a pose, the central hole is cut out of the shape.
    """
    s = _SUPERSAMPLE

    def draw_shape(draw: ImageDraw.ImageDraw) -> None:
        draw.polygon([(x * s, y * s) for x, y in polygon], fill=255)
        if pose is not None:
            hole = _HOLE_RADIUS * pose["scale"]
            _ellipse(draw, pose["center"], hole, hole, fill=0)

    return _mask_image(size, draw_shape)


def _ellipse(
    draw: ImageDraw.ImageDraw, center: tuple[float, float], rx: float, ry: float, fill: int
) -> None:
    """An axis-aligned ellipse on a supersampled canvas, given in output pixel units."""
    cx, cy = center[0] * _SUPERSAMPLE, center[1] * _SUPERSAMPLE
    rx, ry = rx * _SUPERSAMPLE, ry * _SUPERSAMPLE
    draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=fill)


def _render_part(
    size: int, rng: np.random.Generator, bent_lobe: int | None = None
) -> tuple[np.ndarray, dict]:
    """A good (or bent) part on a dark background, float RGB in [0, 1], and its pose."""
    scale = size / _BASE
    center = (
        size / 2.0 + rng.uniform(-_MAX_SHIFT, _MAX_SHIFT) * scale,
        size / 2.0 + rng.uniform(-_MAX_SHIFT, _MAX_SHIFT) * scale,
    )
    angle = math.radians(rng.uniform(-_MAX_ROTATION, _MAX_ROTATION))
    brightness = 1.0 + rng.uniform(-_MAX_BRIGHTNESS, _MAX_BRIGHTNESS)
    pose = {"center": center, "angle": angle, "scale": scale}

    outline = _outline(center, angle, scale, bent_lobe)
    coverage = _silhouette(size, outline, pose)
    collar = _silhouette(size, _circle(center, _COLLAR_RADIUS * scale), pose)

    xs, ys = _pixel_grid(size)
    dx, dy = xs - center[0], ys - center[1]
    r = np.hypot(dx, dy) / scale
    # Lit bevels: the gradient of a blurred silhouette points across each edge, and its
    # agreement with the light direction brightens edges facing the light.
    relief = coverage + 0.6 * collar
    gy, gx = np.gradient(_blur(relief / 1.6, 2.0 * scale) * 1.6)
    bevel = -(gx * _LIGHT[0] + gy * _LIGHT[1]) / scale
    # A broad highlight across the face plus fine turning marks, as on a machined part.
    sheen = (dx * _LIGHT[0] + dy * _LIGHT[1]) / (_LOBE_RADIUS * scale)
    turning = np.cos(2.0 * math.pi * r / 3.2) * np.exp(-(((r - 50.0) / 30.0) ** 2))
    grain = _blur(rng.normal(0.5, 0.16, (size, size)), 1.2 * scale) - 0.5
    metal = 0.34 + 0.08 * sheen + 0.10 * collar + 0.025 * turning + 0.38 * grain + 2.2 * bevel
    if bent_lobe is not None:
        metal *= 1.0 - (1.0 - _BENT_SHADE) * _lobe_region(pose, xs, ys, bent_lobe)
    metal = np.clip(metal * brightness, 0.0, 1.0)
    background = 0.045 + 0.01 * np.exp(-(((r - 110.0) / 40.0) ** 2))
    gray = coverage * metal + (1.0 - coverage) * background
    return gray[..., None] * _TINT, pose


def _lobe_region(pose: dict, xs: np.ndarray, ys: np.ndarray, lobe: int) -> np.ndarray:
    """Weight in [0, 1] of one lobe's sector outside the body ring, with a soft fold line."""
    dx, dy = xs - pose["center"][0], ys - pose["center"][1]
    theta = np.mod(np.arctan2(dy, dx) - pose["angle"], 2.0 * math.pi)
    in_sector = np.floor(theta / (math.pi / 2.0)) == lobe
    r = np.hypot(dx, dy) / pose["scale"]
    return in_sector * np.clip((r - _BODY_RADIUS) / 2.0, 0.0, 1.0)


def _circle(center: tuple[float, float], radius: float) -> list[tuple[float, float]]:
    """A circle as a polygon, so the collar shares the silhouette's drawing path."""
    theta = np.linspace(0.0, 2.0 * math.pi, 180, endpoint=False)
    xs = center[0] + radius * np.cos(theta)
    ys = center[1] + radius * np.sin(theta)
    return list(zip(xs.tolist(), ys.tolist(), strict=True))


def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y), in the same frame as the drawn polygons."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    return xs, ys


def _face_point(pose: dict, rng: np.random.Generator) -> tuple[float, float]:
    """A random point on the solid ring of metal between the collar and the lobes."""
    radius = rng.uniform(_COLLAR_RADIUS + 10.0, _BODY_RADIUS - 6.0) * pose["scale"]
    theta = rng.uniform(0.0, 2.0 * math.pi)
    return (
        pose["center"][0] + radius * math.cos(theta),
        pose["center"][1] + radius * math.sin(theta),
    )


def _blur(values: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of values in [0, 1], through Pillow so no SciPy is needed (8-bit)."""
    image = Image.fromarray(np.round(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8))
    return np.asarray(image.filter(ImageFilter.GaussianBlur(sigma)), dtype=np.float64) / 255.0


def _mask_image(size: int, draw_shape: Callable[[ImageDraw.ImageDraw], None]) -> np.ndarray:
    """A shape drawn supersampled, as coverage in [0, 1]."""
    canvas = Image.new("L", (size * _SUPERSAMPLE, size * _SUPERSAMPLE), 0)
    draw_shape(ImageDraw.Draw(canvas))
    return np.asarray(canvas.reduce(_SUPERSAMPLE), dtype=np.float64) / 255.0


def _part_coverage(size: int, pose: dict) -> np.ndarray:
    """Where the (unbent) part's metal is, with the hole cut out."""
    outline = _outline(pose["center"], pose["angle"], pose["scale"])
    return _silhouette(size, outline, pose)


def _scratch(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A bright thin line across the face; the mask is the line widened by a few pixels."""
    image, pose = _render_part(size, rng)
    scale = pose["scale"]
    mid = _face_point(pose, rng)
    # Roughly tangential so the whole line stays on metal rather than crossing the hole.
    radial = math.atan2(mid[1] - pose["center"][1], mid[0] - pose["center"][0])
    direction = radial + math.pi / 2.0 + rng.uniform(-0.4, 0.4)
    half = rng.uniform(24.0, 32.0) * scale
    s = _SUPERSAMPLE
    step = (half * math.cos(direction), half * math.sin(direction))
    ends = [((mid[0] - step[0]) * s, (mid[1] - step[1]) * s)]
    ends.append(((mid[0] + step[0]) * s, (mid[1] + step[1]) * s))
    metal = _part_coverage(size, pose)
    line = metal * _mask_image(
        size, lambda d: d.line(ends, fill=255, width=max(1, round(2.5 * scale * s)))
    )
    region = _mask_image(size, lambda d: d.line(ends, fill=255, width=round(9 * scale * s)))
    image = image * (1.0 - line[..., None]) + 0.95 * line[..., None]
    return image, region * metal


def _color(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A red or blue stain on the face, soft-edged like paint or dye."""
    image, pose = _render_part(size, rng)
    scale = pose["scale"]
    center = _face_point(pose, rng)
    rx, ry = rng.uniform(8.0, 12.0, size=2) * scale
    colour = np.array([0.80, 0.12, 0.10]) if rng.random() < 0.5 else np.array([0.12, 0.28, 0.85])
    spot = _part_coverage(size, pose) * _mask_image(
        size, lambda d: _ellipse(d, center, rx, ry, fill=255)
    )
    soft = _blur(spot, scale)[..., None]
    # Keep some of the metal's shading under the stain so it reads as a surface mark.
    stained = colour * (0.6 + 0.8 * image.mean(axis=2, keepdims=True))
    return image * (1.0 - 0.9 * soft) + 0.9 * soft * stained, spot


def _bent(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One lobe folded over; the mask covers that lobe and where its outline used to be."""
    lobe = int(rng.integers(4))
    image, pose = _render_part(size, rng, bent_lobe=lobe)
    center, angle, scale = pose["center"], pose["angle"], pose["scale"]
    either = np.maximum(
        _silhouette(size, _outline(center, angle, scale)),
        _silhouette(size, _outline(center, angle, scale, lobe)),
    )
    xs, ys = _pixel_grid(size)
    lobe_part = (either >= 0.5) & (_lobe_region(pose, xs, ys, lobe) > 0.5)
    region = Image.fromarray(lobe_part.astype(np.uint8) * 255).filter(
        ImageFilter.MaxFilter(2 * round(2 * scale) + 1)
    )
    return image, np.asarray(region, dtype=np.float64) / 255.0


def _flip(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The part upside down, i.e. mirrored; the mask is the whole part."""
    image, pose = _render_part(size, rng)
    mirrored = image[:, ::-1]
    outline = _outline(pose["center"], pose["angle"], pose["scale"])
    whole = _silhouette(size, [(size - x, y) for x, y in outline])
    return mirrored, whole


_DEFECTS: dict[str, Callable[[int, np.random.Generator], tuple[np.ndarray, np.ndarray]]] = {
    "scratch": _scratch,
    "color": _color,
    "bent": _bent,
    "flip": _flip,
}


def _finish(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sensor noise and 8-bit quantisation."""
    noisy = image + rng.normal(0.0, _NOISE_SIGMA, image.shape)
    return np.round(np.clip(noisy, 0.0, 1.0) * 255.0).astype(np.uint8)


def _write(path: Path, pixels: np.ndarray, mode: str) -> None:
    """Save a PNG; on noisy images higher compression levels are 3x slower and barely smaller."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode).save(path, compress_level=1)


def _build(
    out: Path, n_train: int, n_test_good: int, n_test_defect: int, size: int, seed: int
) -> None:
    """Write every image and mask under `out`.

    Each image has its own generator keyed by (seed, group, index), so changing one count
    leaves all the other images as they were.
    """
    groups: list[tuple[str, int, str | None]] = [
        ("train/good", n_train, None),
        ("test/good", n_test_good, None),
        *((f"test/{kind}", n_test_defect, kind) for kind in DEFECT_KINDS),
    ]
    for group, (folder, count, kind) in enumerate(groups):
        for index in range(count):
            rng = np.random.default_rng([seed, group, index])
            if kind is None:
                image = _render_part(size, rng)[0]
            else:
                image, mask = _DEFECTS[kind](size, rng)
                binary = np.where(mask >= 0.5, 255, 0).astype(np.uint8)
                _write(out / "ground_truth" / kind / f"{index:03d}_mask.png", binary, "L")
            _write(out / folder / f"{index:03d}.png", _finish(image, rng), "RGB")


def generate_sample_dataset(
    root: Path,
    name: str = "metal_nut_sample",
    n_train: int = 40,
    n_test_good: int = 4,
    n_test_defect: int = 3,
    size: int = 256,
    seed: int = 0,
) -> Path:
    """Write the dataset to root/name and return that path.

    It is built in a hidden folder beside the target and moved into place only when
    complete, so an interrupted run never leaves a half-written dataset that looks usable.
    An existing root/name is replaced.
    """
    if not name or name in (".", "..") or Path(name).name != name:
        raise ValueError(f"name must be a plain folder name, got {name!r}")
    if n_train < 1 or n_test_good < 0 or n_test_defect < 0:
        raise ValueError("n_train must be at least 1 and the test counts non-negative")
    if size < 64:
        raise ValueError(f"size must be at least 64 pixels, got {size}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    target = root / name
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.new-", dir=root))
    try:
        _build(staging, n_train, n_test_good, n_test_defect, size, seed)
        if target.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{name}.old-", dir=root))
            target.rename(retired / name)
            staging.rename(target)
            shutil.rmtree(retired)
        else:
            staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m ind_knn_ad.io.sample_data",
        description="Write a small synthetic metal-nut dataset in MVTec AD layout.",
    )
    parser.add_argument("out_dir", type=Path, help="folder to create the dataset in")
    parser.add_argument("--name", default="metal_nut_sample", help="dataset folder name")
    parser.add_argument("--seed", type=int, default=0, help="random seed (non-negative)")
    args = parser.parse_args(argv)
    try:
        path = generate_sample_dataset(args.out_dir, name=args.name, seed=args.seed)
    except (ValueError, OSError) as error:
        parser.exit(2, f"error: {error}\n")
    print(path)


if __name__ == "__main__":
    main()
