"""Video instance segmentation AP with the official OVIS / YouTube-VIS rules (own code).

The rules are those of ``oviseval.py`` (qjy981010/cocoapi @ 886baff, OVIS) and ``ytvoseval.py``
(youtubevos/cocoapi, YouTube-VIS); the two differ only in the occlusion groups. Read, not copied,
and built for speed (``scripts/bench_evaluation.py`` times it against the official code, same
numbers): no mask is decoded; each frame's RLE is moved into its own slab of a strip of frames by
re-encoding only its first run, so that one pycocotools ``iou`` call per (video, category) gives
every per-frame intersection (:class:`_Tracks`); settings that ignore the same objects and IoU
thresholds that no candidate IoU separates are matched once; accumulation works on flat arrays.

* Video IoU of a detection d and a ground-truth object g is
  ``sum_t |d_t & g_t| / sum_t |d_t | g_t|`` over all frames; a frame where only one side has a
  mask adds that mask's area to the union; 0 when the union is empty. Crowd objects use the same
  IoU (no crowd special case).
* Per (video, category) the detections are sorted by score (stable, so the results-file order
  breaks ties) and cut at 100 before anything else; maxDets 1 and 10 take the head of that list.
* A ground-truth object is ignored when it is a crowd, when its mean area is outside the area range
  or, for the occlusion groups, when its occlusion score is outside the group; ranges are inclusive
  at both ends (an object of mean area exactly 128**2 is both small and medium). The mean area of a
  ground-truth object is the mean of the non-null, non-zero entries of its ``areas`` field; that of
  a detection is the mean of its non-zero per-frame mask areas; 0 when there are none.
* OVIS occlusion score of an object: the per-frame levels ``no_occlusion`` / ``slight_occlusion`` /
  ``severe_occlusion`` score 0 / 0.25 / 0.75, null frames are dropped, and the score is the mean of
  the top ceil(n / 2) of them. Groups: slight [0, 0.25], moderate [0.25, 0.5], heavy [0.5, 1].
* Matching, per IoU threshold, detections in score order: a detection takes the not-yet-matched
  (crowds: always available) object of highest IoU >= the threshold among the non-ignored objects,
  ties going to the later object in file order; only when no non-ignored object qualifies does it
  take an ignored one the same way, and is then ignored itself. An unmatched detection whose mean
  area is outside the area range is ignored; there is no such rule for occlusion, so an unmatched
  detection is a false positive in every occlusion group.
* Accumulation as COCO: per category, the kept detections of all videos are sorted by score
  (stable, videos in id order), precision is made monotone from the right and read at the 101
  recall points (0 past the last recall reached); recall is the final recall; a category without
  non-ignored objects gives -1 and is left out of the means.

Where the official code crashes, this module is tolerant or raises :class:`EvaluationError`
naming the offending entry:

* an empty results list gives 0 wherever there is ground truth;
* uncompressed RLE and polygons are accepted in results (converted with pycocotools);
* a ground-truth object without occlusion labels (key missing or all frames null) is left out of
  the three occlusion groups (ignored there) but counts everywhere else;
* a ground-truth object without an ``areas`` field gets its mean area from its masks; a missing
  ``iscrowd`` means 0;
* a video without ``height`` / ``width`` is accepted (they are needed only for polygons);
* a result or annotation with the wrong number of frames, an unknown video or a missing key, and
  an unknown occlusion level raise.

A result whose category is not in the ground truth's ``categories`` is ignored, as the official
code ignores it (it selects results by the ground truth's category ids), with one warning naming
the ids and the number of results dropped.

Stricter than the official code, which does not crash on these but silently drops or misreads the
entry: an annotation whose category is not in ``categories`` (dropped there), a duplicate
annotation id (the last one counted twice there), a mask whose size differs from its video's (0
intersection and union in that frame there), a non-finite score, an RLE string whose first run
cannot be read. All raise :class:`EvaluationError`.

One official quirk is kept on purpose, for equal numbers: a detection matched to a ground-truth
object whose ``id`` is 0 is counted as unmatched (the official code stores the matched id and tests
it for truthiness), while the object still counts as matched.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import numbers
import operator
import warnings
import zipfile
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from ovisnet.evaluation.masks import (
    RLE,
    InvalidRLEError,
    prepend_background,
    rle_size,
    to_rle,
)

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
MAX_DETS = (1, 10, 100)
OCCLUSION_LEVEL_SCORES = {"no_occlusion": 0.0, "slight_occlusion": 0.25, "severe_occlusion": 0.75}

_AREA_ALL = (0.0, 1e5**2)
# name -> (mean-area range, occlusion-score range or None for no occlusion filter)
SETTINGS: dict[str, tuple[tuple[float, float], tuple[float, float] | None]] = {
    "all": (_AREA_ALL, None),
    "small": ((0.0, 128.0**2), None),
    "medium": ((128.0**2, 256.0**2), None),
    "large": ((256.0**2, 1e5**2), None),
    "slight": (_AREA_ALL, (0.0, 0.25)),
    "moderate": (_AREA_ALL, (0.25, 0.5)),
    "heavy": (_AREA_ALL, (0.5, 1.0)),
}
_OCCLUSION_SETTINGS = ("slight", "moderate", "heavy")

# key -> (average precision?, setting, maxDets, IoU threshold or None for the mean over all)
_METRICS: dict[str, tuple[bool, str, int, float | None]] = {
    "AP": (True, "all", 100, None),
    "AP50": (True, "all", 100, 0.5),
    "AP75": (True, "all", 100, 0.75),
    "APs": (True, "small", 100, None),
    "APm": (True, "medium", 100, None),
    "APl": (True, "large", 100, None),
    "AR1": (False, "all", 1, None),
    "AR10": (False, "all", 10, None),
    "AR100": (False, "all", 100, None),
    "ARs": (False, "small", 100, None),
    "ARm": (False, "medium", 100, None),
    "ARl": (False, "large", 100, None),
    "AP_SO": (True, "slight", 100, None),
    "AP_MO": (True, "moderate", 100, None),
    "AP_HO": (True, "heavy", 100, None),
    "AR_SO": (False, "slight", 100, None),
    "AR_MO": (False, "moderate", 100, None),
    "AR_HO": (False, "heavy", 100, None),
}
OCCLUSION_METRIC_KEYS = ("AP_SO", "AP_MO", "AP_HO", "AR_SO", "AR_MO", "AR_HO")
METRIC_KEYS = tuple(k for k in _METRICS if k not in OCCLUSION_METRIC_KEYS)

# the official loop starts each search at min(threshold, 1 - 1e-10)
_MATCH_THRESHOLDS = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)
# pycocotools counts pixels in 32-bit unsigned integers
_MAX_CANVAS_PIXELS = 2**32 - 1
# most (detection mask, object mask) pairs in one pycocotools iou call (it returns them all)
_MAX_PAIRS = 1 << 20


class EvaluationError(ValueError):
    """Malformed ground truth or results; the message names the entry and the field."""


@dataclass(frozen=True)
class _Video:
    id: int
    length: int
    height: int | None
    width: int | None


@dataclass(frozen=True)
class _Tracks:
    """The masks of many object tracks, one row per non-null frame mask, ready for IoUs.

    Each frame's RLE is moved into its own slab of a strip of frames, frame ``t`` into columns
    ``[t * width, (t + 1) * width)`` of a canvas ``height`` high (:func:`prepend_background`).
    Masks of different frames then never share a bounding box, so one pycocotools ``iou`` call
    on the masks of many frames compares only masks of the same frame (pycocotools skips pairs
    whose boxes do not overlap). The strip wraps around every ``slab_frames`` frames, so that it
    stays within pycocotools' 32-bit pixel counts; one call never spans more frames than that.
    """

    rles: list[RLE]  # (M,) track after track, frames in order
    frames: np.ndarray  # (M,) frame index of each row
    areas: np.ndarray  # (M,) int64 pixel area of each row
    bounds: np.ndarray  # (N + 1,) track k owns rows bounds[k]:bounds[k + 1]
    slab_frames: np.ndarray  # (N,) frames per strip of the track's video
    total_area: np.ndarray  # (N,) int64 area summed over frames
    mean_area: np.ndarray  # (N,) mean of the non-zero frame areas, 0.0 when there are none


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector (restored after).

    Parsing and evaluation allocate many small objects, none of them in a reference cycle, next
    to the large parsed JSON; every full collection would walk all of it (10-30 % of the running
    time on the case of ``scripts/bench_evaluation.py``).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _read_json(source: str | PathLike[str], what: str) -> Any:
    path = Path(source)
    try:
        if path.suffix != ".zip":
            raw = path.read_bytes()
        else:
            with zipfile.ZipFile(path) as archive:
                if "results.json" not in archive.namelist():
                    raise EvaluationError(f"{what} {path}: the zip has no 'results.json'")
                raw = archive.read("results.json")
        with _gc_paused():
            return json.loads(raw)
    except (json.JSONDecodeError, zipfile.BadZipFile) as err:
        raise EvaluationError(f"{what} {path}: unreadable ({err})") from err


def _require(entry: Any, keys: Sequence[str], where: str) -> None:
    if not isinstance(entry, Mapping):
        raise EvaluationError(f"{where}: expected an object, got {type(entry).__name__}")
    missing = [k for k in keys if k not in entry]
    if missing:
        raise EvaluationError(f"{where}: missing key(s) {', '.join(repr(k) for k in missing)}")


class _MaskReader:
    """Checks ``segmentations`` lists (length, form, one mask size per video) into :class:`_Tracks`.

    Call :meth:`read` for every track, then :meth:`finish` once.
    """

    def __init__(
        self, videos: Mapping[int, _Video], sizes: Mapping[int, list[int]] | None = None
    ) -> None:
        self._sizes: dict[int, list[int]] = {
            v.id: [v.height, v.width]
            for v in videos.values()
            if v.height is not None and v.width is not None
        }
        self._sizes.update(sizes or {})
        self._counts: list[str] = []  # compressed counts of every non-null mask
        self._frames: list[int] = []
        self._bounds: list[int] = [0]
        self._videos: list[int] = []
        self._where: list[str] = []

    @property
    def sizes(self) -> dict[int, list[int]]:
        """``[height, width]`` of the masks of each video seen so far (or of its entry)."""
        return dict(self._sizes)

    def read(self, segmentations: Any, video: _Video, where: str) -> int:
        """Check one track's ``segmentations`` and queue its masks; returns the track's index."""
        if not isinstance(segmentations, list):
            raise EvaluationError(
                f"{where}: 'segmentations' must be a list (one entry per frame), "
                f"got {type(segmentations).__name__}"
            )
        if len(segmentations) != video.length:
            raise EvaluationError(
                f"{where}: 'segmentations' has {len(segmentations)} entries, expected "
                f"{video.length} (the length of video {video.id})"
            )
        expected = self._sizes.get(video.id)
        counts, frames = self._counts, self._frames
        for t, seg in enumerate(segmentations):
            if not seg:  # is_null(seg), inline: this loop runs once per frame of every track
                continue
            if (  # the common case, a compressed RLE of the video's size, checked inline
                expected is not None
                and type(seg) is dict
                and type(seg.get("counts")) is str
                and seg.get("size") == expected
            ):
                counts.append(seg["counts"])
                frames.append(t)
                continue
            try:
                rle = to_rle(seg, video.height, video.width, f"{where} segmentations[{t}]")
            except ValueError as err:
                raise EvaluationError(str(err)) from err
            size = list(rle_size(rle))
            if expected is None:
                expected = self._sizes[video.id] = size
            elif size != expected:
                raise EvaluationError(
                    f"{where} segmentations[{t}]: mask size {size} differs from "
                    f"{expected} of video {video.id}"
                )
            code = rle["counts"]
            counts.append(code.decode("latin-1") if isinstance(code, bytes) else code)
            frames.append(t)
        self._bounds.append(len(counts))
        self._videos.append(video.id)
        self._where.append(where)
        return len(self._videos) - 1

    def finish(self) -> _Tracks:
        """Place every queued mask in its slab (see :class:`_Tracks`) and measure the areas."""
        bounds = np.array(self._bounds, np.int64)
        owner = np.repeat(np.arange(len(self._videos)), np.diff(bounds))
        frames = np.array(self._frames, np.int64)
        heights, widths = np.ones((2, len(self._videos)), np.int64)  # 1: a track without masks
        for k, video in enumerate(self._videos):
            if video in self._sizes:
                heights[k], widths[k] = self._sizes[video]
        pixels = heights * widths
        too_large = np.flatnonzero(pixels > _MAX_CANVAS_PIXELS)
        if too_large.size:
            k = int(too_large[0])
            raise EvaluationError(
                f"{self._where[k]}: frames of {heights[k]}x{widths[k]} pixels are more than "
                "pycocotools' 32-bit pixel counts hold"
            )
        slab_frames = _MAX_CANVAS_PIXELS // pixels
        slab = frames % slab_frames[owner]
        try:
            counts = prepend_background(self._counts, slab * pixels[owner])
        except InvalidRLEError as err:
            where = f"{self._where[owner[err.index]]} segmentations[{frames[err.index]}]"
            raise EvaluationError(f"{where}: {err}") from None
        rles = [
            {"size": [h, w], "counts": c}
            for h, w, c in zip(
                heights[owner].tolist(), (widths[owner] * (slab + 1)).tolist(), counts, strict=True
            )
        ]
        # pycocotools' area() takes at most 255 masks per call (a uint8 shape under NumPy 2)
        areas = np.zeros(len(rles), np.int64)
        for start in range(0, len(rles), 255):
            areas[start : start + 255] = mask_utils.area(rles[start : start + 255])
        area_sum = np.concatenate([[0], np.cumsum(areas)])
        nonzero_sum = np.concatenate([[0], np.cumsum(areas > 0)])
        total = area_sum[bounds[1:]] - area_sum[bounds[:-1]]
        nonzero = nonzero_sum[bounds[1:]] - nonzero_sum[bounds[:-1]]
        mean = np.divide(total, nonzero, out=np.zeros(len(total)), where=nonzero > 0)
        return _Tracks(rles, frames, areas, bounds, slab_frames, total, mean)


def _occlusion_score(labels: Any, where: str) -> float:
    if labels is None:
        return math.nan
    try:
        scores = sorted(OCCLUSION_LEVEL_SCORES[a] for a in labels if a is not None)
    except KeyError as err:
        raise EvaluationError(
            f"{where}: unknown 'occlusion' level {err.args[0]!r}, "
            f"expected one of {sorted(OCCLUSION_LEVEL_SCORES)} or null"
        ) from None
    if not scores:
        return math.nan
    top = scores[-math.ceil(len(scores) / 2) :]
    return sum(top) / len(top)


def _areas_field_mean(areas: Any) -> float:
    values = [a for a in areas if a]
    return float(np.asarray(values, dtype=np.float64).mean()) if values else 0.0


def _outside(area: np.ndarray, settings: Sequence[str]) -> np.ndarray:
    """(S, N) whether each mean area is outside each setting's area range (inclusive ends)."""
    ranges = np.array([SETTINGS[name][0] for name in settings])
    return (area[None, :] < ranges[:, :1]) | (area[None, :] > ranges[:, 1:])


