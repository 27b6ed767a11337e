"""Drawing tracks over frames: the one renderer of the demo and of the validation media.

Plain numpy / Pillow / scipy, no Lightning. Each track keeps one colour (:func:`track_colors` of
its index) in every frame; its mask is blended over the frame, its border drawn as a band a few
pixels wide (a one-pixel outline vanishes on textured objects) and a label ("#3 car 0.87") is
written on a patch of the track's colour at the top-left of its mask, so a person can follow a
track through a video.
"""

from __future__ import annotations

import colorsys
import io
import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

_GOLDEN = 0.618033988749895


def track_colors(n: int) -> np.ndarray:
    """``(n, 3)`` uint8 RGB colours, one per track index, the same for every call.

    Hues step by the golden ratio so neighbouring indices are far apart on the colour wheel.
    """
    colors = [colorsys.hsv_to_rgb((i * _GOLDEN) % 1.0, 0.85, 1.0) for i in range(n)]
    return np.rint(np.asarray(colors, dtype=np.float64).reshape(n, 3) * 255).astype(np.uint8)


def border_width(height: int, width: int) -> int:
    """Width in pixels of the drawn mask border: 2 px up to 360p, growing with the image."""
    return max(2, round(min(height, width) / 180))


def mask_border(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels of ``mask`` (``(H, W)`` bool) within ``width`` pixels of its outside.

    Pixels outside the image count as outside, so a mask touching the image edge gets a border
    there too.
    """
    if width < 1:
        raise ValueError(f"border width must be >= 1, got {width}")
    if not mask.any():
        return mask.copy()
    interior = ndimage.binary_erosion(mask, iterations=width, border_value=0)
    return mask & ~interior


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _text_color(color: np.ndarray) -> tuple[int, int, int]:
    """Black or white, whichever reads better on ``color`` (ITU-R BT.601 luma)."""
    luma = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    return (0, 0, 0) if luma > 140 else (255, 255, 255)


def draw_tracks(
    frame: np.ndarray,
    masks: Sequence[np.ndarray | None],
    colors: np.ndarray | Sequence[Sequence[int]],
    labels: Sequence[str] | None = None,
    *,
    alpha: float = 0.5,
    border: int | None = None,
) -> np.ndarray:
    """One frame with its tracks drawn: blended masks, opaque borders and labels.

    A pixel covered by track ``k`` becomes ``round((1 - alpha) * frame + alpha * colors[k])``;
    the pixels of the mask within ``border`` pixels of its outside are painted ``colors[k]``
    opaque. Where tracks overlap, the later one wins (fill and border). Labels are drawn last,
    each on a patch of its track's colour at the top-left corner of the mask's bounding box
    (kept inside the image). Pixels outside every mask and label patch are left unchanged.

    Args:
        frame: ``(H, W, 3)`` uint8 RGB.
        masks: one ``(H, W)`` bool mask per track, or None where the track is absent.
        colors: ``(K, 3)`` uint8 RGB per track, ``K == len(masks)``.
        labels: one text per track (``None``: no labels).
        alpha: opacity of the mask fill in ``[0, 1]``.
        border: border width in pixels (default :func:`border_width` of the frame).

    Returns:
        A new ``(H, W, 3)`` uint8 array.
    """
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"frame must be (H, W, 3) uint8, got {frame.shape} {frame.dtype}")
    colors = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
    if len(colors) != len(masks):
        raise ValueError(f"{len(masks)} tracks but {len(colors)} colours")
    if labels is not None and len(labels) != len(masks):
        raise ValueError(f"{len(masks)} tracks but {len(labels)} labels")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    height, width = frame.shape[:2]
    border = border_width(height, width) if border is None else border
    layer = np.zeros_like(frame)
    covered = np.zeros((height, width), dtype=bool)
    edges = np.zeros((height, width), dtype=bool)
    anchors: list[tuple[int, int, int]] = []  # (track, x, y) of each label
    for k, mask in enumerate(masks):
        if mask is None:
            continue
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (height, width):
            raise ValueError(f"track mask {mask.shape} does not match frame {(height, width)}")
        if not mask.any():
            continue
        layer[mask] = colors[k]
        covered |= mask
        edges[mask] = mask_border(mask, border)[mask]  # a later interior hides an earlier border
        ys, xs = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        anchors.append((k, int(xs[0]), int(ys[0])))
    out = frame.copy()
    blended = (1.0 - alpha) * frame[covered].astype(np.float64) + alpha * layer[covered]
    out[covered] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    out[edges] = layer[edges]
    if labels is not None and anchors:
        out = _draw_labels(out, [(labels[k], colors[k], x, y) for k, x, y in anchors])
    return out


def _draw_labels(frame: np.ndarray, items: list[tuple[str, np.ndarray, int, int]]) -> np.ndarray:
    height, width = frame.shape[:2]
    font = _font(max(10, round(min(height, width) / 28)))
    image = Image.fromarray(frame)
    draw = ImageDraw.Draw(image)
    for text, color, x, y in items:
        if not text:
            continue
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        w, h = right - left + 4, bottom - top + 4
        x0 = min(max(0, x), max(0, width - w))
        y0 = min(max(0, y - h), max(0, height - h))  # above the mask, or inside at the top
        draw.rectangle((x0, y0, x0 + w - 1, y0 + h - 1), fill=tuple(int(c) for c in color))
        draw.text((x0 + 2 - left, y0 + 2 - top), text, fill=_text_color(color), font=font)
    return np.asarray(image, dtype=np.uint8).copy()


def overlay_frames(
    frames: np.ndarray,
    masks_per_track: Sequence[np.ndarray],
    colors: np.ndarray | Sequence[Sequence[int]],
    alpha: float = 0.5,
    labels: Sequence[str] | None = None,
    border: int | None = None,
) -> np.ndarray:
    """:func:`draw_tracks` on every frame of a clip.

    Args:
        frames: ``(T, H, W, 3)`` uint8 RGB frames.
        masks_per_track: one ``(T, H, W)`` bool array per track (all False where absent).
        colors: ``(K, 3)`` uint8 RGB colour per track, ``K == len(masks_per_track)``.
        alpha: opacity of the mask fill in ``[0, 1]``.
        labels: one text per track, or None.
        border: border width in pixels (default :func:`border_width`).

    Returns:
        A new ``(T, H, W, 3)`` uint8 array.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    for masks in masks_per_track:
        if np.shape(masks) != frames.shape[:3]:
            raise ValueError(
                f"track masks {np.shape(masks)} do not match frames {frames.shape[:3]}"
            )
    return np.stack(
        [
            draw_tracks(
                frame,
                [np.asarray(m[t], dtype=bool) for m in masks_per_track],
                colors,
                labels,
                alpha=alpha,
                border=border,
            )
            for t, frame in enumerate(frames)
        ]
    )


def track_label(track: int, category: str | None, score: float | None) -> str:
    """The text drawn next to a track: ``"#3 car 0.87"`` (parts that are None left out)."""
    parts = [f"#{track}"]
    if category:
        parts.append(category)
    if score is not None:
        parts.append(f"{score:.2f}")
    return " ".join(parts)


def contact_sheet(frames: np.ndarray, ncols: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile ``(T, H, W, 3)`` frames row by row into one image.

    Tile ``t`` sits at row ``t // ncols``, column ``t % ncols``, with ``pad`` black pixels
    between tiles (none around the sheet); unused cells of the last row stay black.

    Args:
        frames: ``(T, H, W, 3)`` uint8 frames, ``T >= 1``.
        ncols: tiles per row; default ``ceil(sqrt(T))``.
        pad: gap between tiles in pixels.

    Returns:
        ``(rows * H + (rows - 1) * pad, ncols * W + (ncols - 1) * pad, 3)`` uint8.
    """
    t, h, w, c = frames.shape
    if t < 1:
        raise ValueError("contact_sheet needs at least one frame")
    ncols = min(t, ncols or math.ceil(math.sqrt(t)))
    rows = math.ceil(t / ncols)
    sheet = np.zeros((rows * h + (rows - 1) * pad, ncols * w + (ncols - 1) * pad, c), np.uint8)
    for i, frame in enumerate(frames):
        y, x = (i // ncols) * (h + pad), (i % ncols) * (w + pad)
        sheet[y : y + h, x : x + w] = frame
    return sheet


def encode_gif(frames: np.ndarray, fps: int) -> bytes:
    """Animated GIF (looping, ``fps`` frames per second) of ``(T, H, W, 3)`` uint8 frames."""
    images = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    images[0].save(
        buf,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        duration=max(1, round(1000 / fps)),
        loop=0,
    )
    return buf.getvalue()
