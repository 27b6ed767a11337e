"""Video instance segmentation AP with the official OVIS / YouTube-VIS rules (own code).

The rules are those of ``oviseval.py`` (qjy981010/cocoapi @ 886baff, OVIS) and ``ytvoseval.py``
(youtubevos/cocoapi, YouTube-VIS); the two differ only in the occlusion groups. Read, not copied:
the matching is vectorised over settings and IoU thresholds, and the video IoU is computed from
RLEs without decoding a mask.

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

Stricter than the official code, which does not crash on these but silently drops or misreads the
entry: a result or annotation whose category is not in ``categories`` (dropped there), a duplicate
annotation id (the last one counted twice there), a mask whose size differs from its video's (0
intersection and union in that frame there), a non-finite score. All raise
:class:`EvaluationError`.

One official quirk is kept on purpose, for equal numbers: a detection matched to a ground-truth
object whose ``id`` is 0 is counted as unmatched (the official code stores the matched id and tests
it for truthiness), while the object still counts as matched.
"""

from __future__ import annotations

import json
import math
import numbers
import zipfile
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from ovisnet.evaluation.masks import RLE, is_null, rle_size, to_rle

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


class EvaluationError(ValueError):
    """Malformed ground truth or results; the message names the entry and the field."""


@dataclass(frozen=True)
class _Video:
    id: int
    length: int
    height: int | None
    width: int | None


@dataclass(frozen=True)
class _Masks:
    """Per-frame RLEs of one object track (None where absent) and their pixel areas."""

    rles: list[RLE | None]
    areas: np.ndarray  # (T,) int64, 0 on null frames

    def mean_area(self) -> float:
        """Mean of the non-zero per-frame areas, 0.0 when there are none."""
        nonzero = self.areas[self.areas > 0]
        return float(nonzero.astype(np.float64).mean()) if nonzero.size else 0.0


@dataclass(frozen=True)
class _GtObject:
    id: int
    crowd: bool
    mean_area: float
    occlusion: float  # NaN when the object has no occlusion labels
    masks: _Masks


@dataclass(frozen=True)
class _Detection:
    score: float
    masks: _Masks


@dataclass(frozen=True)
class _GroupResult:
    """Matching outcome of one (video, category) for every setting and IoU threshold."""

    scores: np.ndarray  # (D,) sorted, at most 100
    matched: np.ndarray  # (S, T, D) bool: counts as a true positive candidate
    ignored: np.ndarray  # (S, T, D) bool
    gt_ignored: np.ndarray  # (S, G) bool


def _read_json(source: str | PathLike[str], what: str) -> Any:
    path = Path(source)
    try:
        if path.suffix != ".zip":
            return json.loads(path.read_bytes())
        with zipfile.ZipFile(path) as archive:
            if "results.json" not in archive.namelist():
                raise EvaluationError(f"{what} {path}: the zip has no 'results.json'")
            return json.loads(archive.read("results.json"))
    except (json.JSONDecodeError, zipfile.BadZipFile) as err:
        raise EvaluationError(f"{what} {path}: unreadable ({err})") from err


def _require(entry: Any, keys: Sequence[str], where: str) -> None:
    if not isinstance(entry, Mapping):
        raise EvaluationError(f"{where}: expected an object, got {type(entry).__name__}")
    missing = [k for k in keys if k not in entry]
    if missing:
        raise EvaluationError(f"{where}: missing key(s) {', '.join(repr(k) for k in missing)}")


