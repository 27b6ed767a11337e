"""Samples and batches of video frames handed from the data layer to the models."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from ovisnet.structures.instances import Instances


@dataclass
class ClipSample:
    """A few frames of one video, resized and padded to the same canvas.

    In pair mode (MaskTrack family) ``frame_indices = [query, reference]``; in clip mode
    (STEm-Seg) the ``T`` frames of the clip in temporal order; in evaluation one frame.

    Attributes:
        images: ``(T, 3, h, w)`` uint8 RGB at the resized size (padding happens at collation).
        targets: per frame ground truth in canvas pixels (None for inference-only splits).
        video_id: dataset id of the video.
        frame_indices: frame index in the video of each of the ``T`` frames.
        video_length: number of frames of the video.
        image_size: ``(h, w)`` of the resized image inside the canvas (before padding).
        original_size: ``(H, W)`` of the original frames.
        scale: resize factor original → canvas.
        flipped: whether the clip was horizontally flipped.
    """

    images: Tensor
    targets: list[Instances] | None
    video_id: int
    frame_indices: list[int]
    video_length: int
    image_size: tuple[int, int]
    original_size: tuple[int, int]
    scale: float
    flipped: bool = False


@dataclass
class ClipBatch:
    """A batch of :class:`ClipSample`: images zero-padded bottom/right and stacked.

    ``images`` is ``(B, T, 3, H, W)`` uint8 with ``H, W`` multiples of the collation's
    ``size_divisor``; ``image_sizes`` holds each sample's valid ``(h, w)``.
    """

    images: Tensor
    targets: list[list[Instances]] | None
    video_ids: list[int]
    frame_indices: list[list[int]]
    video_lengths: list[int]
    image_sizes: list[tuple[int, int]]
    original_sizes: list[tuple[int, int]]
    scales: list[float]

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device | str) -> ClipBatch:
        """Move images and targets to ``device``."""
        targets = (
            None
            if self.targets is None
            else [[inst.to(device) for inst in clip] for clip in self.targets]
        )
        return replace(self, images=self.images.to(device), targets=targets)


def collate_clips(samples: list[ClipSample], size_divisor: int = 32) -> ClipBatch:
    """Pad samples of equal frame count to a common size and stack them into a batch.

    Args:
        samples: clips with the same number of frames.
        size_divisor: the padded height and width are multiples of it (FPN strides).
    """
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    lengths = {s.images.shape[0] for s in samples}
    if len(lengths) != 1:
        raise ValueError(f"samples differ in frame count: {sorted(lengths)}")
    height = math.ceil(max(s.images.shape[-2] for s in samples) / size_divisor) * size_divisor
    width = math.ceil(max(s.images.shape[-1] for s in samples) / size_divisor) * size_divisor
    images = torch.stack(
        [
            F.pad(s.images, (0, width - s.images.shape[-1], 0, height - s.images.shape[-2]))
            for s in samples
        ]
    )
    has_targets = all(s.targets is not None for s in samples)
    return ClipBatch(
        images=images,
        targets=[s.targets for s in samples] if has_targets else None,  # type: ignore[misc]
        video_ids=[s.video_id for s in samples],
        frame_indices=[s.frame_indices for s in samples],
        video_lengths=[s.video_length for s in samples],
        image_sizes=[s.image_size for s in samples],
        original_sizes=[s.original_size for s in samples],
        scales=[s.scale for s in samples],
    )
