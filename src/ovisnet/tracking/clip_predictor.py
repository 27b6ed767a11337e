"""Streamed whole-video inference for STEm-Seg (SPEC-models.md §7.4).

Frames arrive one at a time in temporal order, as for :class:`~ovisnet.tracking.predictor.
VideoPredictor`. Each frame's backbone runs once and its features wait until the last sub-clip
that contains it has run its heads (sub-clips of ``clip_length`` frames overlapping by
``overlap``, :func:`~ovisnet.data.sampling.inference_clips`). A sub-clip is clustered as soon as
every sub-clip sharing one of its frames has run, because a frame's foreground and class
logits are the mean over all the sub-clips that contain it. The clusters are linked to the
video's tracks by :class:`~ovisnet.tracking.clustering.ClipStitcher`; a frame whose labels can no
longer change is written at once: its track masks become RLE at the original resolution and the
track's pixel count and class-logit sum are accumulated. Only the features, head outputs and
label maps of the frames still shared with future sub-clips are held, so memory is flat in the
video length.

At the end (:meth:`ClipPredictor.finalize`) tracks are ranked by lifetime (last − first frame)
and the ``max_tracks`` longest kept; a track's score is its pixel count over the largest pixel
count among the kept tracks and its category the argmax of its mean class logits (background
removed), as the official code does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ovisnet.data.sampling import inference_clips
from ovisnet.evaluation.formatting import VideoResultBuilder, encode_mask
from ovisnet.evaluation.masks import RLE
from ovisnet.structures import ClipBatch, FeatureMaps, Instances
from ovisnet.tracking.clustering import ClipStitcher, cluster_pixels
from ovisnet.tracking.predictor import video_of


class ClipModel(Protocol):
    """What the clip predictor needs from a model (:class:`~ovisnet.models.stemseg.STEmSeg`)."""

    def extract_features(
        self, images: Tensor, image_sizes: list[tuple[int, int]] | None = None
    ) -> FeatureMaps: ...

    def clip_outputs(self, frames: list[FeatureMaps]) -> Any: ...


@dataclass(frozen=True)
class ClusteringConfig:
    """Clustering, stitching and track-selection settings (SPEC §7.4, §7.5, §8 items 9–11).

    Attributes:
        fg_thresh: a pixel is foreground (clustered) where the sigmoid of its mean foreground
            logit exceeds this.
        seed_thresh: a cluster starts only at a pixel of seediness ≥ this.
        primary_thresh: unassigned pixels with probability > this join the current cluster.
        secondary_thresh: leftover pixels join their nearest cluster above this probability.
        max_clusters: clusters per sub-clip (official 20).
        distance: ``"sqrt"`` (the official clusterer's ``exp(-½ sqrt(d²))``, the default: it
            scored 3–5 AP higher on independent synthetic sets, see the README) or
            ``"squared"`` (``exp(-½ d²)``, the probability the training loss uses).
        secondary: ``"nearest"`` (default) or ``"official"`` (the official code's choice).
        min_iou: stitching IoU below which clips are not linked (0: the official rule).
        max_tracks: tracks kept per video, the longest-lived (official 10 for YouTube-VIS).
        mask_thresh: threshold of the upsampled track masks.
    """

    fg_thresh: float = 0.5
    seed_thresh: float = 0.8
    primary_thresh: float = 0.5
    secondary_thresh: float = 0.3
    max_clusters: int = 20
    distance: str = "sqrt"
    secondary: str = "nearest"
    min_iou: float = 0.0
    max_tracks: int = 10
    mask_thresh: float = 0.5


@dataclass
class _Track:
    pixels: int = 0
    class_sum: Tensor | None = None
    first: int = -1
    last: int = -1
    masks: dict[int, RLE] = field(default_factory=dict)


@dataclass
class _ClipOutput:
    frames: list[int]  # unique frames of the sub-clip, increasing
    embeddings: Tensor  # (T', E, h, w)
    bandwidths: Tensor  # (T', E, h, w)
    seediness: Tensor  # (T', h, w)


class ClipPredictor:
    """STEm-Seg inference of one video, frame after frame (module docstring).

    Args:
        model: ``extract_features`` (one frame) and ``clip_outputs`` (one sub-clip).
        video_id: dataset id of the video.
        length: number of frames.
        image_size: ``(h, w)`` of the resized frames inside the canvas.
        original_size: ``(H, W)`` of the original frames.
        category_ids: dataset category id of each 0-based label.
        clip_length: frames per sub-clip (``T``, 8 in the paper).
        overlap: frames shared by consecutive sub-clips (4 in the paper).
        config: clustering and track settings.
    """

    def __init__(
        self,
        model: ClipModel,
        *,
        video_id: int,
        length: int,
        image_size: tuple[int, int],
        original_size: tuple[int, int],
        category_ids: Sequence[int],
        clip_length: int = 8,
        overlap: int = 4,
        config: ClusteringConfig | None = None,
    ) -> None:
        self.model = model
        self.video_id, self.length = video_id, length
        self.image_size, self.original_size = image_size, original_size
        self.category_ids = list(category_ids)
        self.config = config or ClusteringConfig()
        self.clips = inference_clips(length, clip_length, overlap)
        self.last_clip = {f: k for k, clip in enumerate(self.clips) for f in clip}
        self.stitcher = ClipStitcher(min_iou=self.config.min_iou)
        self.features: dict[int, FeatureMaps] = {}
        self.outputs: dict[int, _ClipOutput] = {}
        self.semantic: dict[int, list[Any]] = {}  # frame -> [class sum, fg sum, count]
        self.tracks: dict[int, _Track] = {}
        self.next_frame = 0  # next frame to arrive
        self.next_run = 0  # next sub-clip whose heads run
        self.next_cluster = 0  # next sub-clip to cluster
        self.written = 0  # frames written

    @classmethod
    def for_video(
        cls, batch: ClipBatch, model: ClipModel, category_ids: Sequence[int], **kwargs: Any
    ) -> ClipPredictor:
        """A predictor for the video of an evaluation batch (one frame of one video)."""
        return cls(model, **video_of(batch), category_ids=category_ids, **kwargs)

    @property
    def done(self) -> bool:
        """Whether every frame has been written."""
        return self.written == self.length

    @torch.no_grad()
    def push(self, image: Tensor, target: Instances | None = None) -> None:
        """Add the next frame: ``(3, H, W)`` uint8 canvas image (``target`` is not used)."""
        if self.next_frame >= self.length:
            raise ValueError(f"video {self.video_id}: more than {self.length} frames")
        features = self.model.extract_features(image[None], [self.image_size])
        self.features[self.next_frame] = features
        self.next_frame += 1
        while self.next_run < len(self.clips) and max(self.clips[self.next_run]) < self.next_frame:
            self._run(self.next_run)
            self.next_run += 1
            keep_from = self.clips[self.next_run][0] if self.next_run < len(self.clips) else None
            for f in [f for f in self.features if keep_from is None or f < keep_from]:
                del self.features[f]
            while self.next_cluster < self.next_run and all(
                self.last_clip[f] < self.next_run for f in self.clips[self.next_cluster]
            ):
                self._cluster(self.next_cluster)
                self.next_cluster += 1

    def _run(self, k: int) -> None:
        """Heads on sub-clip ``k``; accumulate its frames' semantic and foreground logits."""
        frames = self.clips[k]
        out = self.model.clip_outputs([self.features[f] for f in frames])
        last = {f: i for i, f in enumerate(frames)}  # a padded short clip repeats frame 0
        unique = sorted(last)
        index = torch.tensor([last[f] for f in unique], device=out.seediness.device)
        semantic = out.semantic[0].float().index_select(1, index)
        foreground = out.foreground[0].float().index_select(0, index)
        for i, f in enumerate(unique):
            acc = self.semantic.setdefault(f, [0.0, 0.0, 0])
            acc[0] = acc[0] + semantic[:, i]
            acc[1] = acc[1] + foreground[i]
            acc[2] += 1
        self.outputs[k] = _ClipOutput(
            frames=unique,
            embeddings=out.embeddings[0].float().index_select(1, index).transpose(0, 1),
            bandwidths=out.bandwidths[0].float().index_select(1, index).transpose(0, 1),
            seediness=out.seediness[0].float().index_select(0, index),
        )

    def _cluster(self, k: int) -> None:
        """Cluster sub-clip ``k``'s foreground pixels and stitch them to the video's tracks."""
        out = self.outputs.pop(k)
        cfg = self.config
        fg = torch.stack(
            [
                torch.sigmoid(self.semantic[f][1] / self.semantic[f][2]) > cfg.fg_thresh
                for f in out.frames
            ]
        )
        labels = torch.full(fg.shape, -1, dtype=torch.int64, device=fg.device)
        labels[fg] = cluster_pixels(
            out.embeddings.permute(0, 2, 3, 1)[fg],
            out.bandwidths.permute(0, 2, 3, 1)[fg],
            out.seediness[fg],
            seed_thresh=cfg.seed_thresh,
            primary_thresh=cfg.primary_thresh,
            secondary_thresh=cfg.secondary_thresh,
            max_clusters=cfg.max_clusters,
            distance=cfg.distance,
            secondary=cfg.secondary,
        )
        final_before = self.clips[k + 1][0] if k + 1 < len(self.clips) else self.length
        for frame, label_map in self.stitcher.push(out.frames, labels, final_before):
            self._write(frame, label_map)

    def _write(self, frame: int, labels: Tensor) -> None:
        """A frame whose labels are final: accumulate its tracks and store their RLE masks."""
        class_sum, _, count = self.semantic.pop(frame)
        self.written += 1
        ids = torch.unique(labels[labels >= 0])
        if ids.numel() == 0:
            return
        onehot = labels[None] == ids[:, None, None]  # (K, h, w)
        pixels = onehot.flatten(1).sum(1).tolist()
        # Σ over a track's pixels of the frame's mean class logits, background removed
        sums = (onehot.flatten(1).float() @ (class_sum[1:] / count).flatten(1).T).cpu()
        masks = self._to_original(onehot)
        for i, track_id in enumerate(ids.tolist()):
            track = self.tracks.setdefault(track_id, _Track(first=frame))
            track.pixels += pixels[i]
            track.class_sum = sums[i] if track.class_sum is None else track.class_sum + sums[i]
            track.last = frame
            track.masks[frame] = encode_mask(masks[i])

    def _to_original(self, onehot: Tensor, chunk: int = 8) -> np.ndarray:
        """Stride-4 ``(K, h, w)`` masks → original-resolution bool masks (bilinear, threshold)."""
        h4, w4 = onehot.shape[-2:]
        h, w = self.image_size
        out = []
        for part in onehot.split(chunk):
            up = F.interpolate(part[:, None].float(), size=(4 * h4, 4 * w4), mode="bilinear")
            up = F.interpolate(up[:, :, :h, :w], size=self.original_size, mode="bilinear")
            out.append((up[:, 0] > self.config.mask_thresh).cpu())
        return torch.cat(out).numpy()

    def finalize(self) -> list[dict[str, Any]]:
        """The video's result entries (call once every frame was pushed)."""
        if not self.done:
            raise RuntimeError(
                f"video {self.video_id}: {self.written} of {self.length} frames written"
            )
        ranked = sorted(
            self.tracks, key=lambda i: (-(self.tracks[i].last - self.tracks[i].first), i)
        )
        kept = ranked[: self.config.max_tracks]
        builder = VideoResultBuilder(self.video_id, self.length)
        if not kept:
            return []
        largest = max(self.tracks[i].pixels for i in kept)
        for track_id in kept:
            track = self.tracks[track_id]
            assert track.class_sum is not None
            category = self.category_ids[int(track.class_sum.argmax())]
            score = track.pixels / largest
            for frame, rle in track.masks.items():
                builder.add(track_id, frame, score, category, rle)
        return builder.finalize()
