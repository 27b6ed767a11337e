"""Pseudo-clips made from single annotated images (STEm-Seg's "+image data" recipe).

STEm-Seg trains on clips of ``T`` frames. Annotated images are far more plentiful than annotated
videos, so the paper also turns single images into clips: a random affine + perspective motion,
interpolated smoothly from near the identity at frame 0 to a random end pose at frame ``T - 1``,
moves the image and its masks like a camera would, and each object keeps one identity across
the clip. :class:`MixedClipDataset` mixes those pseudo-clips into the video clips at a ratio.

Images come from an :class:`ImageSource`: a COCO-format instance file whose categories are mapped
onto the video dataset's (:class:`CocoImageSource`), or the annotated frames of the video training
set itself (:class:`VideoFrameSource`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from pycocotools import mask as mask_utils
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.ops import masks_to_boxes

from ovisnet.data.annotations import VISAnnotations, to_compressed_rle
from ovisnet.data.datasets import (
    VISTrainDataset,
    _VideoFrames,
    frame_targets,
    is_valid_box,
    read_rgb,
    valid_frames,
)
from ovisnet.data.transforms import fit_scale, resized_hw, transform_clip
from ovisnet.structures import ClipSample, Instances

_MIX_STREAM = 1
"""Second seed word of :class:`MixedClipDataset`'s draws, so they are independent of the video
clip's own draws from the same per-sample seed."""


@dataclass(frozen=True)
class ClipMotion:
    """Bounds of the random motion that turns one image into a pseudo-clip.

    The end pose of a clip is drawn uniformly within these bounds and its start pose within
    ``start_fraction`` of them (near the identity, so frame 0 looks like the image); the frames
    in between interpolate the parameters linearly, so objects move smoothly as in a video.

    Attributes:
        max_rotation: rotation bound in degrees (about the image centre).
        max_translation: translation bound, as a fraction of the image width and height.
        max_scale: zoom bound: the scale factor lies in ``[1 - max_scale, 1 + max_scale]``.
        max_shear: bound of the x and y shear angles in degrees.
        perspective: bound of each image corner's own displacement (which makes the affine
            motion a perspective one), as a fraction of the image width and height.
        start_fraction: the start pose is drawn within this fraction of every bound.
    """

    max_rotation: float = 15.0
    max_translation: float = 0.1
    max_scale: float = 0.15
    max_shear: float = 5.0
    perspective: float = 0.05
    start_fraction: float = 0.1

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < 0:
                raise ValueError(f"{f.name} must be >= 0, got {getattr(self, f.name)}")
        if self.max_scale >= 1:
            raise ValueError(f"max_scale must be < 1 (a positive scale), got {self.max_scale}")
        if self.start_fraction > 1:
            raise ValueError(f"start_fraction must be <= 1, got {self.start_fraction}")

    def bounds(self) -> np.ndarray:
        """Bounds of the 14 pose parameters.

        In order: rotation, translation x / y, scale change, shear x / y, and the x / y
        displacements of the 4 corners (top-left, top-right, bottom-right, bottom-left).
        """
        return np.array(
            [self.max_rotation, *[self.max_translation] * 2, self.max_scale]
            + [self.max_shear] * 2
            + [self.perspective] * 8
        )


def _corner_motion(pose: np.ndarray, height: int, width: int) -> tuple[list, list]:
    """The image corners and where ``pose`` moves them (the 4 points define the homography).

    Folding the affine part and the corner displacements into one homography warps every frame
    once, with one interpolation, instead of an affine warp followed by a perspective one.
    """
    angle, tx, ty, dscale, shear_x, shear_y = pose[:6]
    corners = np.array([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], float)
    center = corners.mean(axis=0)
    a, sx, sy = np.deg2rad([angle, shear_x, shear_y])
    rotation = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    shear = np.array([[1.0, np.tan(sx)], [np.tan(sy), 1.0]])
    linear = (1.0 + dscale) * rotation @ shear
    size = np.array([width, height], float)
    moved = (corners - center) @ linear.T + center + np.array([tx, ty]) * size
    moved += pose[6:].reshape(4, 2) * size
    return corners.tolist(), moved.tolist()


