"""Pieces every video detector of the zoo shares: input normalisation and the training pair.

The MaskTrack family (:mod:`ovisnet.models.masktrack`) and the SipMask family
(:mod:`ovisnet.models.sipmask`) both see uint8 RGB frames on a padded canvas, both normalise them
the same way, and both train on (query, reference) pairs whose reference may run its backbone
without gradient (``detach_reference``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
from torch import Tensor, nn

from ovisnet.structures import ClipBatch, FeatureMaps, Instances

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def normalize_images(
    images: Tensor,
    mean: Tensor,
    std: Tensor,
    image_sizes: list[tuple[int, int]] | None = None,
) -> Tensor:
    """``(images - mean) / std`` with the canvas padding set to 0 afterwards.

    mmdet and torchvision pad the *normalised* image with zeros; the data layer pads the uint8
    image, so the padding is zeroed here.

    Args:
        images: ``(B, 3, H, W)`` uint8 RGB.
        mean: ``(3, 1, 1)`` pixel mean.
        std: ``(3, 1, 1)`` pixel standard deviation.
        image_sizes: per image valid ``(h, w)``; None keeps the whole canvas.

    Returns:
        ``(B, 3, H, W)`` float32.
    """
    x = (images.float() - mean) / std
    if image_sizes is not None:
        for i, (h, w) in enumerate(image_sizes):
            x[i, :, h:, :] = 0.0
            x[i, :, :, w:] = 0.0
    return x


def pair_features(
    extract: Callable[[Tensor, list[tuple[int, int]]], FeatureMaps],
    batch: ClipBatch,
    *,
    detach_reference: bool = False,
) -> tuple[FeatureMaps, FeatureMaps]:
    """Features of the query (frame 0) and reference (frame 1) of a training pair batch.

    Args:
        extract: the model's ``extract_features``.
        batch: ``images (B, 2, 3, H, W)``.
        detach_reference: run the reference frames without gradient (one backbone call per
            frame kind); otherwise one call on all ``2B`` frames.

    Returns:
        ``(query, reference)`` feature dicts, batch ``B`` each.

    Raises:
        ValueError: when the batch does not hold pairs.
    """
    num_frames = batch.images.shape[1]
    if num_frames != 2:
        raise ValueError(f"loss() needs (query, reference) pairs, got {num_frames} frames")
    if detach_reference:
        query = extract(batch.images[:, 0], batch.image_sizes)
        with torch.no_grad():
            reference = extract(batch.images[:, 1], batch.image_sizes)
        return query, reference
    sizes = [size for size in batch.image_sizes for _ in range(2)]
    features = extract(batch.images.flatten(0, 1), sizes)
    return {k: v[0::2] for k, v in features.items()}, {k: v[1::2] for k, v in features.items()}


def without_crowd(instances: Instances) -> Instances:
    """The non-crowd objects (crowd ground truth is ignored by every loss)."""
    if instances.iscrowd is None:
        return instances
    return instances[~instances.iscrowd]


class VideoDetector(nn.Module):
    """The input side every per-frame detector of the zoo shares.

    Holds the backbone and the pixel statistics, normalises uint8 frames
    (:meth:`extract_features`) and computes the features of a training pair
    (:meth:`pair_features`). Subclasses add heads, ``loss``, ``detect``, ``embed`` and ``paste``.

    Args:
        backbone: ``(B, 3, H, W)`` float images → FPN levels.
        pixel_mean: RGB mean subtracted from the 0–255 pixels.
        pixel_std: RGB standard deviation the pixels are divided by.
        detach_reference: in training, run the reference frame's backbone without gradient
            (the official code's ``detach_ref``, off there and by default).
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        pixel_mean: tuple[float, float, float] = IMAGENET_MEAN,
        pixel_std: tuple[float, float, float] = IMAGENET_STD,
        detach_reference: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.detach_reference = detach_reference
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(3, 1, 1), persistent=False)

    def extract_features(
        self, images: Tensor, image_sizes: list[tuple[int, int]] | None = None
    ) -> FeatureMaps:
        """Normalise a batch of frames and run backbone + FPN (cacheable per frame).

        Args:
            images: ``(B, 3, H, W)`` uint8 RGB, ``H`` and ``W`` multiples of 32.
            image_sizes: per image valid ``(h, w)``; when given, the padding is zeroed after
                normalisation (mmdet and torchvision pad the *normalised* image with zeros).

        Returns:
            The backbone's FPN levels, each ``(B, C, H / s, W / s)``.
        """
        return self.backbone(normalize_images(images, self.pixel_mean, self.pixel_std, image_sizes))

    def pair_features(self, batch: ClipBatch) -> tuple[FeatureMaps, FeatureMaps]:
        """:func:`pair_features` of a training batch with this model's ``detach_reference``."""
        return pair_features(self.extract_features, batch, detach_reference=self.detach_reference)


def paste_in_chunks(
    instances: Instances,
    *,
    image_size: tuple[int, int],
    original_size: tuple[int, int],
    paste: Callable[[Tensor, Tensor], Tensor],
    chunk_size: int = 16,
) -> Instances:
    """Detections back to the original frame: boxes rescaled, masks pasted a chunk at a time.

    Args:
        instances: one image's detections in canvas pixels, with the family's ``masks``.
        image_size: ``(h, w)`` of the resized frame inside the canvas.
        original_size: ``(H, W)`` of the original frame.
        paste: ``(masks chunk, boxes chunk in original pixels) -> (n, H, W)`` bool.
        chunk_size: masks pasted at once (bounds the float memory to ``chunk_size * H * W``).

    Returns:
        A copy with ``boxes`` in original pixels and ``masks (N, H, W)`` bool.
    """
    if instances.masks is None:
        raise ValueError("pasting needs instances with masks")
    (h, w), (big_h, big_w) = image_size, original_size
    scale = instances.boxes.new_tensor([big_w / w, big_h / h, big_w / w, big_h / h])
    boxes = instances.boxes * scale
    pasted = [
        paste(m, b)
        for m, b in zip(instances.masks.split(chunk_size), boxes.split(chunk_size), strict=True)
    ]
    masks = (
        torch.cat(pasted)
        if pasted
        else torch.zeros(0, big_h, big_w, dtype=torch.bool, device=boxes.device)
    )
    return replace(instances, boxes=boxes, masks=masks)
