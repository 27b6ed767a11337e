"""Segmentation normalisation shared by the evaluator and the results writer (pycocotools RLE)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

RLE = dict[str, Any]


class InvalidRLEError(ValueError):
    """A compressed RLE string that cannot be read; ``index`` is its position in the input."""

    def __init__(self, index: int) -> None:
        super().__init__("'counts' is not a compressed RLE string")
        self.index = index


# characters of the first run length of a compressed RLE string: 5 bits each, the first run stays
# below 2**32 (pycocotools' run lengths are 32-bit), plus its sign bit -> at most 7
_HEAD_CHARS = 7


def is_null(segmentation: Any) -> bool:
    """Whether a per-frame segmentation entry means "no mask in this frame".

    The official evaluators test entries for truthiness, so ``None`` and empty containers
    (``[]``, ``{}``) are all absent masks.

    Args:
        segmentation: One entry of a ``segmentations`` list.

    Returns:
        True for a missing mask.
    """
    return not segmentation


def to_rle(segmentation: Any, height: int | None, width: int | None, where: str) -> RLE:
    """Convert one non-null per-frame segmentation to a compressed RLE that pycocotools reads.

    Accepted forms: compressed RLE (``counts`` a str or bytes), uncompressed RLE (``counts`` a list
    of run lengths, converted with ``frPyObjects`` using the RLE's own ``size``), polygons (a list
    of ``[x1, y1, x2, y2, ...]`` lists, or one flat list, rasterised at ``height`` x ``width`` and
    merged into one mask).

    Args:
        segmentation: The entry (not null, see :func:`is_null`).
        height: Frame height, needed for polygons only.
        width: Frame width, needed for polygons only.
        where: Human-readable location used in error messages.

    Returns:
        ``{"size": [h, w], "counts": str | bytes}``. Compressed input is returned as is.

    Raises:
        ValueError: If the entry is none of the accepted forms, or a polygon has no frame size.
    """
    if isinstance(segmentation, dict):
        counts, size = segmentation.get("counts"), segmentation.get("size")
        if counts is None or size is None or len(size) != 2:
            raise ValueError(f"{where}: an RLE needs 'counts' and 'size' [h, w]")
        if isinstance(counts, (str, bytes)):
            return segmentation
        if isinstance(counts, list):
            h, w = (int(s) for s in size)
            return mask_utils.frPyObjects(dict(segmentation), h, w)
        raise ValueError(f"{where}: RLE 'counts' must be a str, bytes or a list of run lengths")
    if isinstance(segmentation, list):
        if height is None or width is None:
            raise ValueError(f"{where}: polygons need the video's 'height' and 'width'")
        polygons = segmentation if isinstance(segmentation[0], list) else [segmentation]
        try:
            return mask_utils.merge(mask_utils.frPyObjects(polygons, int(height), int(width)))
        except Exception as err:  # pycocotools raises bare Exception / TypeError on bad input
            raise ValueError(f"{where}: invalid polygon ({err})") from err
    raise ValueError(
        f"{where}: expected an RLE dict, a polygon list or null, got {type(segmentation).__name__}"
    )


def rle_size(rle: RLE) -> tuple[int, int]:
    """The ``(height, width)`` of an RLE."""
    h, w = rle["size"]
    return int(h), int(w)


def prepend_background(counts: Sequence[str], pixels: np.ndarray) -> list[str]:
    """Compressed RLE strings with ``pixels[i]`` more background pixels before mask ``i``.

    In the COCO string format (run lengths in 5-bit groups plus 48, bit 0x20 = more groups
    follow, bit 0x10 = sign of the last group; run ``k > 2`` stored as its difference to run
    ``k - 2``) no run is stored relative to the first one, the leading background. So growing
    it re-encodes only its own characters, for all strings at once; no mask is decoded. The
    result describes the mask placed after ``pixels[i]`` background pixels of a larger canvas
    (column-major), e.g. a frame in its own slab of a strip of frames.

    Args:
        counts: Compressed ``counts`` strings.
        pixels: (N,) non-negative integers; each grown first run must stay below 2**32.

    Returns:
        The grown strings, in order.

    Raises:
        InvalidRLEError: For the first string whose first run is not a valid run length.
    """
    n = len(counts)
    if n == 0:
        return []
    heads = "".join([s[:_HEAD_CHARS].ljust(_HEAD_CHARS, "0") for s in counts])
    if not heads.isascii():
        raise InvalidRLEError(
            next(i for i, s in enumerate(counts) if not s[:_HEAD_CHARS].isascii())
        )
    c = np.frombuffer(heads.encode("ascii"), np.uint8).reshape(n, _HEAD_CHARS).astype(np.int64)
    c -= 48
    k = np.arange(_HEAD_CHARS)
    more = (c & 0x20) != 0
    length = np.argmin(more, axis=1) + 1  # characters of the first run
    inside = k < length[:, None]
    first = np.where(inside, (c & 0x1F) << (5 * k), 0).sum(axis=1)
    negative = (c[np.arange(n), length - 1] & 0x10) != 0
    invalid = more.all(axis=1) | (inside & ((c < 0) | (c > 63))).any(axis=1) | negative
    if invalid.any():
        raise InvalidRLEError(int(np.argmax(invalid)))
    grown = first + np.asarray(pixels, np.int64)
    # a non-negative run takes groups until the rest is 0 and the last group's 0x10 bit is clear
    chars = 1 + (grown[:, None] >= np.left_shift(1, 5 * k[1:] - 1)).sum(axis=1)
    groups = (grown[:, None] >> (5 * k)) & 0x1F
    groups |= np.where(k < chars[:, None] - 1, 0x20, 0)
    text = (groups + 48).astype(np.uint8).tobytes().decode("ascii")
    starts = range(0, n * _HEAD_CHARS, _HEAD_CHARS)
    heads = [text[i : i + a] for i, a in zip(starts, chars.tolist(), strict=True)]
    # s.replace(first run, grown first run, 1): one copy of s, where head + s[b:] makes two
    return [
        s.replace(s[:b], head, 1) for head, b, s in zip(heads, length.tolist(), counts, strict=True)
    ]
