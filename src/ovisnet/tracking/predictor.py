"""Streamed whole-video inference for the MaskTrack family (SPEC-models.md §2.3, §3.3).

Frames arrive one at a time in temporal order. Each frame's backbone runs exactly once; its
features wait in a window of ``±eps_test`` frames, so frame ``t`` is detected as soon as frame
``t + eps_test`` (or the end of the video) has arrived, with the references of
:func:`~ovisnet.data.sampling.reference_frames`. Outputs are pasted back to the original
resolution and kept only as RLE by :class:`~ovisnet.evaluation.formatting.VideoResultBuilder`,
so memory stays flat in the video length.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from ovisnet.data.sampling import reference_frames
from ovisnet.evaluation.formatting import VideoResultBuilder
from ovisnet.structures import ClipBatch, FeatureMaps, Instances
from ovisnet.tracking.tracker import OnlineTracker, oracle_detections


def video_of(batch: ClipBatch) -> dict[str, Any]:
    """``video_id``, ``length``, ``image_size`` and ``original_size`` of an evaluation batch's
    video (one frame of one video), the arguments every streamed predictor is built with."""
    return {
        "video_id": batch.video_ids[0],
        "length": batch.video_lengths[0],
        "image_size": batch.image_sizes[0],
        "original_size": batch.original_sizes[0],
    }


class StreamPredictor(Protocol):
    """The one interface of every family's streamed whole-video inference.

    :class:`VideoPredictor` (box families: frame by frame + online tracker) and
    :class:`~ovisnet.tracking.clip_predictor.ClipPredictor` (STEm-Seg: sub-clips, clustering,
    stitching) both take a video's frames in temporal order and return its result entries; the
    Lightning system, ``ovisnet.eval`` and the benchmarks only use this.
    """

    @property
    def done(self) -> bool:
        """Whether every frame has been pushed and processed."""
        ...

    def push(self, image: Tensor, target: Instances | None = None) -> None:
        """Add the next frame (``(3, H, W)`` uint8 canvas) and, for oracle runs, its truth."""
        ...

    def finalize(self) -> list[dict[str, Any]]:
        """The video's ``results.json`` entries (once :attr:`done`)."""
        ...


class TrackingDetector(Protocol):
    """What the predictor needs from a model (MaskTrack R-CNN, CMaskTrack R-CNN)."""

    calibration: Any

    def extract_features(
        self, images: Tensor, image_sizes: list[tuple[int, int]] | None = None
    ) -> FeatureMaps: ...

    def detect(
        self,
        query_feats: FeatureMaps,
        image_sizes: list[tuple[int, int]],
        reference_feats: list[FeatureMaps] | None = None,
    ) -> list[Instances]: ...

    def embed(self, features: FeatureMaps, boxes: list[Tensor]) -> list[Tensor]: ...


def masks_to_original(
    masks: Tensor, image_size: tuple[int, int], original_size: tuple[int, int]
) -> Tensor:
    """Canvas-resolution bool masks ``(N, H, W)`` → original resolution (crop padding, resize)."""
    h, w = image_size
    cropped = masks[:, :h, :w].float()[:, None]
    if cropped.shape[0] == 0:
        return torch.zeros(0, *original_size, dtype=torch.bool, device=masks.device)
    return F.interpolate(cropped, size=original_size, mode="nearest")[:, 0] > 0.5