class _MaskReader:
    """Converts ``segmentations`` lists and checks that all masks of a video share one size."""

    def __init__(self, videos: Mapping[int, _Video]) -> None:
        self._sizes = {
            v.id: (v.height, v.width)
            for v in videos.values()
            if v.height is not None and v.width is not None
        }

    def read(self, segmentations: Any, video: _Video, where: str) -> _Masks:
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
        rles: list[RLE | None] = []
        present: list[int] = []
        for t, seg in enumerate(segmentations):
            if is_null(seg):
                rles.append(None)
                continue
            try:
                rle = to_rle(seg, video.height, video.width, f"{where} segmentations[{t}]")
            except ValueError as err:
                raise EvaluationError(str(err)) from err
            size = rle_size(rle)
            expected = self._sizes.setdefault(video.id, size)
            if size != expected:
                raise EvaluationError(
                    f"{where} segmentations[{t}]: mask size {list(size)} differs from "
                    f"{list(expected)} of video {video.id}"
                )
            rles.append(rle)
            present.append(t)
        areas = np.zeros(video.length, np.int64)
        if present:
            areas[present] = mask_utils.area([rles[t] for t in present])
        return _Masks(rles, areas)


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


def _gt_mean_area(areas: Any, masks: _Masks) -> float:
    if areas is None:
        return masks.mean_area()
    values = [a for a in areas if a]
    return float(np.asarray(values, dtype=np.float64).mean()) if values else 0.0


class GroundTruth:
    """A validated ground-truth file (OVIS or YouTube-VIS layout), ready for evaluation.

    Parse once and pass the object to :func:`evaluate_results` to evaluate many result sets.

    Attributes:
        category_ids: Sorted category ids of the file's ``categories``.
        has_occlusion: Whether any annotation carries ``occlusion`` labels (OVIS); the occlusion
            metrics are reported only then.
    """

    def __init__(self, data: Mapping[str, Any]) -> None:
        """Validate and index a loaded ground-truth dict.

        Args:
            data: The parsed JSON: ``videos``, ``categories`` and ``annotations`` (may be null
                or absent for a split without annotations).

        Raises:
            EvaluationError: On a malformed entry (the message names it).
        """
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
        self._masks = _MaskReader(self._videos)
        self._by_video: dict[int, dict[int, list[_GtObject]]] = defaultdict(dict)
        self.has_occlusion = False
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
            masks = self._masks.read(ann["segmentations"], video, where)
            labels = ann.get("occlusion")
            self.has_occlusion |= labels is not None
            self._by_video[video.id].setdefault(ann["category_id"], []).append(
                _GtObject(
                    id=ann["id"],
                    crowd=bool(ann.get("iscrowd", 0)),
                    mean_area=_gt_mean_area(ann.get("areas"), masks),
                    occlusion=_occlusion_score(labels, where),
                    masks=masks,
                )
            )

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

    def _objects(self, video_id: int) -> dict[int, list[_GtObject]]:
        """Ground-truth objects of one video per category id, in file order."""
        return self._by_video.get(video_id, {})

    def _read_results(self, results: Sequence[Any]) -> dict[int, dict[int, list[_Detection]]]:
        """Validate results against this ground truth and group them by (video, category).

        Args:
            results: Entries ``{video_id, category_id, score, segmentations}``.

        Returns:
            Detections per video id and category id, in results order.

        Raises:
            EvaluationError: On a malformed entry (the message names its index and the field).
        """
        if not isinstance(results, (list, tuple)):
            raise EvaluationError(f"results: expected a list, got {type(results).__name__}")
        known_categories = set(self.category_ids)
        grouped: dict[int, dict[int, list[_Detection]]] = defaultdict(dict)
        for i, r in enumerate(results):
            where = f"result {i}"
            _require(r, ("video_id", "category_id", "score", "segmentations"), where)
            video = self._videos.get(r["video_id"])
            if video is None:
                raise EvaluationError(
                    f"{where}: 'video_id' {r['video_id']!r} is not in the ground truth"
                )
            where = f"result {i} (video_id={video.id})"
            if r["category_id"] not in known_categories:
                raise EvaluationError(
                    f"{where}: 'category_id' {r['category_id']!r} is not in the categories"
                )
            score = r["score"]
            if not isinstance(score, numbers.Real) or not math.isfinite(score):
                raise EvaluationError(f"{where}: 'score' must be a finite number, got {score!r}")
            masks = self._masks.read(r["segmentations"], video, where)
            detection = _Detection(float(score), masks)
            grouped[video.id].setdefault(r["category_id"], []).append(detection)
        return grouped


