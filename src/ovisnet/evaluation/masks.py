"""Segmentation normalisation shared by the evaluator and the results writer (pycocotools RLE)."""

from __future__ import annotations

from typing import Any

from pycocotools import mask as mask_utils

RLE = dict[str, Any]


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
