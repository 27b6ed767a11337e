"""Clip-consistent geometric transforms on torchvision ``tv_tensors``.

One decision (resize factor, flip) is made per clip and applied to every frame and to its boxes
and masks, so the query and reference frames of a pair (or the T frames of a STEm-Seg clip) stay
aligned. Randomness comes from the caller's generator, which keeps samples reproducible whatever
the number of data-loader workers.
"""

from __future__ import annotations

import torchvision.transforms.v2.functional as TF
from torch import Tensor
from torchvision import tv_tensors

from ovisnet.structures import Instances


def fit_scale(height: int, width: int, max_size: tuple[int, int]) -> float:
    """Resize factor keeping the aspect ratio (mmdet ``keep_ratio`` rule, SPEC §1.2).

    ``max_size = (long, short)``, e.g. ``(640, 360)``: the long side fits ``long`` and the short
    side fits ``short`` (1920x1080 → 640x360; a portrait 1080x1920 → 360x640).
    """
    long_max, short_max = max(max_size), min(max_size)
    return min(long_max / max(height, width), short_max / min(height, width))


def resized_hw(height: int, width: int, scale: float) -> tuple[int, int]:
    """Image size after resizing by ``scale`` (rounded like mmdet: ``int(x * scale + 0.5)``)."""
    return int(height * scale + 0.5), int(width * scale + 0.5)


def transform_clip(
    frames: Tensor,
    targets: list[Instances] | None,
    out_hw: tuple[int, int],
    flip: bool,
) -> tuple[Tensor, list[Instances] | None]:
    """Resize (and optionally flip) a clip and its per-frame targets consistently.

    Args:
        frames: ``(T, 3, H, W)`` uint8 frames of one video.
        targets: per-frame ground truth at ``(H, W)``, or None.
        out_hw: ``(h, w)`` output size.
        flip: flip every frame (and target) horizontally.

    Returns:
        ``(T, 3, h, w)`` uint8 frames and the transformed targets (boxes clamped to the image).
    """
    video = TF.resize(tv_tensors.Video(frames), list(out_hw), antialias=True)
    if flip:
        video = TF.horizontal_flip(video)
    if targets is None:
        return video.as_subclass(Tensor), None
    canvas = tuple(frames.shape[-2:])
    out = []
    for inst in targets:
        boxes = tv_tensors.BoundingBoxes(inst.boxes, format="XYXY", canvas_size=canvas)
        boxes = TF.resize(boxes, list(out_hw))
        masks = None
        if inst.masks is not None:
            masks = TF.resize(tv_tensors.Mask(inst.masks), list(out_hw))
        if flip:
            boxes = TF.horizontal_flip(boxes)
            masks = None if masks is None else TF.horizontal_flip(masks)
        boxes = TF.clamp_bounding_boxes(boxes)
        out.append(
            Instances(
                boxes=boxes.as_subclass(Tensor),
                labels=inst.labels,
                track_ids=inst.track_ids,
                masks=None if masks is None else masks.as_subclass(Tensor),
                iscrowd=inst.iscrowd,
            )
        )
    return video.as_subclass(Tensor), out