def _video_iou(dets: Sequence[_Masks], gts: Sequence[_Masks]) -> np.ndarray:
    """Video IoU matrix (D, G), from per-frame intersections computed on the RLEs.

    pycocotools' ``iou`` with every ground truth flagged as crowd returns
    ``|d & g| / |d|``, so the exact integer intersection is that times ``|d|``, rounded.
    """
    if not dets or not gts:
        return np.zeros((len(dets), len(gts)))
    det_areas = np.stack([d.areas for d in dets])
    gt_areas = np.stack([g.areas for g in gts])
    inter = np.zeros((len(dets), len(gts)), np.int64)
    det_on, gt_on = det_areas > 0, gt_areas > 0
    for t in np.flatnonzero(det_on.any(axis=0) & gt_on.any(axis=0)):
        di, gi = np.flatnonzero(det_on[:, t]), np.flatnonzero(gt_on[:, t])
        fraction = np.asarray(
            mask_utils.iou(
                [dets[i].rles[t] for i in di],
                [gts[j].rles[t] for j in gi],
                np.ones(len(gi), np.uint8),
            )
        )
        inter[di[:, None], gi] += np.rint(fraction * det_areas[di, t][:, None]).astype(np.int64)
    union = det_areas.sum(axis=1)[:, None] + gt_areas.sum(axis=1)[None, :] - inter
    return np.divide(inter, union, out=np.zeros(inter.shape), where=union > 0)