def image_to_clip(
    image: Tensor,
    masks: Tensor,
    num_frames: int,
    rng: np.random.Generator,
    motion: ClipMotion | None = None,
) -> tuple[Tensor, Tensor]:
    """Turn one image and its object masks into a clip by a smooth random motion.

    A start pose near the identity and an end pose are drawn from ``rng`` within ``motion``'s
    bounds; frame ``t`` warps the image by the pose interpolated linearly at ``t / (T - 1)``.
    Pixels moved in from outside the image are black; masks are warped with nearest
    interpolation.

    Args:
        image: ``(3, H, W)`` uint8 image.
        masks: ``(N, H, W)`` bool object masks.
        num_frames: number of frames ``T`` of the clip.
        rng: source of the random poses (the same state gives the same clip).
        motion: bounds of the motion (default :class:`ClipMotion`'s).

    Returns:
        ``(T, 3, H, W)`` uint8 frames and ``(T, N, H, W)`` bool masks.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    motion = ClipMotion() if motion is None else motion
    height, width = image.shape[-2:]
    bounds = motion.bounds()
    start = rng.uniform(-1.0, 1.0, bounds.shape) * bounds * motion.start_fraction
    end = rng.uniform(-1.0, 1.0, bounds.shape) * bounds
    frames, warped = [], []
    for t in range(num_frames):
        alpha = t / (num_frames - 1) if num_frames > 1 else 0.0
        src, dst = _corner_motion(start + alpha * (end - start), height, width)
        frames.append(TF.perspective(tv_tensors.Image(image), src, dst).as_subclass(Tensor))
        warped.append(TF.perspective(tv_tensors.Mask(masks), src, dst).as_subclass(Tensor))
    return torch.stack(frames), torch.stack(warped)


def mask_instances(masks: Tensor, labels: Tensor, track_ids: Tensor, iscrowd: Tensor) -> Instances:
    """The objects whose mask is not empty, each boxed tightly around its mask.

    Boxes span the masks' pixel extent (``x2 = last column + 1``), the convention of the
    annotation boxes (``x + w``): :func:`~torchvision.ops.masks_to_boxes` returns the last pixel.
    """
    keep = masks.flatten(1).any(dim=1)
    boxes = masks_to_boxes(masks[keep])
    boxes[:, 2:] += 1
    return Instances(
        boxes=boxes,
        labels=labels[keep],
        track_ids=track_ids[keep],
        masks=masks[keep],
        iscrowd=iscrowd[keep],
    )


class ImageSource(Protocol):
    """Single annotated images: ``load(i)`` gives ``(image, objects)`` at the original size.

    ``image`` is ``(3, H, W)`` uint8 and ``objects`` the image's :class:`Instances` with masks,
    0-based labels of the video dataset, and crowd flags (images with no non-crowd object are
    not served).
    """

    def __len__(self) -> int: ...

    def load(self, index: int) -> tuple[Tensor, Instances]: ...


@dataclass
class _CocoImage:
    """One kept image of a COCO file, its objects' masks as compressed RLE ``counts``."""

    file_name: str
    height: int
    width: int
    rles: list[bytes]
    labels: list[int]
    iscrowd: list[bool]


