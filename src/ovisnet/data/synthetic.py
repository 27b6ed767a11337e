"""A synthetic occluded-VIS world written in the real OVIS / YouTube-VIS layout.

The generator renders short videos of textured shapes that move, rotate, breathe in size, leave and
re-enter the frame, and pass in front of and behind each other and a static occluder (a brick
pillar, sometimes a low wall). Everything is written exactly like an OVIS release::

    OUT/JPEGImages/video_0001/00000.jpg ...
    OUT/annotations/train.json
    OUT/annotations/valid.json

Both JSON files carry annotations (``valid.json`` is the held-out split for local evaluation). Each
annotation is one object track with per-frame uncompressed RLE ``segmentations``, ``bboxes``
``[x, y, w, h]``, ``areas`` and ``occlusion`` labels, or ``null`` in frames where the object has no
visible pixel.

Semantics of the labels:

* A mask is the *visible* part of an object: its in-frame silhouette minus every object in front
  of it and minus the occluder (which is in front of all objects). Masks of one frame are disjoint.
* The occlusion label uses the OVIS definitions on the true visible fraction
  ``visible area / in-frame amodal area``: 1 is ``no_occlusion``, above 0.5 is
  ``slight_occlusion``, anything else is ``severe_occlusion``. The denominator is the in-frame part
  of the unoccluded silhouette, so truncation by the image border is *not* occlusion (OVIS labels
  occlusion by objects and scene); an object cut by the border and hidden by nothing is
  ``no_occlusion``.
* An object with no visible pixel (fully hidden or out of frame) is absent: its segmentation, box,
  area and occlusion are ``null`` in that frame. Its id is kept when it re-appears.

Six categories are told apart by shape, colour and texture (:data:`CATEGORIES`). Most objects
of a video move inside a "crowd" box, so they overlap a lot (OVIS-like mBOR); the others roam and
cross or leave the frame. A video's content depends only on the seed, its id, the frame count and
size (:func:`video_scene`), so ``valid_fraction`` only decides which file a video goes to. Output
is byte-identical for identical arguments (per-video NumPy generators, deterministic JPEG encoding).

Default set (``python -m ovisnet.data.synthetic --out DIR``): 60 videos of 24 frames at 320x192;
videos 1-48 form ``train.json``, 49-60 ``valid.json`` (``valid_fraction=0.2``). That is 1,440
JPEGs (about 22 MB at quality 85), small enough to train a small Mask R-CNN on CPU, long enough
for reference-frame sampling and tracking, and generated in about 10 s of CPU time. Measured on
it (``python -m ovisnet.stats``): mBOR 0.31 / 0.38 (train / valid; OVIS 0.22), 6.9 / 6.4
objects per frame (OVIS 4.72), occlusion no / slight / severe 26 / 33 / 41 % (train), and about
one track in nine re-appears after being fully hidden in frame.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ovisnet.data.annotations import OCCLUSION_LEVELS

__all__ = [
    "CATEGORIES",
    "CategorySpec",
    "RenderedFrame",
    "Scene",
    "SceneConfig",
    "SceneObject",
    "generate",
    "main",
    "mask_bbox",
    "occlusion_level",
    "render_frame",
    "rle_uncompressed",
    "sample_scene",
    "video_scene",
]

_TWO_PI = 2.0 * math.pi


@dataclass(frozen=True)
class CategorySpec:
    """One synthetic category: a shape with its own colour and texture.

    Attributes:
        id: Category id written to the JSON (1-based, like OVIS).
        name: Category name (the shape).
        colour: Base RGB colour; every object jitters it slightly.
        accent: RGB colour of the texture pattern.
        texture: Pattern painted in the object's own (rotating) frame.
    """

    id: int
    name: str
    colour: tuple[int, int, int]
    accent: tuple[int, int, int]
    texture: str


CATEGORIES: tuple[CategorySpec, ...] = (
    CategorySpec(1, "disc", (205, 40, 40), (250, 225, 215), "dots"),
    CategorySpec(2, "square", (45, 85, 215), (15, 20, 80), "stripes"),
    CategorySpec(3, "triangle", (45, 175, 60), (15, 75, 25), "radial"),
    CategorySpec(4, "star", (240, 205, 40), (110, 70, 10), "checker"),
    CategorySpec(5, "ring", (200, 50, 190), (255, 190, 245), "spokes"),
    CategorySpec(6, "cross", (40, 200, 215), (10, 65, 90), "hatch"),
)

# Every shape lies inside this many radii of its centre (square corners, star tips).
_EXTENT = 1.08


@dataclass(frozen=True)
class SceneConfig:
    """Knobs of the scene sampler. Lengths are fractions of the frame height unless noted.

    Attributes:
        objects_per_video: Inclusive range of the number of objects in a video.
        radius: Range of the object radius (circumradius of the shape).
        speed: Range of the initial speed, fraction of the frame height per frame.
        accel_std: Standard deviation of the random velocity change per frame (same unit).
        spin_std: Standard deviation of the angular velocity, radians per frame.
        breathe: Maximum relative amplitude of the slow size oscillation.
        crowd_fraction: Probability that an object belongs to the crowd: its centre bounces inside
            the video's crowd box. Other objects roam the whole frame and beyond.
        crowd_extent: Range of the crowd box size, fraction of the frame width and height.
        roam_margin: Range of how far (in radii) a roaming object's centre may go past the frame
            border before it bounces; above ``_EXTENT`` the object can leave the frame entirely.
        pillar_width: Range of the width of the static pillar occluder.
        wall_probability: Probability of a second occluder, a low wall along the bottom.
        wall_height: Range of the wall height.
        frame_noise_std: Standard deviation of the per-frame pixel noise (0-255 scale).
        jpeg_quality: JPEG quality of the frames.
    """

    objects_per_video: tuple[int, int] = (5, 9)
    radius: tuple[float, float] = (0.11, 0.22)
    speed: tuple[float, float] = (0.012, 0.04)
    accel_std: float = 0.003
    spin_std: float = 0.05
    breathe: float = 0.12
    crowd_fraction: float = 0.8
    crowd_extent: tuple[float, float] = (0.3, 0.5)
    roam_margin: tuple[float, float] = (0.3, 1.8)
    pillar_width: tuple[float, float] = (0.16, 0.28)
    wall_probability: float = 0.35
    wall_height: tuple[float, float] = (0.14, 0.22)
    frame_noise_std: float = 3.0
    jpeg_quality: int = 85


@dataclass
class SceneObject:
    """One object track of a scene with its full trajectory.

    Attributes:
        category: Index into :data:`CATEGORIES`.
        colour: Jittered base RGB colour (float, 0-255).
        cx: Centre x per frame, pixels.
        cy: Centre y per frame, pixels.
        angle: Rotation per frame, radians.
        radius: Radius per frame, pixels.
    """

    category: int
    colour: np.ndarray
    cx: np.ndarray
    cy: np.ndarray
    angle: np.ndarray
    radius: np.ndarray


@dataclass
class Scene:
    """A video's static parts and its objects, back to front.

    Attributes:
        background: (H, W, 3) float32 background image.
        occluder: (H, W) bool mask of the static occluder, drawn in front of every object.
        occluder_rgb: (H, W, 3) float32 colour of the occluder (used where ``occluder`` is set).
        objects: Objects in depth order: later objects are drawn over earlier ones.
        light: Unit 2-vector of the light direction for object shading.
    """

    background: np.ndarray
    occluder: np.ndarray
    occluder_rgb: np.ndarray
    objects: list[SceneObject]
    light: np.ndarray

    @property
    def size(self) -> tuple[int, int]:
        """Frame size as (W, H)."""
        return self.background.shape[1], self.background.shape[0]


@dataclass
class RenderedFrame:
    """One rendered frame.

    Attributes:
        image: (H, W, 3) uint8 RGB image.
        masks: (N, H, W) bool visible masks, in the order of ``Scene.objects``.
        amodal_areas: (N,) in-frame pixel counts of the unoccluded silhouettes.
    """

    image: np.ndarray
    masks: np.ndarray
    amodal_areas: np.ndarray


def occlusion_level(visible_area: int, amodal_area: int) -> str | None:
    """OVIS occlusion label of an object from its visible and in-frame amodal areas.

    Args:
        visible_area: Number of visible pixels.
        amodal_area: Number of in-frame pixels of the unoccluded silhouette.

    Returns:
        ``"no_occlusion"`` if fully visible, ``"slight_occlusion"`` if more than half is visible,
        ``"severe_occlusion"`` otherwise, and ``None`` if nothing is visible (absent).
    """
    if visible_area <= 0 or amodal_area <= 0:
        return None
    if visible_area > amodal_area:
        raise ValueError(f"visible area {visible_area} exceeds amodal area {amodal_area}")
    if visible_area == amodal_area:
        return OCCLUSION_LEVELS[0]
    if 2 * visible_area > amodal_area:
        return OCCLUSION_LEVELS[1]
    return OCCLUSION_LEVELS[2]


def rle_uncompressed(mask: np.ndarray) -> dict:
    """Encode a binary mask as COCO uncompressed RLE.

    Args:
        mask: (H, W) array, non-zero where the object is.

    Returns:
        ``{"size": [H, W], "counts": [...]}`` with run lengths over the column-major pixel order,
        starting with a (possibly empty) run of zeros.
    """
    h, w = mask.shape
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts.insert(0, 0)
    return {"size": [h, w], "counts": counts}


def mask_bbox(mask: np.ndarray) -> list[int] | None:
    """Tight ``[x, y, w, h]`` box of a binary mask in pixels (COCO convention), or None if empty."""
    cols = np.flatnonzero(mask.any(axis=0))
    if cols.size == 0:
        return None
    rows = np.flatnonzero(mask.any(axis=1))
    x0, x1, y0, y1 = int(cols[0]), int(cols[-1]), int(rows[0]), int(rows[-1])
    return [x0, y0, x1 - x0 + 1, y1 - y0 + 1]


def _shape_mask(name: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test of a unit-radius shape at object coordinates (u, v) (radius units)."""
    if name == "disc":
        return u * u + v * v <= 1.0
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.76
    if name == "triangle":
        s = 1.08  # circumradius; one vertex points along -v
        r3 = math.sqrt(3.0)
        return (v <= 0.5 * s) & (r3 * u - v <= s) & (-r3 * u - v <= s)
    if name == "star":
        outer, inner, sector = 1.08, 0.5, _TWO_PI / 5.0
        phi = np.mod(np.arctan2(v, u), sector)
        phi = np.minimum(phi, sector - phi)
        rho = np.hypot(u, v)
        px, py = rho * np.cos(phi), rho * np.sin(phi)
        bx, by = inner * math.cos(sector / 2.0), inner * math.sin(sector / 2.0)
        return (bx - outer) * py - by * (px - outer) >= 0.0
    if name == "ring":
        rr = u * u + v * v
        return (rr <= 1.0) & (rr >= 0.5 * 0.5)
    if name == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.34) & (av <= 1.0)) | ((av <= 0.34) & (au <= 1.0))
    raise ValueError(f"unknown shape {name!r}")