def _last_best(candidates: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of the last candidate with the highest value along the last axis, -1 if none."""
    scored = np.where(candidates, values, -np.inf)
    is_best = candidates & (scored == scored.max(axis=-1, keepdims=True))
    last = candidates.shape[-1] - 1 - np.argmax(is_best[..., ::-1], axis=-1)
    return np.where(is_best.any(axis=-1), last, -1)


def _match(ious: np.ndarray, gt_ignored: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """Greedy matching for all settings and IoU thresholds at once.

    Args:
        ious: (D, G) video IoUs, detections sorted by score.
        gt_ignored: (S, G) ignore flag of every object in every setting.
        crowd: (G,) crowd flags (a crowd can be matched any number of times).

    Returns:
        (S, T, D) index of the object each detection matched, -1 where it matched none.
    """
    num_settings, num_gt = gt_ignored.shape
    num_dets, num_thr = ious.shape[0], len(_MATCH_THRESHOLDS)
    gt_index = np.full((num_settings, num_thr, num_dets), -1)
    taken = np.zeros((num_settings, num_thr, num_gt), bool)
    regular = ~gt_ignored[:, None, :]
    above = ious[:, None, :] >= _MATCH_THRESHOLDS[None, :, None]  # (D, T, G)
    for d in np.flatnonzero(above.any(axis=(1, 2))):
        eligible = above[d] & (~taken | crowd)
        best = _last_best(eligible & regular, ious[d])
        best = np.where(best >= 0, best, _last_best(eligible & ~regular, ious[d]))
        s_idx, t_idx = np.nonzero(best >= 0)
        taken[s_idx, t_idx, best[s_idx, t_idx]] = True
        gt_index[:, :, d] = best
    return gt_index


def _evaluate_group(
    objects: Sequence[_GtObject], detections: Sequence[_Detection], settings: Sequence[str]
) -> _GroupResult:
    """Match one (video, category) in every setting: detections in results order."""
    scores = np.array([d.score for d in detections], dtype=np.float64)
    order = np.argsort(-scores, kind="mergesort")[: MAX_DETS[-1]]
    dets = [detections[i] for i in order]
    ious = _video_iou([d.masks for d in dets], [g.masks for g in objects])

    gt_area = np.array([g.mean_area for g in objects], dtype=np.float64)
    gt_occ = np.array([g.occlusion for g in objects], dtype=np.float64)
    crowd = np.array([g.crowd for g in objects], dtype=bool)
    gt_counts = np.array([g.id != 0 for g in objects], dtype=bool)
    det_area = np.array([d.masks.mean_area() for d in dets], dtype=np.float64)
    gt_ignored = np.empty((len(settings), len(objects)), bool)
    det_outside = np.empty((len(settings), len(dets)), bool)
    for s, name in enumerate(settings):
        (lo, hi), occlusion = SETTINGS[name]
        gt_ignored[s] = crowd | (gt_area < lo) | (gt_area > hi)
        if occlusion is not None:  # NaN (no labels) is outside every group
            gt_ignored[s] |= ~((gt_occ >= occlusion[0]) & (gt_occ <= occlusion[1]))
        det_outside[s] = (det_area < lo) | (det_area > hi)

    gt_index = _match(ious, gt_ignored, crowd)
    # index -1 (no match) reads an appended False column
    s_idx = np.arange(len(settings))[:, None, None]
    hit_ignored = np.pad(gt_ignored, ((0, 0), (0, 1)))[s_idx, gt_index]
    matched = np.append(gt_counts, False)[gt_index]
    ignored = hit_ignored | (~matched & det_outside[:, None, :])
    return _GroupResult(scores[order], matched, ignored, gt_ignored)


def _accumulate(
    groups: Sequence[_GroupResult], setting: int, max_det: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """Interpolated precision (T, R) and final recall (T,) of one category; None without GT."""
    num_gt = sum(int(np.count_nonzero(~g.gt_ignored[setting])) for g in groups)
    if num_gt == 0:
        return None
    scores = np.concatenate([g.scores[:max_det] for g in groups])
    order = np.argsort(-scores, kind="mergesort")
    matched = np.concatenate([g.matched[setting, :, :max_det] for g in groups], axis=1)[:, order]
    ignored = np.concatenate([g.ignored[setting, :, :max_det] for g in groups], axis=1)[:, order]
    tp = np.cumsum(matched & ~ignored, axis=1).astype(np.float64)
    fp = np.cumsum(~matched & ~ignored, axis=1).astype(np.float64)
    num_dets = tp.shape[1]
    recall = tp / num_gt
    precision = tp / (fp + tp + np.spacing(1))
    precision = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    interpolated = np.zeros((len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS)))
    for t in range(len(IOU_THRESHOLDS)):
        idx = np.searchsorted(recall[t], RECALL_THRESHOLDS, side="left")
        reached = idx < num_dets
        interpolated[t, reached] = precision[t, idx[reached]]
    final_recall = recall[:, -1] if num_dets else np.zeros(len(IOU_THRESHOLDS))
    return interpolated, final_recall


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
    """
    truth = gt if isinstance(gt, GroundTruth) else GroundTruth.from_source(gt)
    detections = truth._read_results(_load_results(results))
    settings = list(SETTINGS)
    if not truth.has_occlusion:
        settings = [s for s in settings if s not in _OCCLUSION_SETTINGS]

    num_thr, num_rec, num_cat = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), len(truth.category_ids)
    precision = -np.ones((len(settings), len(MAX_DETS), num_thr, num_rec, num_cat))
    recall = -np.ones((len(settings), len(MAX_DETS), num_thr, num_cat))
    groups: dict[int, list[_GroupResult]] = defaultdict(list)  # per category, videos in order
    for video in truth.video_ids:
        objects, dets = truth._objects(video), detections.get(video, {})
        for category in sorted(objects.keys() | dets.keys()):
            found = _evaluate_group(objects.get(category, []), dets.get(category, []), settings)
            groups[category].append(found)
    for k, category in enumerate(truth.category_ids):
        for s in range(len(settings)):
            for m, max_det in enumerate(MAX_DETS):
                curves = _accumulate(groups[category], s, max_det)
                if curves is not None:
                    precision[s, m, :, :, k], recall[s, m, :, k] = curves

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