class CocoImageSource:
    """Images of a COCO-format instance file, with categories mapped onto a video dataset's.

    A COCO category maps onto the video category of the same name (case-insensitive), or as
    ``category_map`` says when it is given (names are then not used). Annotations of unmapped
    categories, and those failing the training box filter (:func:`is_valid_box`), are dropped;
    images left without a non-crowd object are dropped. Segmentations (polygons, compressed or
    uncompressed RLE) are checked and stored as compressed RLE when the file is read, so a
    malformed one is reported at once and the kept annotations stay small.

    Args:
        ann_file: the COCO instance JSON (``images``, ``annotations``, ``categories``).
        image_root: folder that the images' ``file_name`` are relative to.
        dataset: the video dataset's annotations (its categories give the labels).
        category_map: ``{coco_category_id: dataset_category_id}``.

    Raises:
        FileNotFoundError: ``ann_file`` does not exist.
        ValueError: the file is malformed, ``category_map`` names an unknown category, or no
            image is left.
    """

    def __init__(
        self,
        ann_file: str | Path,
        image_root: str | Path,
        dataset: VISAnnotations,
        *,
        category_map: Mapping[int, int] | None = None,
    ) -> None:
        self.path, self.image_root = Path(ann_file), Path(image_root)
        if not self.path.is_file():
            raise FileNotFoundError(f"COCO annotation file not found: {self.path}")
        with self.path.open() as f:
            data = json.load(f)
        try:
            self.images = self._parse(data, dataset, category_map)
        except (KeyError, TypeError) as e:
            raise ValueError(f"{self.path}: not a COCO instance file ({e!r})") from e
        if not self.images:
            raise ValueError(
                f"{self.path}: no image has a non-crowd object of a category mapped onto the "
                f"video dataset's {[c.name for c in dataset.categories]}"
            )

    def _labels(
        self, data: Mapping[str, Any], dataset: VISAnnotations, category_map: Mapping | None
    ) -> dict[int, int]:
        """0-based video-dataset label of every mapped COCO category id."""
        if category_map is None:
            by_name = {c.name.lower(): c.id for c in dataset.categories}
            return {
                int(c["id"]): dataset.label(by_name[c["name"].lower()])
                for c in data["categories"]
                if c["name"].lower() in by_name
            }
        coco_ids = {int(c["id"]) for c in data["categories"]}
        dataset_ids = {c.id for c in dataset.categories}
        labels = {}
        for coco_id, dataset_id in category_map.items():
            if int(coco_id) not in coco_ids:
                raise ValueError(f"{self.path}: category_map names unknown category {coco_id}")
            if int(dataset_id) not in dataset_ids:
                raise ValueError(
                    f"category_map maps {coco_id} onto {dataset_id}, which is not a category id "
                    f"of the video dataset ({sorted(dataset_ids)})"
                )
            labels[int(coco_id)] = dataset.label(int(dataset_id))
        return labels

    def _parse(
        self, data: Mapping[str, Any], dataset: VISAnnotations, category_map: Mapping | None
    ) -> list[_CocoImage]:
        labels = self._labels(data, dataset, category_map)
        images = {img["id"]: img for img in data["images"]}
        kept: dict[int, _CocoImage] = {}
        for a in data["annotations"]:
            label = labels.get(a["category_id"])
            if label is None or not is_valid_box(a.get("bbox"), a.get("area")):
                continue
            img = images[a["image_id"]]
            h, w = int(img["height"]), int(img["width"])
            rle = to_compressed_rle(a["segmentation"], h, w)
            if list(rle["size"]) != [h, w]:
                raise ValueError(
                    f"{self.path}: annotation {a['id']} has a mask of size {list(rle['size'])}, "
                    f"its image {img['id']} is {h}x{w}"
                )
            entry = kept.setdefault(img["id"], _CocoImage(img["file_name"], h, w, [], [], []))
            entry.rles.append(rle["counts"])
            entry.labels.append(label)
            entry.iscrowd.append(bool(a.get("iscrowd", 0)))
        return [kept[i] for i in images if i in kept and not all(kept[i].iscrowd)]

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> tuple[Tensor, Instances]:
        """Image ``index`` and its mapped objects (those whose mask is not empty)."""
        entry = self.images[index]
        path = self.image_root / entry.file_name
        image = read_rgb(path)
        if tuple(image.shape[-2:]) != (entry.height, entry.width):
            raise ValueError(
                f"{path} is {image.shape[-1]}x{image.shape[-2]}, {self.path} says "
                f"{entry.width}x{entry.height}"
            )
        size = [entry.height, entry.width]
        rles = [{"size": size, "counts": counts} for counts in entry.rles]
        masks = torch.from_numpy(mask_utils.decode(rles).astype(bool)).permute(2, 0, 1)
        n = len(rles)
        return image, mask_instances(
            masks,
            torch.tensor(entry.labels, dtype=torch.int64),
            torch.arange(1, n + 1),
            torch.tensor(entry.iscrowd, dtype=torch.bool),
        )


class VideoFrameSource:
    """Every valid frame (:func:`valid_frames`) of a video training set, as a single image.

    Args:
        ann: the parsed training split, with ``image_root``.
    """

    def __init__(self, ann: VISAnnotations) -> None:
        if not ann.has_annotations:
            raise ValueError("image pseudo-clips need annotations; this split has none")
        # only load_frame is used: the resize bound of _VideoFrames does not matter here
        self.frames = _VideoFrames(ann, max_size=(1, 1))
        self.index = [(vi, t) for vi, v in enumerate(ann.videos) for t in valid_frames(v)]
        if not self.index:
            raise ValueError("no training frame has a valid box")

    def __len__(self) -> int:
        return len(self.index)

    def load(self, index: int) -> tuple[Tensor, Instances]:
        """Frame ``index`` (over all valid frames in file order) and its objects."""
        vi, t = self.index[index]
        video = self.frames.ann.videos[vi]
        return self.frames.load_frame(video, t), frame_targets(self.frames.ann, video, t)