def _texture(name: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Accent weight in [0, 1] of a texture at object coordinates (u, v) (radius units)."""
    if name == "dots":
        p = 0.46
        du, dv = np.mod(u, p) - p / 2, np.mod(v, p) - p / 2
        return (du * du + dv * dv <= 0.13**2).astype(np.float32)
    if name == "stripes":
        return (np.mod(np.floor(u / 0.26), 2) == 0).astype(np.float32)
    if name == "radial":
        return np.clip((np.hypot(u, v) - 0.15) / 0.9, 0.0, 1.0).astype(np.float32)
    if name == "checker":
        return (np.mod(np.floor(u / 0.36) + np.floor(v / 0.36), 2) == 0).astype(np.float32)
    if name == "spokes":
        return (np.mod(np.floor(np.arctan2(v, u) / (math.pi / 4.0)), 2) == 0).astype(np.float32)
    if name == "hatch":
        return (np.mod(np.floor((u + v) / 0.3), 2) == 0).astype(np.float32)
    raise ValueError(f"unknown texture {name!r}")


def _render_object(
    obj: SceneObject, t: int, size: tuple[int, int], light: np.ndarray
) -> tuple[tuple[int, int, int, int], np.ndarray, np.ndarray] | None:
    """Rasterise one object in frame ``t`` on its in-frame bounding crop.

    Returns:
        ``((y0, y1, x0, x1), mask, rgb)`` with the crop's bool mask and float RGB, or None when the
        object's crop does not touch the frame.
    """
    w, h = size
    cx, cy, r, a = float(obj.cx[t]), float(obj.cy[t]), float(obj.radius[t]), float(obj.angle[t])
    reach = _EXTENT * r + 1.0
    x0, x1 = max(0, math.floor(cx - reach)), min(w, math.ceil(cx + reach) + 1)
    y0, y1 = max(0, math.floor(cy - reach)), min(h, math.ceil(cy + reach) + 1)
    if x0 >= x1 or y0 >= y1:
        return None
    dx = (np.arange(x0, x1, dtype=np.float64) + 0.5 - cx)[None, :]
    dy = (np.arange(y0, y1, dtype=np.float64) + 0.5 - cy)[:, None]
    ca, sa = math.cos(a), math.sin(a)
    u = (ca * dx + sa * dy) / r
    v = (-sa * dx + ca * dy) / r
    spec = CATEGORIES[obj.category]
    mask = _shape_mask(spec.name, u, v)
    weight = _texture(spec.texture, u, v)[..., None]
    accent = np.asarray(spec.accent, dtype=np.float32)
    rgb = obj.colour.astype(np.float32) * (1.0 - weight) + accent * weight
    shade = 1.0 + 0.18 * (light[0] * dx + light[1] * dy) / (_EXTENT * r)
    rgb = rgb * shade[..., None].astype(np.float32)
    return (y0, y1, x0, x1), mask, rgb


def render_frame(scene: Scene, t: int) -> RenderedFrame:
    """Render frame ``t`` of a scene (without noise) with its visible masks.

    Objects are painted back to front, then the occluder on top; an object's visible mask is its
    in-frame silhouette minus the occluder and minus every object after it in ``scene.objects``,
    i.e. exactly the pixels where it shows in the image.

    Args:
        scene: The scene.
        t: Frame index.

    Returns:
        The rendered frame.
    """
    w, h = scene.size
    image = scene.background.copy()
    n = len(scene.objects)
    masks = np.zeros((n, h, w), dtype=bool)
    for i, obj in enumerate(scene.objects):
        part = _render_object(obj, t, (w, h), scene.light)
        if part is None:
            continue
        (y0, y1, x0, x1), mask, rgb = part
        masks[i, y0:y1, x0:x1] = mask
        image[y0:y1, x0:x1][mask] = rgb[mask]
    amodal_areas = masks.reshape(n, -1).sum(axis=1)
    covered = scene.occluder.copy()
    for i in range(n - 1, -1, -1):
        silhouette = masks[i].copy()
        masks[i] &= ~covered
        covered |= silhouette
    image[scene.occluder] = scene.occluder_rgb[scene.occluder]
    return RenderedFrame(np.clip(image, 0, 255).astype(np.uint8), masks, amodal_areas)


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) matrix of linear interpolation from a coarse grid to pixel centres."""
    pos = (np.arange(n_out) + 0.5) * (n_in - 1) / n_out
    lo = np.minimum(np.floor(pos).astype(int), n_in - 2)
    frac = pos - lo
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] = 1.0 - frac
    m[np.arange(n_out), lo + 1] = frac
    return m