class GroundTruth:
    """A validated ground-truth file (OVIS or YouTube-VIS layout), ready for evaluation.

    Parse once and pass the object to :func:`evaluate_results` to evaluate many result sets.

    Attributes:
        category_ids: Sorted category ids of the file's ``categories``.
        has_occlusion: Whether any annotation carries ``occlusion`` labels (OVIS); the occlusion
            metrics are reported only then.
        settings: The evaluated settings (names of :data:`SETTINGS`): the occlusion groups only
            when ``has_occlusion``.
    """

    def __init__(self, data: Mapping[str, Any]) -> None:
        """Validate and index a loaded ground-truth dict.

        Args:
            data: The parsed JSON: ``videos``, ``categories`` and ``annotations`` (may be null
                or absent for a split without annotations).

        Raises:
            EvaluationError: On a malformed entry (the message names it).
        """
        with _gc_paused():
            self._parse(data)

    def _parse(self, data: Mapping[str, Any]) -> None:
        _require(data, ("videos", "categories"), "ground truth")
        self._videos: dict[int, _Video] = {}
        for i, v in enumerate(data["videos"]):
            _require(v, ("id",), f"ground truth videos[{i}]")
            if "length" in v:
                length = int(v["length"])
            elif "file_names" in v:
                length = len(v["file_names"])
            else:
                raise EvaluationError(f"video id={v['id']}: needs 'length' or 'file_names'")
            h, w = v.get("height"), v.get("width")
            self._videos[v["id"]] = _Video(
                v["id"], length, None if h is None else int(h), None if w is None else int(w)
            )
        for i, c in enumerate(data["categories"]):
            _require(c, ("id",), f"ground truth categories[{i}]")
        self.category_ids: list[int] = sorted({c["id"] for c in data["categories"]})
        # positions in the sorted ids: the order of the official loops
        self._category_pos = {c: k for k, c in enumerate(self.category_ids)}
        self._video_pos = {v: k for k, v in enumerate(sorted(self._videos))}
        reader = _MaskReader(self._videos)
        self.has_occlusion = False
        # per object, in file order (object k is track k of self._tracks)
        videos: list[int] = []
        categories: list[int] = []
        ids: list[int] = []
        crowd: list[bool] = []
        field_areas: list[float | None] = []  # mean of the 'areas' field
        occlusion: list[float] = []
        seen: set[int] = set()
        known_categories = set(self.category_ids)
        for i, ann in enumerate(data.get("annotations") or []):
            _require(ann, ("id", "video_id", "category_id", "segmentations"), f"annotations[{i}]")
            where = f"annotation id={ann['id']} (video_id={ann['video_id']})"
            if ann["id"] in seen:
                raise EvaluationError(f"{where}: duplicate annotation 'id'")
            seen.add(ann["id"])
            video = self._videos.get(ann["video_id"])
            if video is None:
                raise EvaluationError(f"{where}: 'video_id' is not in the videos")
            if ann["category_id"] not in known_categories:
                raise EvaluationError(
                    f"{where}: 'category_id' {ann['category_id']} is not in the categories"
                )
            reader.read(ann["segmentations"], video, where)
            labels = ann.get("occlusion")
            self.has_occlusion |= labels is not None
            areas = ann.get("areas")
            videos.append(video.id)
            categories.append(ann["category_id"])
            ids.append(ann["id"])
            crowd.append(bool(ann.get("iscrowd", 0)))
            field_areas.append(None if areas is None else _areas_field_mean(areas))
            occlusion.append(_occlusion_score(labels, where))
        self._tracks = reader.finish()
        self._sizes = reader.sizes
        self.settings: list[str] = [
            s for s in SETTINGS if self.has_occlusion or s not in _OCCLUSION_SETTINGS
        ]
        # no 'areas' field: the mean of the non-zero mask areas
        area = np.array(
            [self._tracks.mean_area[k] if a is None else a for k, a in enumerate(field_areas)],
            np.float64,
        )
        occ = np.array(occlusion, np.float64)
        self._crowd = np.array(crowd, bool)
        self._ignored = self._crowd | _outside(area, self.settings)  # (S, G)
        for s, name in enumerate(self.settings):
            low_high = SETTINGS[name][1]
            if low_high is not None:  # NaN (no labels) is outside every group
                self._ignored[s] |= ~((occ >= low_high[0]) & (occ <= low_high[1]))
        self._counts = np.array([i != 0 for i in ids], bool)  # see the module doc
        self._category_index = np.array([self._category_pos[c] for c in categories], np.int64)
        # (video index, category index) -> its objects, in file order
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for k, (video, category) in enumerate(zip(videos, categories, strict=True)):
            groups[self._video_pos[video], self._category_pos[category]].append(k)
        self._groups = {key: np.array(objects, np.int64) for key, objects in groups.items()}

    @classmethod
    def from_source(cls, source: str | PathLike[str] | Mapping[str, Any]) -> GroundTruth:
        """Load from a JSON path or an already-loaded dict."""
        if isinstance(source, Mapping):
            return cls(source)
        return cls(_read_json(source, "ground truth"))

    @property
    def video_ids(self) -> list[int]:
        """Sorted video ids."""
        return sorted(self._videos)

    def _read_results(self, results: Sequence[Any]) -> tuple[_Tracks, np.ndarray, np.ndarray]:
        """Validate results against this ground truth.

        A result whose category is not in the ground truth's categories is dropped, as the
        official evaluator does, with one warning for all of them.

        Args:
            results: Entries ``{video_id, category_id, score, segmentations}``.

        Returns:
            The kept detections' masks (detection k is track k) and, per detection, its
            positions ``(video, category)`` in the sorted ids (K, 2) and score (K,), in results
            order.

        Raises:
            EvaluationError: On a malformed entry (the message names its index and the field).
        """
        if not isinstance(results, (list, tuple)):
            raise EvaluationError(f"results: expected a list, got {type(results).__name__}")
        reader = _MaskReader(self._videos, self._sizes)
        keys: list[tuple[int, int]] = []
        scores: list[float] = []
        unknown: dict[Any, int] = {}  # category id -> dropped results
        for i, r in enumerate(results):
            where = f"result {i}"
            _require(r, ("video_id", "category_id", "score", "segmentations"), where)
            video = self._videos.get(r["video_id"])
            if video is None:
                raise EvaluationError(
                    f"{where}: 'video_id' {r['video_id']!r} is not in the ground truth"
                )
            category = self._category_pos.get(r["category_id"])
            if category is None:
                unknown[r["category_id"]] = unknown.get(r["category_id"], 0) + 1
                continue
            where = f"result {i} (video_id={video.id})"
            score = r["score"]
            if not isinstance(score, numbers.Real) or not math.isfinite(score):
                raise EvaluationError(f"{where}: 'score' must be a finite number, got {score!r}")
            reader.read(r["segmentations"], video, where)
            keys.append((self._video_pos[video.id], category))
            scores.append(float(score))
        if unknown:
            warnings.warn(
                f"results: ignored {sum(unknown.values())} result(s) whose 'category_id' is not "
                f"in the ground truth's categories: {', '.join(map(repr, unknown))} (as the "
                "official evaluator does)",
                stacklevel=4,
            )
        return (
            reader.finish(),
            np.array(keys, np.int64).reshape(-1, 2),
            np.array(scores, np.float64),
        )


