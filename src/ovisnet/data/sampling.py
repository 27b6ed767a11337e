"""Frame sampling rules of the papers, as pure functions (SPEC-models.md §1.5, §7.3, §7.4).

* Training pairs (MaskTrack / CMaskTrack / SipMask): a query frame plus one reference frame
  ``!= query`` within ``±eps_train`` (5 in the OVIS paper; ``None`` = anywhere in the video, the
  original MaskTrack R-CNN rule).
* Test references (CMaskTrack / CSipMask): every frame within ``±eps_test`` (3 in the paper, 5 in
  the official code) except the query, clipped to the video.
* STEm-Seg: training clips of ``T`` frames evenly spaced over a span of ``T`` frame gaps, and
  overlapping inference sub-clips stitched afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def sample_reference_frame(
    query: int,
    num_frames: int,
    max_offset: int | None,
    rng: np.random.Generator,
    valid: Sequence[int] | None = None,
) -> int:
    """Draw the training reference frame for ``query``.

    Candidates are the ``valid`` frames ``j != query`` with ``|j - query| <= max_offset``
    (``max_offset=None``: no distance limit). If there is none, any other valid frame of the video
    is taken (the official CMaskTrack rule). A video with a single valid frame pairs the query
    with itself: the tracking target is then "same object" for every instance, which is the
    truthful supervision for a one-frame video.

    Args:
        query: index of the query frame.
        num_frames: number of frames of the video.
        max_offset: ε_train, or None for the whole video.
        rng: random generator (one draw, uniform over the candidates).
        valid: frames that may serve as reference (default: all frames).

    Returns:
        The reference frame index.
    """
    if not 0 <= query < num_frames:
        raise ValueError(f"query frame {query} outside a video of {num_frames} frames")
    if max_offset is not None and max_offset < 1:
        raise ValueError(f"max_offset must be >= 1 or None, got {max_offset}")
    pool = np.arange(num_frames) if valid is None else np.asarray(sorted(set(valid)), dtype=int)
    others = pool[pool != query]
    if others.size == 0:
        return query
    if max_offset is not None:
        near = others[np.abs(others - query) <= max_offset]
        if near.size:
            others = near
    return int(others[rng.integers(others.size)])


def reference_frames(query: int, num_frames: int, max_offset: int) -> list[int]:
    """All test-time reference frames of ``query``: ``[query ± max_offset] ∩ video`` minus query.

    Empty for a one-frame video (the model then falls back to the query's own features).
    """
    if not 0 <= query < num_frames:
        raise ValueError(f"query frame {query} outside a video of {num_frames} frames")
    if max_offset < 0:
        raise ValueError(f"max_offset must be >= 0, got {max_offset}")
    lo, hi = max(0, query - max_offset), min(num_frames - 1, query + max_offset)
    return [t for t in range(lo, hi + 1) if t != query]


def sample_clip(
    num_frames: int, clip_length: int, rng: np.random.Generator, frame_gap: int | None = None
) -> list[int]:
    """STEm-Seg training clip: ``clip_length`` sorted frame indices inside the video.

    A span of ``frame_gap`` gaps (default ``clip_length``, capped at ``num_frames - 1``) starts at
    a uniformly drawn frame, and the indices are spread evenly (rounded) over it, so with the
    defaults a clip holds 8 of 9 consecutive frames (SPEC §7.3). Videos shorter than the clip
    repeat frames (indices stay sorted).
    """
    if clip_length < 1:
        raise ValueError(f"clip_length must be >= 1, got {clip_length}")
    if num_frames < 1:
        raise ValueError("empty video")
    span = min(frame_gap if frame_gap is not None else clip_length, num_frames - 1)
    start = int(rng.integers(num_frames - span))
    return np.rint(np.linspace(start, start + span, clip_length)).astype(int).tolist()


def inference_clips(num_frames: int, clip_length: int = 8, overlap: int = 4) -> list[list[int]]:
    """Overlapping STEm-Seg inference sub-clips covering the whole video (SPEC §7.4).

    Clips of ``clip_length`` frames with stride ``clip_length - overlap``; if the last one does
    not end at the last frame, one more clip covering the final ``clip_length`` frames is added.
    A video shorter than a clip gives one clip padded by repeating frame 0 at the front.
    """
    if not 0 <= overlap < clip_length:
        raise ValueError(f"need 0 <= overlap < clip_length, got {overlap}, {clip_length}")
    if num_frames < 1:
        raise ValueError("empty video")
    if num_frames <= clip_length:
        return [[0] * (clip_length - num_frames) + list(range(num_frames))]
    stride = clip_length - overlap
    clips = [
        list(range(s, s + clip_length)) for s in range(0, num_frames - clip_length + 1, stride)
    ]
    if clips[-1][-1] != num_frames - 1:
        clips.append(list(range(num_frames - clip_length, num_frames)))
    return clips