def _smooth_noise(rng: np.random.Generator, size: tuple[int, int], cell: float) -> np.ndarray:
    """(H, W, 3) smooth noise in [-1, 1]: a random grid with ``cell``-pixel spacing, upsampled."""
    w, h = size
    gh, gw = max(2, round(h / cell) + 1), max(2, round(w / cell) + 1)
    grid = rng.uniform(-1.0, 1.0, (3, gh, gw))
    ay, ax = _interp_matrix(h, gh), _interp_matrix(w, gw)
    return (ay @ grid @ ax.T).transpose(1, 2, 0)


def _background(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """Muted gradient with smooth blotches at two scales and static grain, (H, W, 3) float32."""
    w, h = size
    grey = rng.uniform(80.0, 170.0)
    c0 = grey + rng.uniform(-35.0, 35.0, 3)
    c1 = grey + rng.uniform(-35.0, 35.0, 3)
    theta = rng.uniform(0.0, _TWO_PI)
    ys, xs = np.mgrid[0:h, 0:w]
    ramp = xs * math.cos(theta) + ys * math.sin(theta)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1.0)
    image = c0 + (c1 - c0) * ramp[..., None]
    image += 28.0 * _smooth_noise(rng, size, cell=h / 2.5)
    image += 14.0 * _smooth_noise(rng, size, cell=max(4.0, h / 14.0))
    image += rng.normal(0.0, 3.0, (h, w, 1))
    return image.astype(np.float32)


