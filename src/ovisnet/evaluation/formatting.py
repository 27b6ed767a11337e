"""Video-level results: per-frame track outputs -> ``results.json`` entries, and the zip writer.

Aggregation (SPEC-models §1.6, as MaskTrack R-CNN's ``results2json_videoseg``): for every track,
``score`` is the mean of its per-frame scores over the frames where it was output,
``category_id`` the majority vote of its per-frame labels (ties go to the smallest label), and
``segmentations[t]`` its RLE in frame t or null. Every track becomes one entry; the evaluator keeps
the top 100 per (video, category).

Labels here are dataset category ids (as written to ``category_id``), not 0-based class indices.

Typical use in an online tracker::

    builder = VideoResultBuilder(video_id=7, length=len(frames))
    for t, frame in enumerate(frames):
        for track_id, score, label, mask in tracker.step(frame):
            builder.add(track_id, t, score, label, mask)
    results.extend(builder.finalize())
    write_results(results, "outputs/eval")  # results.json + results.zip
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from ovisnet.evaluation.masks import RLE, rle_size, to_rle

Mask = np.ndarray | dict[str, Any]


def encode_mask(mask: Mask) -> RLE:
    """Compressed RLE with ``counts`` as a utf-8 str, ready for JSON.

    Args:
        mask: A boolean (or 0/1) HxW array, or an RLE dict (compressed with str/bytes counts, or
            uncompressed with a list of run lengths).

    Returns:
        ``{"size": [h, w], "counts": str}``.

    Raises:
        ValueError: If the array is not 2-D or the dict is not an RLE.
    """
    if isinstance(mask, np.ndarray):
        if mask.ndim != 2:
            raise ValueError(f"a mask must be a 2-D HxW array, got shape {mask.shape}")
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8, copy=False)))
    else:
        rle = to_rle(mask, None, None, "mask")
    counts = rle["counts"]
    h, w = rle_size(rle)
    return {"size": [h, w], "counts": counts.decode() if isinstance(counts, bytes) else counts}


class VideoResultBuilder:
    """Collects one video's per-frame track outputs and turns them into result entries.

    Only RLEs are stored, so memory stays small however long the video is.
    """

    def __init__(self, video_id: int, length: int) -> None:
        """Start a video.

        Args:
            video_id: The video's ``id`` in the annotation file (not its position in the file).
            length: Number of frames; every entry gets this many ``segmentations``.
        """
        if length < 1:
            raise ValueError(f"video {video_id}: length must be >= 1, got {length}")
        self.video_id = int(video_id)
        self.length = int(length)
        self._tracks: dict[int, dict[int, tuple[float, int, RLE]]] = {}  # track -> frame -> out
        self._size: tuple[int, int] | None = None

    def add(self, track_id: int, frame_index: int, score: float, label: int, mask: Mask) -> None:
        """Record one track's output in one frame.

        Args:
            track_id: Track identity (any int, unique within the video).
            frame_index: 0-based frame index, ``0 <= frame_index < length``.
            score: Detection score in this frame.
            label: Dataset category id predicted in this frame (>= 0).
            mask: HxW boolean array or RLE dict; all masks of a video must share one size.

        Raises:
            ValueError: On an out-of-range frame, a repeated (track, frame), a negative label or
                a mask whose size differs from the video's earlier masks.
        """
        where = f"video {self.video_id} track {track_id} frame {frame_index}"
        if not 0 <= frame_index < self.length:
            raise ValueError(f"{where}: frame index outside [0, {self.length})")
        if label < 0:
            raise ValueError(f"{where}: label must be a category id >= 0, got {label}")
        frames = self._tracks.setdefault(int(track_id), {})
        if frame_index in frames:
            raise ValueError(f"{where}: this track already has an output in this frame")
        rle = encode_mask(mask)
        size = (rle["size"][0], rle["size"][1])
        if self._size is None:
            self._size = size
        elif size != self._size:
            raise ValueError(f"{where}: mask size {list(size)} differs from {list(self._size)}")
        frames[int(frame_index)] = (float(score), int(label), rle)

    def add_frame(
        self,
        frame_index: int,
        track_ids: Sequence[int],
        scores: Sequence[float],
        labels: Sequence[int],
        masks: Sequence[Mask] | np.ndarray,
    ) -> None:
        """Record all tracks output in one frame (masks as an (N, H, W) array or N RLEs)."""
        if not len(track_ids) == len(scores) == len(labels) == len(masks):
            raise ValueError(
                f"video {self.video_id} frame {frame_index}: track_ids, scores, labels and masks "
                "must have the same length"
            )
        for track_id, score, label, mask in zip(track_ids, scores, labels, masks, strict=True):
            self.add(int(track_id), frame_index, float(score), int(label), mask)

    def finalize(self) -> list[dict[str, Any]]:
        """One result entry per track, in increasing track id order.

        Returns:
            ``{"video_id", "category_id", "score", "segmentations"}`` dicts; ``score`` is the mean
            of the frame scores, ``category_id`` the majority label (ties: smallest).
        """
        entries = []
        for track_id in sorted(self._tracks):
            frames = self._tracks[track_id]
            order = sorted(frames)
            scores = np.array([frames[t][0] for t in order], dtype=np.float64)
            labels = np.array([frames[t][1] for t in order], dtype=np.int64)
            segmentations: list[RLE | None] = [None] * self.length
            for t in order:
                segmentations[t] = frames[t][2]
            entries.append(
                {
                    "video_id": self.video_id,
                    "category_id": int(np.bincount(labels).argmax()),
                    "score": float(scores.mean()),
                    "segmentations": segmentations,
                }
            )
        return entries


def format_video_results(
    video_id: int,
    length: int,
    tracks: Mapping[int, Iterable[tuple[int, float, int, Mask]]],
) -> list[dict[str, Any]]:
    """Result entries of one video from whole tracks.

    Args:
        video_id: The video's ``id``.
        length: Number of frames.
        tracks: Per track id, its ``(frame_index, score, label, mask)`` outputs.

    Returns:
        The entries, as :meth:`VideoResultBuilder.finalize`.
    """
    builder = VideoResultBuilder(video_id, length)
    for track_id, outputs in tracks.items():
        for frame_index, score, label, mask in outputs:
            builder.add(track_id, frame_index, score, label, mask)
    return builder.finalize()


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, bytes):
        return value.decode()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_results(
    results: Iterable[Mapping[str, Any]], out: str | PathLike[str], zip: bool = True
) -> Path:
    """Write ``results.json`` and, by default, ``results.zip`` holding it (the server's layout).

    Args:
        results: Result entries (e.g. concatenated :meth:`VideoResultBuilder.finalize` outputs).
        out: A directory (created if needed; the file is ``out/results.json``) or a ``.json``
            path. The zip goes beside the JSON with the suffix ``.zip``; its member is always
            named ``results.json``.
        zip: Also write the zip.

    Returns:
        The path of the JSON file.
    """
    out = Path(out)
    json_path = out if out.suffix == ".json" else out / "results.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(list(results), separators=(",", ":"), default=_json_default)
    json_path.write_text(text)
    if zip:
        with zipfile.ZipFile(json_path.with_suffix(".zip"), "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("results.json", text)
    return json_path