class VideoPredictor:
    """Online detection, tracking and result formatting of one video, frame after frame.

    Args:
        model: the detector (``extract_features`` / ``detect`` / ``embed``).
        tracker: the video's fresh :class:`OnlineTracker`.
        paste: turns one frame's detections into original-resolution bool masks, e.g.
            ``functools.partial(paste_masks, ...)`` of the model family.
        video_id: dataset id of the video.
        length: number of frames.
        image_size: ``(h, w)`` of the resized frames inside the canvas.
        original_size: ``(H, W)`` of the original frames.
        category_ids: dataset category id of each 0-based label.
        eps_test: reference distance ε_test (only used by models with calibration).
        oracle: feed each frame's ground truth (boxes, masks, classes, score 1) to the tracker
            instead of the detections (the OVIS paper's oracle experiment).
    """

    def __init__(
        self,
        model: TrackingDetector,
        tracker: OnlineTracker,
        paste: Callable[..., Instances],
        *,
        video_id: int,
        length: int,
        image_size: tuple[int, int],
        original_size: tuple[int, int],
        category_ids: Sequence[int],
        eps_test: int = 3,
        oracle: bool = False,
    ) -> None:
        self.model, self.tracker, self.paste = model, tracker, paste
        self.length, self.image_size, self.original_size = length, image_size, original_size
        self.category_ids = list(category_ids)
        self.use_references = getattr(model, "calibration", None) is not None
        self.eps = eps_test if self.use_references else 0
        self.oracle = oracle
        self.builder = VideoResultBuilder(video_id, length)
        self.features: dict[int, FeatureMaps] = {}
        self.targets: dict[int, Instances | None] = {}
        self.next_frame = 0  # next frame to arrive
        self.next_output = 0  # next frame to detect and track

    @classmethod
    def for_video(
        cls,
        batch: ClipBatch,
        model: TrackingDetector,
        tracker: OnlineTracker,
        paste: Callable[..., Instances],
        category_ids: Sequence[int],
        **kwargs: Any,
    ) -> VideoPredictor:
        """A predictor for the video of an evaluation batch (one frame of one video).

        ``video_id``, ``length``, ``image_size`` and ``original_size`` come from the batch;
        ``kwargs`` are ``eps_test`` / ``oracle``.
        """
        return cls(model, tracker, paste, **video_of(batch), category_ids=category_ids, **kwargs)

    @property
    def done(self) -> bool:
        """Whether every frame has been processed."""
        return self.next_output == self.length

    @torch.no_grad()
    def push(self, image: Tensor, target: Instances | None = None) -> None:
        """Add the next frame: ``(3, H, W)`` uint8 canvas image and its ground truth (oracle)."""
        if self.next_frame >= self.length:
            raise ValueError(f"video {self.builder.video_id}: more than {self.length} frames")
        if self.oracle and target is None:
            raise ValueError("oracle inference needs the ground truth of every frame")
        t = self.next_frame
        self.features[t] = self.model.extract_features(image[None], [self.image_size])
        self.targets[t] = target
        self.next_frame += 1
        last = self.length - 1
        while self.next_output < self.length and (
            self.next_output + self.eps < self.next_frame or self.next_frame - 1 == last
        ):
            self._process(self.next_output)
            self.next_output += 1
            self._evict()

    def _evict(self) -> None:
        keep_from = self.next_output - self.eps
        for t in [t for t in self.features if t < keep_from]:
            del self.features[t]
            self.targets.pop(t, None)

    def _process(self, t: int) -> None:
        query = self.features[t]
        if self.oracle:
            target = self.targets[t]
            assert target is not None
            dets = oracle_detections(target)
        else:
            refs = reference_frames(t, self.length, self.eps) if self.use_references else []
            dets = self.model.detect(query, [self.image_size], [self.features[r] for r in refs])[0]
        embeddings = self.model.embed(query, [dets.boxes])[0]
        kept = self.tracker.step(dets, embeddings)
        if len(kept) == 0:
            return
        if self.oracle:
            assert kept.masks is not None
            kept = replace(
                kept, masks=masks_to_original(kept.masks, self.image_size, self.original_size)
            )
        else:
            kept = self.paste(kept, image_size=self.image_size, original_size=self.original_size)
        assert kept.masks is not None and kept.scores is not None
        masks = kept.masks.cpu().numpy()
        for i in range(len(kept)):
            self.builder.add(
                int(kept.track_ids[i]),
                t,
                float(kept.scores[i]),
                self.category_ids[int(kept.labels[i])],
                masks[i],
            )

    def finalize(self) -> list[dict[str, Any]]:
        """The video's result entries (call once every frame was pushed)."""
        if not self.done:
            raise RuntimeError(
                f"video {self.builder.video_id}: {self.next_output} of {self.length} frames done"
            )
        return self.builder.finalize()