def _occluder(
    rng: np.random.Generator, size: tuple[int, int], cfg: SceneConfig
) -> tuple[np.ndarray, np.ndarray]:
    """A brick pillar (and sometimes a low wall): its mask and its texture, both (H, W[, 3])."""
    w, h = size
    mask = np.zeros((h, w), dtype=bool)
    pw = max(2, round(rng.uniform(*cfg.pillar_width) * h))
    lo, hi = round(0.15 * w), w - pw - round(0.15 * w)
    px0 = int(rng.integers(lo, hi + 1)) if hi > lo else max(0, (w - pw) // 2)
    mask[:, px0 : px0 + pw] = True
    if rng.random() < cfg.wall_probability:
        wh = max(2, round(rng.uniform(*cfg.wall_height) * h))
        ww = round(rng.uniform(0.35, 0.7) * w)
        wx0 = int(rng.integers(0, w - ww + 1))
        mask[h - wh :, wx0 : wx0 + ww] = True
    brick_h = max(3, round(0.07 * h))
    brick_w = 2 * brick_h
    ys, xs = np.mgrid[0:h, 0:w]
    row = ys // brick_h
    shifted = xs + (row % 2) * (brick_w // 2)
    col = shifted // brick_w
    mortar = (ys % brick_h == 0) | (shifted % brick_w == 0)
    base = rng.uniform((105.0, 70.0, 55.0), (165.0, 125.0, 105.0))
    jitter = rng.normal(0.0, 12.0, (h // brick_h + 1, (w + brick_w) // brick_w + 1))
    rgb = base + jitter[row, col][..., None] + rng.normal(0.0, 4.0, (h, w, 1))
    rgb[mortar] = rng.uniform(175.0, 205.0)
    return mask, rgb.astype(np.float32)


def _trajectory(
    rng: np.random.Generator,
    num_frames: int,
    bounds: tuple[np.ndarray, np.ndarray],
    speed: tuple[float, float],
    accel_std: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Centre positions of an object bouncing inside ``bounds`` with slight random acceleration.

    Args:
        rng: Random source.
        num_frames: Trajectory length.
        bounds: ``(lo, hi)`` corners of the box the centre bounces in, pixels.
        speed: Range of the initial speed, pixels per frame; the speed stays in
            ``[speed[0] / 2, 1.5 * speed[1]]``.
        accel_std: Standard deviation of the per-frame velocity change, pixels per frame.

    Returns:
        ``(cx, cy)``, each (T,).
    """
    lo, hi = bounds
    pos = rng.uniform(lo, hi)
    heading = rng.uniform(0.0, _TWO_PI)
    vel = rng.uniform(*speed) * np.array([math.cos(heading), math.sin(heading)])
    out = np.empty((num_frames, 2))
    for t in range(num_frames):
        out[t] = pos
        vel += rng.normal(0.0, accel_std, 2)
        norm = float(np.hypot(*vel))
        vel *= np.clip(norm, 0.5 * speed[0], 1.5 * speed[1]) / max(norm, 1e-9)
        pos = pos + vel
        below, above = pos < lo, pos > hi
        pos = np.where(below, 2 * lo - pos, np.where(above, 2 * hi - pos, pos))
        vel = np.where(below | above, -vel, vel)
    return out[:, 0], out[:, 1]


def sample_scene(
    rng: np.random.Generator, num_frames: int, size: tuple[int, int], cfg: SceneConfig
) -> Scene:
    """Sample a random scene: background, occluder and moving objects in random depth order.

    Args:
        rng: Source of all randomness of the scene.
        num_frames: Number of frames of the trajectories.
        size: Frame size (W, H).
        cfg: Scene parameters.

    Returns:
        The scene.
    """
    w, h = size
    background = _background(rng, size)
    occluder, occluder_rgb = _occluder(rng, size, cfg)
    light_angle = rng.uniform(0.0, _TWO_PI)
    light = np.array([math.cos(light_angle), math.sin(light_angle)])
    extent = rng.uniform(*cfg.crowd_extent, 2) * np.array([w, h])
    crowd_lo = rng.uniform(0.0, 1.0, 2) * (np.array([w, h]) - extent)
    crowd = (crowd_lo, crowd_lo + extent)
    objects = []
    t = np.arange(num_frames)
    for _ in range(int(rng.integers(cfg.objects_per_video[0], cfg.objects_per_video[1] + 1))):
        category = int(rng.integers(len(CATEGORIES)))
        colour = np.clip(np.asarray(CATEGORIES[category].colour) + rng.normal(0, 12, 3), 0, 255)
        r0 = rng.uniform(*cfg.radius) * h
        if rng.random() < cfg.crowd_fraction:
            bounds = crowd
        else:
            m = rng.uniform(*cfg.roam_margin) * r0
            bounds = (np.array([-m, -m]), np.array([w + m, h + m]))
        speed = (cfg.speed[0] * h, cfg.speed[1] * h)
        cx, cy = _trajectory(rng, num_frames, bounds, speed, cfg.accel_std * h)
        angle = rng.uniform(0.0, _TWO_PI) + rng.normal(0.0, cfg.spin_std) * t
        amplitude, period = rng.uniform(0.0, cfg.breathe), rng.uniform(16.0, 48.0)
        radius = r0 * (1.0 + amplitude * np.sin(_TWO_PI * t / period + rng.uniform(0, _TWO_PI)))
        objects.append(SceneObject(category, colour, cx, cy, angle, radius))
    return Scene(background, occluder, occluder_rgb, objects, light)


def _video_seeds(seed: int, video_id: int) -> tuple[np.random.SeedSequence, ...]:
    """Independent seeds of a video's scene and of its per-frame noise."""
    return tuple(np.random.SeedSequence([seed, video_id]).spawn(2))


def video_scene(
    seed: int,
    video_id: int,
    num_frames: int,
    size: tuple[int, int],
    config: SceneConfig | None = None,
) -> Scene:
    """The scene of video ``video_id`` of the set generated with ``seed`` (and these arguments).

    Args:
        seed: Seed of the set.
        video_id: Video id (1-based).
        num_frames: Frames per video.
        size: Frame size (W, H).
        config: Scene parameters; defaults to :class:`SceneConfig()`.

    Returns:
        The scene that :func:`generate` renders for this video.
    """
    scene_seed = _video_seeds(seed, video_id)[0]
    return sample_scene(
        np.random.default_rng(scene_seed), num_frames, size, config or SceneConfig()
    )


def _jpeg_bytes(image: np.ndarray, quality: int) -> bytes:
    buffer = BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _make_video(
    seed: int,
    video_id: int,
    num_frames: int,
    size: tuple[int, int],
    cfg: SceneConfig,
    image_root: Path,
) -> tuple[dict, list[dict]]:
    """Render, write and annotate one video (scene from :func:`video_scene`).

    Returns:
        The video entry and its tracks (annotation entries without ``id``), in depth order. Objects
        that are never visible get no track.
    """
    scene = video_scene(seed, video_id, num_frames, size, cfg)
    rng = np.random.default_rng(_video_seeds(seed, video_id)[1])
    name = f"video_{video_id:04d}"
    (image_root / name).mkdir(parents=True, exist_ok=True)
    w, h = size
    n = len(scene.objects)
    per_object: list[dict[str, list]] = [
        {"segmentations": [], "bboxes": [], "areas": [], "occlusion": []} for _ in range(n)
    ]
    file_names = []
    for t in range(num_frames):
        frame = render_frame(scene, t)
        noise = rng.standard_normal((h, w, 3), dtype=np.float32) * cfg.frame_noise_std
        noisy = frame.image.astype(np.float32) + noise + rng.normal(0.0, cfg.frame_noise_std)
        file_name = f"{name}/{t:05d}.jpg"
        jpeg = _jpeg_bytes(np.clip(np.rint(noisy), 0, 255).astype(np.uint8), cfg.jpeg_quality)
        (image_root / file_name).write_bytes(jpeg)
        file_names.append(file_name)
        for i in range(n):
            mask = frame.masks[i]
            visible = int(mask.sum())
            level = occlusion_level(visible, int(frame.amodal_areas[i]))
            entry = per_object[i]
            entry["segmentations"].append(rle_uncompressed(mask) if level else None)
            entry["bboxes"].append(mask_bbox(mask) if level else None)
            entry["areas"].append(visible if level else None)
            entry["occlusion"].append(level)
    video = {
        "id": video_id,
        "width": w,
        "height": h,
        "length": num_frames,
        "file_names": file_names,
    }
    tracks = [
        {
            "video_id": video_id,
            "category_id": CATEGORIES[obj.category].id,
            "iscrowd": 0,
            **entry,
        }
        for obj, entry in zip(scene.objects, per_object, strict=True)
        if any(level is not None for level in entry["occlusion"])
    ]
    return video, tracks


def _num_valid(num_videos: int, valid_fraction: float) -> int:
    """Videos in the valid split: the rounded fraction, leaving >= 1 video in each split."""
    return min(num_videos - 1, max(1, round(num_videos * valid_fraction)))


def _write_split(path: Path, videos: list[dict], tracks: list[dict], info: dict) -> None:
    categories = [{"id": c.id, "name": c.name, "supercategory": "shape"} for c in CATEGORIES]
    data = {
        "info": info,
        "licenses": [],
        "videos": videos,
        "annotations": tracks,
        "categories": categories,
    }
    path.write_text(json.dumps(data, separators=(",", ":")))


def generate(
    out_dir: str | Path,
    *,
    seed: int = 0,
    num_videos: int = 60,
    num_frames: int = 24,
    size: tuple[int, int] = (320, 192),
    valid_fraction: float = 0.2,
    config: SceneConfig | None = None,
    progress: bool = False,
) -> dict:
    """Generate a synthetic occluded-VIS set in the OVIS layout.

    Video ids run 1..``num_videos`` across both splits: the last ``round(num_videos *
    valid_fraction)`` videos (at least one, at most ``num_videos - 1``) form ``valid.json``, the
    others ``train.json``. Annotation ids are unique across both files. A video's content depends
    only on ``seed``, its id, ``num_frames``, ``size`` and ``config`` (see :func:`video_scene`).
    Existing files of the same names are overwritten; nothing else in ``out_dir`` is touched.

    Args:
        out_dir: Output folder; ``JPEGImages/`` and ``annotations/`` are created in it.
        seed: Seed of the whole set (non-negative).
        num_videos: Total number of videos (>= 2: both splits are non-empty).
        num_frames: Frames per video (>= 1).
        size: Frame size (W, H), each >= 32.
        valid_fraction: Fraction of videos in the valid split, in (0, 1).
        config: Scene parameters; defaults to :class:`SceneConfig()`.
        progress: Show a progress bar.

    Returns:
        ``root``, ``image_root``, ``train`` and ``valid`` (JSON paths) as strings, and the counts
        ``num_videos``, ``num_instances``, ``num_masks`` (each ``{"train": n, "valid": n}``),
        ``num_frames`` and ``num_images``.

    Raises:
        ValueError: On an invalid argument.
    """
    cfg = config or SceneConfig()
    w, h = size
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if num_videos < 2:
        raise ValueError(f"num_videos must be >= 2 (train and valid), got {num_videos}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if w < 32 or h < 32:
        raise ValueError(f"size must be at least 32x32, got {w}x{h}")
    if not 0.0 < valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in (0, 1), got {valid_fraction}")
    root = Path(out_dir)
    image_root = root / "JPEGImages"
    ann_root = root / "annotations"
    image_root.mkdir(parents=True, exist_ok=True)
    ann_root.mkdir(parents=True, exist_ok=True)
    num_train = num_videos - _num_valid(num_videos, valid_fraction)
    splits: dict[str, tuple[list[dict], list[dict]]] = {"train": ([], []), "valid": ([], [])}
    next_track_id = 1
    for video_id in tqdm(
        range(1, num_videos + 1), desc="synthetic", unit="video", disable=not progress
    ):
        video, tracks = _make_video(seed, video_id, num_frames, (w, h), cfg, image_root)
        split_videos, split_tracks = splits["train" if video_id <= num_train else "valid"]
        split_videos.append(video)
        for track in tracks:
            split_tracks.append({"id": next_track_id, **track})
            next_track_id += 1
    result: dict = {
        "root": str(root),
        "image_root": str(image_root),
        "num_videos": {},
        "num_instances": {},
        "num_masks": {},
        "num_frames": num_frames,
        "num_images": num_videos * num_frames,
    }
    for split, (videos, tracks) in splits.items():
        info = {
            "description": f"ovisnet synthetic occluded VIS ({split})",
            "version": "1.0",
            "seed": seed,
            "size": [w, h],
        }
        path = ann_root / f"{split}.json"
        _write_split(path, videos, tracks, info)
        result[split] = str(path)
        result["num_videos"][split] = len(videos)
        result["num_instances"][split] = len(tracks)
        result["num_masks"][split] = sum(
            s is not None for track in tracks for s in track["segmentations"]
        )
    return result


def _size_arg(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected WxH with integers, e.g. 320x192, got {text!r}")
    w, h = int(parts[0]), int(parts[1])
    if w < 32 or h < 32:
        raise argparse.ArgumentTypeError(f"size must be at least 32x32, got {text!r}")
    return w, h


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """argparse type: an integer >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def _fraction_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m ovisnet.data.synthetic --out DIR [options]``."""
    parser = argparse.ArgumentParser(
        prog="python -m ovisnet.data.synthetic",
        description="Generate a synthetic occluded video instance segmentation set in the OVIS "
        "layout (JPEGImages/ + annotations/train.json, valid.json).",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--seed", type=_int_at_least(0), default=0, help="seed (default 0)")
    parser.add_argument(
        "--videos",
        type=_int_at_least(2),
        default=60,
        help="total number of videos, train + valid (default 60)",
    )
    parser.add_argument(
        "--frames", type=_int_at_least(1), default=24, help="frames per video (default 24)"
    )
    parser.add_argument(
        "--size", type=_size_arg, default=(320, 192), help="frame size WxH (default 320x192)"
    )
    parser.add_argument(
        "--valid-fraction",
        type=_fraction_arg,
        default=0.2,
        help="fraction of the videos in valid.json (default 0.2)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    result = generate(
        args.out,
        seed=args.seed,
        num_videos=args.videos,
        num_frames=args.frames,
        size=args.size,
        valid_fraction=args.valid_fraction,
        progress=not args.quiet,
    )
    for split in ("train", "valid"):
        print(
            f"{split}: {result['num_videos'][split]} videos, {result['num_instances'][split]} "
            f"instances, {result['num_masks'][split]} masks -> {result[split]}"
        )
    print(f"images: {result['num_images']} under {result['image_root']}")


if __name__ == "__main__":
    main()