def _rows(tracks: _Tracks, which: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the tracks ``which``, track after track, and each row's position in ``which``."""
    starts = tracks.bounds[which]
    lengths = tracks.bounds[which + 1] - starts
    owner = np.repeat(np.arange(len(which)), lengths)
    rows = np.arange(owner.size) + np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    return rows, owner


def _pick(items: list[RLE], index: np.ndarray) -> list[RLE]:
    """``[items[i] for i in index]`` (a list: pycocotools takes no other sequence), at C speed."""
    if index.size == 1:
        return [items[int(index[0])]]
    return list(operator.itemgetter(*index.tolist())(items))


def _video_iou(dets: _Tracks, det_ids: np.ndarray, gts: _Tracks, gt_ids: np.ndarray) -> np.ndarray:
    """Video IoU matrix (D, G) between detection tracks and object tracks of one video.

    The per-frame intersections come from pycocotools' ``iou`` on the frame masks of both sides
    at once (a frame's masks meet only those of the same frame, see :class:`_Tracks`), every
    object flagged as crowd, so that it returns ``|d_t & g_t| / |d_t|``: times ``|d_t|`` and
    rounded, the exact integer intersection. Summed over frames; the union is
    ``|d| + |g| - intersection``, also summed over frames.
    """
    inter = np.zeros((len(det_ids), len(gt_ids)), np.int64)
    rows, row_det = _rows(dets, det_ids)
    cols, col_gt = _rows(gts, gt_ids)
    if rows.size and cols.size:
        row_frame, col_frame = dets.frames[rows], gts.frames[cols]
        length = int(max(row_frame.max(), col_frame.max())) + 1
        step = min(int(dets.slab_frames[det_ids[0]]), length)  # frames per iou call
        if rows.size * cols.size > _MAX_PAIRS:
            step = min(step, max(1, int(length * math.sqrt(_MAX_PAIRS / (rows.size * cols.size)))))
        for start in range(0, length, step):
            r = slice(None) if step == length else (row_frame >= start) & (row_frame < start + step)
            c = slice(None) if step == length else (col_frame >= start) & (col_frame < start + step)
            r_rows, c_rows, r_det, c_gt = rows[r], cols[c], row_det[r], col_gt[c]
            if not r_rows.size or not c_rows.size:
                continue
            fraction = np.asarray(
                mask_utils.iou(
                    _pick(dets.rles, r_rows),
                    _pick(gts.rles, c_rows),
                    np.ones(c_rows.size, np.uint8),
                )
            )
            r_hit, c_hit = np.nonzero(fraction)  # masks of one frame that intersect
            if r_hit.size:
                frame_inter = np.rint(fraction[r_hit, c_hit] * dets.areas[r_rows[r_hit]])
                pair = r_det[r_hit] * len(gt_ids) + c_gt[c_hit]
                # float sums of integers below 2**53: exact
                inter += (
                    np.bincount(pair, frame_inter, inter.size).astype(np.int64).reshape(inter.shape)
                )
    union = dets.total_area[det_ids][:, None] + gts.total_area[gt_ids][None, :] - inter
    return np.divide(inter, union, out=np.zeros(inter.shape), where=union > 0)


def _match(ious: np.ndarray, gt_ignored: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """Greedy matching for all settings and IoU thresholds.

    Args:
        ious: (D, G) video IoUs, detections sorted by score.
        gt_ignored: (S, G) ignore flag of every object in every setting.
        crowd: (G,) crowd flags (a crowd can be matched any number of times).

    Returns:
        (S, T, D) index of the object each detection matched, -1 where it matched none.
    """
    num_settings, num_dets, num_thr = gt_ignored.shape[0], ious.shape[0], len(_MATCH_THRESHOLDS)
    det_idx, gt_idx = np.nonzero(ious >= _MATCH_THRESHOLDS[0])
    if not det_idx.size:
        return np.full((num_settings, num_thr, num_dets), -1)
    # per detection, its candidate objects by IoU, highest first, the later object first on ties
    values = ious[det_idx, gt_idx]
    order = np.lexsort((-gt_idx, -values, det_idx))
    candidates: dict[int, list[tuple[float, int]]] = defaultdict(list)
    for d, v, g in zip(
        det_idx[order].tolist(), values[order].tolist(), gt_idx[order].tolist(), strict=True
    ):
        candidates[d].append((v, g))
    # a threshold matches as the one below it when no candidate IoU lies in [below, it)
    changes = set(np.searchsorted(_MATCH_THRESHOLDS, values, side="right").tolist())
    is_crowd = crowd.tolist()
    # settings that ignore the same candidate objects match alike
    touched = np.unique(gt_idx)
    rows: dict[bytes, int] = {}
    setting_row = [rows.setdefault(flags[touched].tobytes(), len(rows)) for flags in gt_ignored]
    found: list[list[list[int]]] = []
    for flags in gt_ignored[[setting_row.index(u) for u in range(len(rows))]].tolist():
        per_threshold: list[list[int]] = []
        for k, threshold in enumerate(_MATCH_THRESHOLDS.tolist()):
            if k and k not in changes:
                per_threshold.append(per_threshold[-1])
                continue
            matched = [-1] * num_dets
            taken: set[int] = set()
            for d, options in candidates.items():
                best = fallback = -1
                for v, g in options:
                    if v < threshold:
                        break
                    if g in taken and not is_crowd[g]:
                        continue
                    if not flags[g]:
                        best = g  # the best object that counts wins over any ignored one
                        break
                    if fallback < 0:
                        fallback = g
                best = best if best >= 0 else fallback
                if best >= 0:
                    taken.add(best)
                    matched[d] = best
            per_threshold.append(matched)
        found.append(per_threshold)
    return np.array(found)[setting_row]


def _curves(
    scores: np.ndarray,
    rank: np.ndarray,
    true_pos: np.ndarray,
    false_pos: np.ndarray,
    num_gt: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Interpolated precision (V, M, T, R) and final recall (V, M, T) of one category.

    Args:
        scores: (N,) the category's kept detections, videos in order, each by score.
        rank: (N,) each detection's rank by score in its (video, category).
        true_pos: (V, T, N) true positives in V settings.
        false_pos: (V, T, N) false positives.
        num_gt: (V,) non-ignored objects in each setting (all > 0).
    """
    num_thr, num_rec = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS)
    precision = np.zeros((len(num_gt), len(MAX_DETS), num_thr, num_rec))
    recall = np.zeros((len(num_gt), len(MAX_DETS), num_thr))
    for m, max_det in enumerate(MAX_DETS):
        # videos in order, each one's top max_det, then a stable sort by score
        kept = np.flatnonzero(rank < max_det)
        order = kept[np.argsort(-scores[kept], kind="mergesort")]
        num_dets = len(order)
        if not num_dets:
            continue
        tp = np.cumsum(true_pos[:, :, order], axis=2).astype(np.float64)
        fp = np.cumsum(false_pos[:, :, order], axis=2).astype(np.float64)
        rec = tp / num_gt[:, None, None]
        prec = tp / (fp + tp + np.spacing(1))
        prec = np.maximum.accumulate(prec[:, :, ::-1], axis=2)[:, :, ::-1]
        recall[:, m] = rec[:, :, -1]
        # np.searchsorted of the recall points in every (setting, threshold) row at once:
        # complex numbers sort by real part first, so row + 1j * recall keeps the rows apart
        rows = np.arange(rec.shape[0] * num_thr)[:, None]
        keys = (rows + 1j * rec.reshape(-1, num_dets)).ravel()
        at = np.searchsorted(keys, (rows + 1j * RECALL_THRESHOLDS).ravel(), side="left")
        at = at.reshape(-1, num_rec) - rows * num_dets
        read = np.take_along_axis(prec.reshape(-1, num_dets), np.minimum(at, num_dets - 1), 1)
        precision[:, m] = np.where(at < num_dets, read, 0.0).reshape(-1, num_thr, num_rec)
    return precision, recall


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(np.mean(valid)) if valid.size else -1.0


def _load_results(results: str | PathLike[str] | Sequence[Any]) -> Any:
    if isinstance(results, (str, PathLike)):
        return _read_json(results, "results")
    return results


def evaluate_results(
    gt: str | PathLike[str] | Mapping[str, Any] | GroundTruth,
    results: str | PathLike[str] | Sequence[Mapping[str, Any]],
) -> dict[str, float]:
    """Video mask AP / AR of a results list against a ground-truth file, official rules.

    Args:
        gt: Ground-truth JSON path, its loaded dict, or a :class:`GroundTruth`.
        results: Results JSON path (or a ``.zip`` holding ``results.json``), or the loaded list
            of ``{video_id, category_id, score, segmentations}``.

    Returns:
        Fractions in [0, 1] under :data:`METRIC_KEYS` and, when the ground truth has occlusion
        labels, :data:`OCCLUSION_METRIC_KEYS` (slight / moderate / heavy occlusion = official
        stats 6-8 and 15-17); -1.0 where no ground truth falls in the setting.

    Raises:
        EvaluationError: On malformed ground truth or results (the message names the entry).

    Warns:
        UserWarning: Once, naming them, when results have a category that is not in the
            ground truth's categories; those results are ignored, as the official code does.
    """
    with _gc_paused():
        return _evaluate(gt, results)


def _evaluate(
    gt: str | PathLike[str] | Mapping[str, Any] | GroundTruth,
    results: str | PathLike[str] | Sequence[Mapping[str, Any]],
) -> dict[str, float]:
    truth = gt if isinstance(gt, GroundTruth) else GroundTruth.from_source(gt)
    dets, keys, scores = truth._read_results(_load_results(results))
    settings = truth.settings
    num_settings, num_thr = len(settings), len(IOU_THRESHOLDS)

    # detections by category, then video, then score (stable: results order breaks ties),
    # cut at 100 per (video, category)
    order = np.lexsort((-scores, keys[:, 0], keys[:, 1]))
    keys = keys[order]
    first = np.flatnonzero(np.r_[True, (keys[1:] != keys[:-1]).any(axis=1)])
    rank = np.arange(len(order)) - np.repeat(first, np.diff(np.r_[first, len(order)]))
    kept = rank < MAX_DETS[-1]
    order, keys, rank = order[kept], keys[kept], rank[kept]
    first = np.flatnonzero(rank == 0)

    # the object each detection matches (-1: none), per setting and IoU threshold
    gt_index = np.full((num_settings, num_thr, len(order)), -1, np.int32)
    for start, stop in zip(first.tolist(), np.r_[first, len(order)][1:].tolist(), strict=True):
        objects = truth._groups.get((int(keys[start, 0]), int(keys[start, 1])))
        if objects is None:
            continue
        ious = _video_iou(dets, order[start:stop], truth._tracks, objects)
        found = _match(ious, truth._ignored[:, objects], truth._crowd[objects])
        gt_index[:, :, start:stop] = np.where(found >= 0, objects[found], -1)
    # index -1 (no match) reads an appended False column
    s_idx = np.arange(num_settings)[:, None, None]
    hit_ignored = np.pad(truth._ignored, ((0, 0), (0, 1)))[s_idx, gt_index]
    matched = np.append(truth._counts, False)[gt_index]
    outside = _outside(dets.mean_area[order], settings)[:, None, :]
    ignored = hit_ignored | (~matched & outside)
    true_pos, false_pos = matched & ~ignored, ~matched & ~ignored

    num_cat = len(truth.category_ids)
    num_gt = np.stack(  # (S, K) non-ignored objects
        [np.bincount(truth._category_index[~row], minlength=num_cat) for row in truth._ignored]
    ).reshape(num_settings, num_cat)
    bounds = np.searchsorted(keys[:, 1], np.arange(num_cat + 1))
    shape = (num_settings, len(MAX_DETS), num_thr)
    precision = -np.ones((*shape, len(RECALL_THRESHOLDS), num_cat))
    recall = -np.ones((*shape, num_cat))
    for k in range(num_cat):
        valid = np.flatnonzero(num_gt[:, k])
        if not valid.size:
            continue
        a, b = bounds[k], bounds[k + 1]
        curves = _curves(
            scores[order[a:b]],
            rank[a:b],
            true_pos[valid, :, a:b],
            false_pos[valid, :, a:b],
            num_gt[valid, k],
        )
        precision[valid, ..., k], recall[valid, ..., k] = curves

    metrics: dict[str, float] = {}
    for key, (is_ap, setting, max_det, iou) in _METRICS.items():
        if setting not in settings:
            continue
        s, m = settings.index(setting), MAX_DETS.index(max_det)
        values = precision[s, m] if is_ap else recall[s, m]
        if iou is not None:
            values = values[np.flatnonzero(np.isclose(IOU_THRESHOLDS, iou))]
        metrics[key] = _mean_valid(values)
    return metrics
