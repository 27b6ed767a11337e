"""Map-style datasets over parsed OVIS / YouTube-VIS annotations.

* :class:`VISTrainDataset` serves training samples: query + reference pairs (MaskTrack family)
  or clips of ``T`` frames (STEm-Seg). Its index may be ``(i, seed)`` so that the random draws of
  a sample (reference frame, clip start, flip) come from a per-sample seed chosen by
  :class:`SeededSampler`: the same seed gives the same sample whatever the worker layout.
* :class:`VISFrameDataset` serves single frames of whole videos in temporal order for streamed
  evaluation; :class:`VideoSequentialSampler` hands each rank whole videos, so under DDP every
  video is evaluated exactly once and a 1000-frame video never sits in memory.
* A frame that is missing, cannot be decoded or does not have the annotated size raises
  :class:`BadFrameError` naming the video and the file; :func:`find_bad_frames` checks a whole
  split before training, and :class:`SkipBadSamples` lets training replace such samples.
* :class:`ResumableLoader` lets Lightning checkpoint the position of :class:`SeededSampler`
  inside an epoch, so a run resumed from a mid-epoch checkpoint trains on the same samples.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from ovisnet.data.annotations import Video, VISAnnotations
from ovisnet.data.sampling import sample_clip, sample_reference_frame
from ovisnet.data.transforms import fit_scale, resized_hw, transform_clip
from ovisnet.structures import ClipBatch, ClipSample, Instances, collate_clips

# What PIL raises for a missing, truncated or otherwise broken image (SyntaxError: some plugins'
# parse errors; DecompressionBombError: a frame too large to be a sane image).
_READ_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class BadFrameError(OSError):
    """A frame (or image) file that is missing, cannot be decoded or has the wrong size.

    The message names the video (id and folder), the frame index and the file; ``path`` is the
    file. Evaluation always stops with it; training skips the sample with ``data.bad_frames=skip``.
    """

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


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


def _decode(path: Path) -> np.ndarray:
    """The ``(H, W, 3)`` uint8 RGB pixels of an image file (PIL's errors pass through)."""
    with Image.open(path) as img:
        return np.array(img.convert("RGB"))


def _reason(error: BaseException) -> str:
    if isinstance(error, FileNotFoundError):
        return "file missing"
    return f"{error} ({type(error).__name__})"


def read_rgb(path: Path, where: str = "") -> torch.Tensor:
    """An image file as a ``(3, H, W)`` uint8 RGB tensor.

    Raises:
        BadFrameError: the file is missing or cannot be decoded; the message is ``where``
            (e.g. ``"video 3 (abc): frame 7: "``), the path and PIL's reason.
    """
    try:
        pixels = _decode(path)
    except _READ_ERRORS as e:
        raise BadFrameError(f"{where}cannot read {path}: {_reason(e)}", path=str(path)) from None
    return torch.from_numpy(pixels).permute(2, 0, 1)


def frame_where(video: Video, t: int) -> str:
    """``"video 12 (abc123): frame 7: "``: the prefix of every message about a frame."""
    folder = Path(video.file_names[t]).parent.as_posix() if video.file_names else "."
    name = f"video {video.id}" if folder == "." else f"video {video.id} ({folder})"
    return f"{name}: frame {t}: "


def _size_problem(video: Video, path: Path, height: int, width: int) -> str | None:
    if (height, width) == (video.height, video.width):
        return None
    return f"{path} is {width}x{height}, the annotation says {video.width}x{video.height}"


class BadFrame(NamedTuple):
    """An unusable frame found by :func:`find_bad_frames`; ``message``: what loading it raises."""

    video_id: int
    frame: int
    path: Path
    message: str


def find_bad_frames(
    ann: VISAnnotations,
    *,
    decode: bool = True,
    workers: int | None = None,
    progress: bool = True,
    desc: str = "checking frames",
) -> list[BadFrame]:
    """Every frame of ``ann`` that training or evaluation could not use, in file order.

    With ``decode`` each frame is decoded exactly as :func:`read_rgb` does (missing, truncated,
    undecodable or of another size than annotated); without, only its existence is checked (one
    ``stat``). Frames are checked in a thread pool (``workers`` threads; None: Python's default,
    ``min(32, cores + 4)``; PIL decodes without holding the GIL) behind a tqdm progress bar.
    """
    jobs = [(v, t, ann.frame_path(v, t)) for v in ann.videos for t in range(v.length)]

    def check(job: tuple[Video, int, Path]) -> BadFrame | None:
        video, t, path = job
        if not decode:
            problem = None if path.is_file() else f"cannot read {path}: file missing"
        else:
            try:
                problem = _size_problem(video, path, *_decode(path).shape[:2])
            except _READ_ERRORS as e:
                problem = f"cannot read {path}: {_reason(e)}"
        if problem is None:
            return None
        return BadFrame(video.id, t, path, frame_where(video, t) + problem)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(check, jobs)
        checked = tqdm(results, total=len(jobs), desc=desc, unit="frame", disable=not progress)
        return [bad for bad in checked if bad is not None]


def bad_frames_report(bad: Sequence[BadFrame], source: str, limit: int = 20) -> str:
    """``N bad frames in SOURCE:`` and the first ``limit`` messages, one per line."""
    lines = [f"{len(bad)} bad frame(s) in {source}:", *(f"  {b.message}" for b in bad[:limit])]
    if len(bad) > limit:
        lines.append(f"  ... and {len(bad) - limit} more")
    return "\n".join(lines)


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
        image = read_rgb(path, frame_where(video, t))
        problem = _size_problem(video, path, *image.shape[-2:])
        if problem is not None:
            raise BadFrameError(frame_where(video, t) + problem, path=str(path))
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


class SkipBadSamples(Dataset):
    """Training items whose bad frames are replaced by the next readable item (bad_frames=skip).

    Item ``(i, seed)`` is ``dataset[(i, seed)]`` when all its frames read, otherwise the first
    readable one of ``(i + 1, seed)``, ``(i + 2, seed)``, ... (wrapping around): it depends only
    on the key and the files, so runs stay reproducible and resumable whatever the worker layout.
    Items are ``(sample, skipped)``, ``skipped`` the :class:`BadFrameError` message of item ``i``
    when it was replaced (else None); :func:`collate_skipping` carries the messages to the
    training step, which counts them, so the count is right with any number of loader workers.

    Raises:
        BadFrameError: every item has a bad frame.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[ClipSample, str | None]:
        i, seed = key if isinstance(key, tuple) else (key, key)
        skipped: str | None = None
        for k in range(len(self)):
            try:
                return self.dataset[((i + k) % len(self), seed)], skipped
            except BadFrameError as e:
                skipped = skipped or str(e)
        raise BadFrameError(f"every training sample has a bad frame, e.g. {skipped}")


@dataclass
class SkippingBatch(ClipBatch):
    """A training batch under ``data.bad_frames=skip``: ``skipped`` holds one message (video,
    frame, file, reason) per sample of the batch that replaced one with a bad frame."""

    skipped: list[str] = field(default_factory=list)


def collate_skipping(
    items: list[tuple[ClipSample, str | None]], size_divisor: int = 32
) -> SkippingBatch:
    """:func:`collate_clips` of the items of :class:`SkipBadSamples`, keeping what was skipped."""
    batch = collate_clips([sample for sample, _ in items], size_divisor=size_divisor)
    values = {f.name: getattr(batch, f.name) for f in fields(batch)}
    return SkippingBatch(**values, skipped=[message for _, message in items if message])


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
    :meth:`resume` makes the next pass over an epoch start part-way (a mid-epoch resume; the
    length stays the epoch's, as Lightning counts the batches already trained on).
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
        self.start: tuple[int, int] | None = None  # (epoch, item) where the next pass begins
        auto_rank, auto_world = _dist_rank_world()
        self.rank = auto_rank if rank is None else rank
        self.world_size = auto_world if world_size is None else world_size

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation and seeds of ``epoch``."""
        self.epoch = epoch

    def resume(self, epoch: int, start: int) -> None:
        """Start the next pass at item ``start`` of this rank's order of ``epoch``.

        Applies once, and only if that pass is over ``epoch`` (a checkpoint saved at the end of
        an epoch resumes at the next epoch, which then starts at its beginning).
        """
        self.epoch, self.start = epoch, (epoch, start)

    def __len__(self) -> int:
        return -(-self.num_samples // self.world_size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.num_samples) if self.shuffle else np.arange(self.num_samples)
        seeds = rng.integers(0, 2**31 - 1, size=self.num_samples)
        total = len(self) * self.world_size
        order = np.resize(order, total)[self.rank :: self.world_size]
        start, self.start = self.pending_start(), None
        return iter([(int(i), int(seeds[i])) for i in order[start:]])

    def pending_start(self) -> int:
        """Where the next pass starts in this rank's order (see :meth:`resume`)."""
        return self.start[1] if self.start is not None and self.start[0] == self.epoch else 0


class ResumableLoader(DataLoader):
    """A training DataLoader over a :class:`SeededSampler` whose position Lightning checkpoints.

    Lightning stores :meth:`state_dict` (the epoch and the samples of it trained on) in every
    checkpoint and, resuming in the middle of an epoch, calls :meth:`load_state_dict` before it
    iterates: the sampler then continues that epoch where the interrupted run stopped, with the
    same per-sample seeds, so no sample is repeated or skipped. Samples are counted as batches
    leave the loader: Lightning takes a batch from a loader of known length only to train on it.

    Iteration starts at the first batch, not at ``iter()``: Lightning calls ``iter()`` before the
    sampler's ``set_epoch`` (and not again for the first epoch of a resumed run), and worker
    processes would otherwise draw their first indices from the wrong epoch's order. Give the
    loader its own ``generator``: then creating workers never draws from torch's global random
    state, which a resumed run restores from the checkpoint.
    """

    _position: tuple[int, int] = (0, 0)

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        sampler = self.sampler
        assert isinstance(sampler, SeededSampler) and self.batch_size is not None
        epoch, samples = sampler.epoch, sampler.pending_start()
        self._position = (epoch, samples)
        for batch in super().__iter__():
            samples += self.batch_size
            self._position = (epoch, samples)
            yield batch

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "samples"}``: the epoch in progress and this rank's samples of it used."""
        epoch, samples = self._position
        return {"epoch": epoch, "samples": samples}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue epoch ``state["epoch"]`` after its first ``state["samples"]`` samples."""
        assert isinstance(self.sampler, SeededSampler)
        self.sampler.resume(state["epoch"], state["samples"])


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