class ImageClipDataset(Dataset):
    """Pseudo-clips of ``clip_length`` frames, one per image of ``source``.

    An image is resized (and flipped) like a video clip (:func:`transform_clip`), then moved by
    :func:`image_to_clip` at that training size: warping there costs a fraction of warping a
    full-size frame, and boxes computed from the warped masks after every geometric step match
    the masks exactly. An object whose mask leaves the image in a frame is absent from that
    frame's targets; the objects keep track ids ``1..N`` across the clip.

    A sample's ``video_id`` is ``-(i + 1)`` for image ``i`` of the source: negative, so it never
    collides with a dataset video id, and traceable to its image. ``frame_indices`` are
    ``0..T-1`` and ``video_length`` is ``T``.

    Args:
        source: the annotated images.
        clip_length: frames per pseudo-clip.
        max_size: ``(long, short)`` resize bound, as for the video clips.
        flip_prob: probability of a (clip-consistent) horizontal flip.
        motion: bounds of the random motion (default :class:`ClipMotion`'s).
    """

    def __init__(
        self,
        source: ImageSource,
        *,
        clip_length: int = 8,
        max_size: tuple[int, int] = (640, 360),
        flip_prob: float = 0.5,
        motion: ClipMotion | None = None,
    ) -> None:
        self.source, self.clip_length = source, clip_length
        self.max_size, self.flip_prob = tuple(max_size), flip_prob
        self.motion = ClipMotion() if motion is None else motion

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: int | tuple[int, int]) -> ClipSample:
        i, seed = key if isinstance(key, tuple) else (key, key)
        rng = np.random.default_rng(seed)
        image, objects = self.source.load(i)
        objects = replace(objects, track_ids=torch.arange(1, len(objects) + 1))
        height, width = image.shape[-2:]
        scale = fit_scale(height, width, self.max_size)
        out_hw = resized_hw(height, width, scale)
        flip = bool(rng.random() < self.flip_prob)
        resized, targets = transform_clip(image[None], [objects], out_hw, flip)
        assert targets is not None
        (objects,) = targets
        assert objects.masks is not None and objects.iscrowd is not None
        frames, masks = image_to_clip(resized[0], objects.masks, self.clip_length, rng, self.motion)
        return ClipSample(
            images=frames,
            targets=[
                mask_instances(m, objects.labels, objects.track_ids, objects.iscrowd) for m in masks
            ],
            video_id=-(i + 1),
            frame_indices=list(range(self.clip_length)),
            video_length=self.clip_length,
            image_size=out_hw,
            original_size=(height, width),
            scale=scale,
            flipped=flip,
        )


class MixedClipDataset(Dataset):
    """Video clips with image pseudo-clips mixed in at ``image_ratio``.

    An epoch keeps the video dataset's length. Item ``(i, seed)`` is, with probability
    ``image_ratio``, the pseudo-clip of an image drawn uniformly, and otherwise exactly the
    video clip ``(i, seed)``; both choices come from ``seed`` (through a stream independent of
    the video clip's own draws), so an item is the same whatever the worker layout.

    Args:
        videos: the clip-mode video dataset.
        images: the image pseudo-clips (same clip length).
        image_ratio: fraction of pseudo-clips, in ``[0, 1)``.
    """

    def __init__(
        self, videos: VISTrainDataset, images: ImageClipDataset, image_ratio: float
    ) -> None:
        if not 0.0 <= image_ratio < 1.0:
            raise ValueError(f"image_ratio must be in [0, 1), got {image_ratio}")
        if videos.mode != "clip":
            raise ValueError(f"the video dataset must be in clip mode, got {videos.mode!r}")
        if videos.clip_length != images.clip_length:
            raise ValueError(
                f"clip lengths differ: videos {videos.clip_length}, images {images.clip_length}"
            )
        self.videos, self.images, self.image_ratio = videos, images, image_ratio

    def __len__(self) -> int:
        return len(self.videos)

    def choice(self, seed: int) -> tuple[int, int] | None:
        """``(image index, seed)`` of the pseudo-clip that ``seed`` picks, or None (video)."""
        rng = np.random.default_rng([seed, _MIX_STREAM])
        if rng.random() >= self.image_ratio:
            return None
        return int(rng.integers(len(self.images))), int(rng.integers(2**31 - 1))

    def __getitem__(self, key: int | tuple[int, int]) -> ClipSample:
        i, seed = key if isinstance(key, tuple) else (key, key)
        image_key = self.choice(seed)
        return self.videos[(i, seed)] if image_key is None else self.images[image_key]
