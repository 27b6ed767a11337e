"""Map-style datasets over parsed OVIS / YouTube-VIS annotations.

* :class:`VISTrainDataset` serves training samples: query + reference pairs (MaskTrack family)
  or clips of ``T`` frames (STEm-Seg). Its index may be ``(i, seed)`` so that the random draws of
  a sample (reference frame, clip start, flip) come from a per-sample seed chosen by
  :class:`SeededSampler`: the same seed gives the same sample whatever the worker layout.
* :class:`VISFrameDataset` serves single frames of whole videos in temporal order for streamed
  evaluation; :class:`VideoSequentialSampler` hands each rank whole videos, so under DDP every
  video is evaluated exactly once and a 1000-frame video never sits in memory.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from torch.utils.data import Dataset, Sampler

from ovisnet.data.annotations import Video, VISAnnotations
from ovisnet.data.sampling import sample_clip, sample_reference_frame
from ovisnet.data.transforms import fit_scale, resized_hw, transform_clip
from ovisnet.structures import ClipSample, Instances


def is_valid_box(box: Sequence[float] | None, area: float | None) -> bool:
    """The mmdet GT filter (SPEC §1.1): box present, positive area, ``w >= 1`` and ``h >= 1``."""
    return box is not None and (area is None or area > 0) and box[2] >= 1 and box[3] >= 1


def frame_targets(ann: VISAnnotations, video: Video, t: int, with_masks: bool = True) -> Instances:
    """Ground truth of frame ``t`` at the original resolution (objects with a valid box)."""
    rows = [tr for tr in video.tracks if is_valid_box(tr.bboxes[t], tr.areas[t])]
    if not rows:
        return Instances.empty(video.height, video.width, with_masks)
    xywh = torch.tensor([tr.bboxes[t] for tr in rows], dtype=torch.float32)
    boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
    masks = None
    if with_masks:
        masks = torch.zeros(len(rows), video.height, video.width, dtype=torch.bool)
        for i, tr in enumerate(rows):
            m = tr.mask(t)
            if m is not None:
                masks[i] = torch.from_numpy(m)
    return Instances(
        boxes=boxes,
        labels=torch.tensor([ann.label(tr.category_id) for tr in rows], dtype=torch.int64),
        track_ids=torch.tensor([tr.id for tr in rows], dtype=torch.int64),
        masks=masks,
        iscrowd=torch.tensor([tr.iscrowd for tr in rows], dtype=torch.bool),
    )


def read_rgb(path: Path) -> torch.Tensor:
    """An image file as a ``(3, H, W)`` uint8 RGB tensor."""
    with Image.open(path) as img:
        return torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)


def valid_frames(video: Video) -> list[int]:
    """Frames with at least one valid non-crowd box (the only ones used for training)."""
    return [
        t
        for t in range(video.length)
        if any(not tr.iscrowd and is_valid_box(tr.bboxes[t], tr.areas[t]) for tr in video.tracks)
    ]


class _VideoFrames:
    """Shared frame loading: decode, check the size against the annotation, resize, flip."""

    def __init__(self, ann: VISAnnotations, max_size: tuple[int, int]) -> None:
        if ann.image_root is None:
            raise ValueError("the annotations have no image_root: pass it to load_annotations()")
        self.ann = ann
        self.max_size = tuple(max_size)

    def load_frame(self, video: Video, t: int) -> torch.Tensor:
        path = self.ann.frame_path(video, t)
        if not path.is_file():
            raise FileNotFoundError(f"video {video.id}: frame {t} file missing: {path}")
        image = read_rgb(path)
        if tuple(image.shape[-2:]) != (video.height, video.width):
            raise ValueError(
                f"video {video.id}: frame {t} ({path}) is {image.shape[-1]}x{image.shape[-2]}, "
                f"the annotation says {video.width}x{video.height}"
            )
        return image

    def make_sample(self, video: Video, frames: list[int], flip: bool) -> ClipSample:
        images = torch.stack([self.load_frame(video, t) for t in frames])
        targets = (
            [frame_targets(self.ann, video, t) for t in frames]
            if self.ann.has_annotations
            else None
        )
        scale = fit_scale(video.height, video.width, self.max_size)
        out_hw = resized_hw(video.height, video.width, scale)
        images, targets = transform_clip(images, targets, out_hw, flip)
        return ClipSample(
            images=images,
            targets=targets,
            video_id=video.id,
            frame_indices=list(frames),
            video_length=video.length,
            image_size=out_hw,
            original_size=(video.height, video.width),
            scale=scale,
            flipped=flip,
        )


class VISTrainDataset(Dataset):
    """Training samples: ``pair`` = [query, reference] (MaskTrack family), ``clip`` = T frames.

    Pair mode has one sample per valid frame (SPEC §1.4: an epoch is a pass over all annotated
    frames with at least one valid box), its reference drawn within ``±eps_train`` among valid
    frames. Clip mode has one sample per valid frame too (samples ∝ video length, SPEC §7.3),
    each a clip of ``clip_length`` frames drawn by :func:`sample_clip` in that video.

    Args:
        ann: parsed annotations with ``image_root``.
        mode: ``"pair"`` or ``"clip"``.
        max_size: ``(long, short)`` resize bound, e.g. ``(640, 360)``.
        eps_train: reference distance bound (None: whole video).
        clip_length: frames per clip in clip mode.
        flip_prob: probability of a (clip-consistent) horizontal flip.
    """

    def __init__(
        self,
        ann: VISAnnotations,
        *,
        mode: str = "pair",
        max_size: tuple[int, int] = (640, 360),
        eps_train: int | None = 5,
        clip_length: int = 8,
        flip_prob: float = 0.5,
    ) -> None:
        if mode not in ("pair", "clip"):
            raise ValueError(f"mode must be 'pair' or 'clip', got {mode!r}")
        if not ann.has_annotations:
            raise ValueError("training needs annotations; this split has 'annotations': null")
        self.frames = _VideoFrames(ann, max_size)
        self.mode, self.eps_train, self.clip_length = mode, eps_train, clip_length
        self.flip_prob = flip_prob
        self.valid = [valid_frames(v) for v in ann.videos]
        self.index = [(vi, t) for vi, frames in enumerate(self.valid) for t in frames]
        if not self.index:
            raise ValueError("no training frame has a valid box")

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key: int | tuple[int, int]) -> ClipSample:
        i, seed = key if isinstance(key, tuple) else (key, key)
        rng = np.random.default_rng(seed)
        vi, t = self.index[i]
        video = self.frames.ann.videos[vi]
        if self.mode == "pair":
            ref = sample_reference_frame(t, video.length, self.eps_train, rng, self.valid[vi])
            frames = [t, ref]
        else:
            frames = sample_clip(video.length, self.clip_length, rng)
        flip = bool(rng.random() < self.flip_prob)
        return self.frames.make_sample(video, frames, flip)


class VISFrameDataset(Dataset):
    """Every frame of every video, in file order, one frame per item (streamed evaluation)."""

    def __init__(self, ann: VISAnnotations, *, max_size: tuple[int, int] = (640, 360)) -> None:
        self.frames = _VideoFrames(ann, max_size)
        lengths = [v.length for v in ann.videos]
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).tolist()

    def __len__(self) -> int:
        return self.offsets[-1]

    def locate(self, index: int) -> tuple[int, int]:
        """``(video position, frame index)`` of a flat frame index."""
        vi = bisect.bisect_right(self.offsets, index) - 1
        return vi, index - self.offsets[vi]

    def __getitem__(self, index: int) -> ClipSample:
        vi, t = self.locate(index)
        return self.frames.make_sample(self.frames.ann.videos[vi], [t], flip=False)


def _dist_rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class SeededSampler(Sampler):
    """Shuffled training order yielding ``(index, per-sample seed)``, sharded across ranks.

    The order and the seeds depend only on ``(seed, epoch)``, so a run is reproducible and an
    exact resume replays the same samples. Lightning calls :meth:`set_epoch` every epoch. Ranks
    take interleaved slices of one permutation (padded by wrap-around to equal length).
    """

    def __init__(
        self,
        num_samples: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        self.num_samples, self.shuffle, self.seed, self.epoch = num_samples, shuffle, seed, 0
        auto_rank, auto_world = _dist_rank_world()
        self.rank = auto_rank if rank is None else rank
        self.world_size = auto_world if world_size is None else world_size

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation and seeds of ``epoch``."""
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.num_samples // self.world_size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.num_samples) if self.shuffle else np.arange(self.num_samples)
        seeds = rng.integers(0, 2**31 - 1, size=self.num_samples)
        total = len(self) * self.world_size
        order = np.resize(order, total)[self.rank :: self.world_size]
        return iter([(int(i), int(seeds[i])) for i in order])


class VideoSequentialSampler(Sampler):
    """Frames of whole videos in temporal order; under DDP each rank gets whole videos.

    Videos are assigned greedily (longest first, to the rank with the fewest frames so far), so
    every video is evaluated once, by one rank, frame after frame.
    """

    def __init__(
        self, dataset: VISFrameDataset, rank: int | None = None, world_size: int | None = None
    ) -> None:
        auto_rank, auto_world = _dist_rank_world()
        rank = auto_rank if rank is None else rank
        world_size = auto_world if world_size is None else world_size
        offsets = dataset.offsets
        lengths = [offsets[i + 1] - offsets[i] for i in range(len(offsets) - 1)]
        load = [0] * world_size
        mine = []
        for vi in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
            r = min(range(world_size), key=lambda k: (load[k], k))
            load[r] += lengths[vi]
            if r == rank:
                mine.append(vi)
        self.indices = [f for vi in sorted(mine) for f in range(offsets[vi], offsets[vi + 1])]

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)
