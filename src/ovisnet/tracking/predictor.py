"""Streamed whole-video inference for the MaskTrack family (SPEC-models.md §2.3, §3.3).

Frames arrive one at a time in temporal order. Each frame's backbone runs exactly once; its
features wait in a window of ``±eps_test`` frames, so frame ``t`` is detected as soon as frame
``t + eps_test`` (or the end of the video) has arrived, with the references of
:func:`~ovisnet.data.sampling.reference_frames`. Outputs are pasted back to the original
resolution and kept only as RLE by :class:`~ovisnet.evaluation.formatting.VideoResultBuilder`,
so memory stays flat in the video length.

The tracker is any :class:`FrameTracker` (MaskTrack's online tracker, IoUTracker+, DeepSORT:
ids as frames arrive) or :class:`OfflineTracker` (SeqTracker: the frames' detections are
buffered as boxes, scores, labels and RLEs, and linked into tracks when the video ends).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Protocol, cast, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

from ovisnet.data.sampling import reference_frames
from ovisnet.evaluation.formatting import VideoResultBuilder, encode_mask
from ovisnet.structures import ClipBatch, FeatureMaps, Instances
from ovisnet.tracking.tracker import oracle_detections


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


class FrameTracker(Protocol):
    """An online tracker: ids are decided frame by frame (``OnlineTracker``, ``IoUTracker``,
    ``DeepSORTTracker``)."""

    def step(self, detections: Instances, embeddings: Tensor) -> Instances:
        """The frame's kept detections (input order) with ``track_ids`` set."""
        ...


@runtime_checkable
class OfflineTracker(Protocol):
    """A tracker that needs the whole video (``SeqTracker``): frames are buffered, then linked."""

    def add(self, detections: Instances, masks: Sequence[Any] | None = None) -> None:
        """Buffer the next frame's detections (original resolution, masks as RLE payloads)."""
        ...

    def link(self) -> list[tuple[Instances, list[Any]]]:
        """Per frame: the kept detections (input order) with ``track_ids``, and their masks."""
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
        tracker: the video's fresh tracker: a :class:`FrameTracker` (e.g.
            :class:`~ovisnet.tracking.tracker.OnlineTracker`) or an :class:`OfflineTracker`
            (linked at :meth:`finalize`).
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
        tracker: FrameTracker | OfflineTracker,
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
        self.offline = isinstance(tracker, OfflineTracker)
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
        tracker: FrameTracker | OfflineTracker,
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
        if self.offline:
            # no embeddings needed; only boxes, scores, labels and RLEs wait for the video's end
            rles = []
            if len(dets):
                dets = self._to_original(dets)
                assert dets.masks is not None
                rles = [encode_mask(m) for m in dets.masks.cpu().numpy()]
            cast(OfflineTracker, self.tracker).add(replace(dets, masks=None), rles)
            return
        embeddings = self.model.embed(query, [dets.boxes])[0]
        kept = cast(FrameTracker, self.tracker).step(dets, embeddings)
        if len(kept) == 0:
            return
        kept = self._to_original(kept)
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

    def _to_original(self, detections: Instances) -> Instances:
        """Boxes and masks back to the original frame (bool masks)."""
        if self.oracle:
            assert detections.masks is not None
            masks = masks_to_original(detections.masks, self.image_size, self.original_size)
            return replace(detections, masks=masks)
        return self.paste(detections, image_size=self.image_size, original_size=self.original_size)

    def finalize(self) -> list[dict[str, Any]]:
        """The video's result entries (call once every frame was pushed)."""
        if not self.done:
            raise RuntimeError(
                f"video {self.builder.video_id}: {self.next_output} of {self.length} frames done"
            )
        if self.offline:
            for t, (kept, rles) in enumerate(cast(OfflineTracker, self.tracker).link()):
                assert kept.scores is not None
                for i, rle in enumerate(rles):
                    self.builder.add(
                        int(kept.track_ids[i]),
                        t,
                        float(kept.scores[i]),
                        self.category_ids[int(kept.labels[i])],
                        rle,
                    )
        return self.builder.finalize()
