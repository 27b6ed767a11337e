"""Parse and validate OVIS / YouTube-VIS annotation files (no torch).

The format (SPEC-models.md §1.1): top-level ``videos``, ``annotations`` (one entry per object
*track*, ``null`` for inference-only splits) and ``categories``. Every per-frame list of a track
(``segmentations``, ``bboxes``, ``areas`` and the optional OVIS ``occlusion``) has exactly one
entry per frame of its video; ``null`` marks a frame where the object is absent.

Every problem is reported as one :class:`AnnotationError` naming the video or annotation id and
the field, never as an opaque trace from deep inside pycocotools and never by silently dropping
data.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

OCCLUSION_LEVELS = ("no_occlusion", "slight_occlusion", "severe_occlusion")
"""OVIS per-frame occlusion labels, from least to most occluded."""


class AnnotationError(ValueError):
    """An annotation file that does not follow the OVIS / YouTube-VIS format."""


def _fail(where: str, message: str) -> AnnotationError:
    return AnnotationError(f"{where}: {message}")


@dataclass(frozen=True)
class Category:
    """A dataset category: ``id`` as in the JSON (1-based in OVIS) and its name."""

    id: int
    name: str


@dataclass
class Track:
    """One annotated object track (one entry of ``annotations``).

    Attributes:
        id: annotation id, which is the object's track identity.
        video_id: id of the video the track belongs to.
        category_id: dataset category id.
        iscrowd: crowd flag (crowd tracks are ignored by training and evaluation).
        segmentations: raw per-frame entries (RLE dict, polygon list or None), length = video
            length.
        bboxes: per-frame ``[x, y, w, h]`` in absolute pixels, or None where absent.
        areas: per-frame mask areas in pixels, or None where absent.
        occlusion: per-frame OVIS occlusion labels (see :data:`OCCLUSION_LEVELS`) or None; the
            whole attribute is None when the file carries no occlusion labels.
        height: frame height of the video in pixels.
        width: frame width of the video in pixels.
    """

    id: int
    video_id: int
    category_id: int
    iscrowd: bool
    segmentations: list[Any]
    bboxes: list[list[float] | None]
    areas: list[float | None]
    occlusion: list[str | None] | None
    height: int
    width: int

    def rle(self, t: int) -> dict | None:
        """Compressed RLE of frame ``t`` (``counts`` as bytes), or None where absent."""
        seg = self.segmentations[t]
        if seg is None:
            return None
        return to_compressed_rle(seg, self.height, self.width)

    def mask(self, t: int) -> np.ndarray | None:
        """Binary mask ``(H, W)`` bool of frame ``t``, or None where absent."""
        rle = self.rle(t)
        return None if rle is None else mask_utils.decode(rle).astype(bool)

    def present_frames(self) -> list[int]:
        """Frame indices where the object has a segmentation."""
        return [t for t, seg in enumerate(self.segmentations) if seg is not None]


@dataclass
class Video:
    """One video: its frames (``file_names`` relative to the image root) and object tracks."""

    id: int
    width: int
    height: int
    length: int
    file_names: list[str]
    tracks: list[Track] = field(default_factory=list)


@dataclass
class VISAnnotations:
    """A parsed and validated OVIS / YouTube-VIS annotation file.

    Attributes:
        videos: videos in file order.
        categories: categories sorted by id.
        has_annotations: False for inference-only splits (``"annotations": null``).
        has_occlusion: True when the tracks carry OVIS ``occlusion`` labels.
        image_root: folder that ``file_names`` are relative to, if known.
    """

    videos: list[Video]
    categories: list[Category]
    has_annotations: bool
    has_occlusion: bool
    image_root: Path | None = None

    def __post_init__(self) -> None:
        self._by_id = {v.id: v for v in self.videos}
        self._label_of = {c.id: i for i, c in enumerate(self.categories)}

    @property
    def num_classes(self) -> int:
        """Number of foreground categories."""
        return len(self.categories)

    def video(self, video_id: int) -> Video:
        """The video with this id (KeyError naming the id if absent)."""
        try:
            return self._by_id[video_id]
        except KeyError:
            raise KeyError(f"no video with id {video_id}") from None

    def label(self, category_id: int) -> int:
        """0-based contiguous label of a dataset category id."""
        return self._label_of[category_id]

    def category_id(self, label: int) -> int:
        """Dataset category id of a 0-based contiguous label."""
        return self.categories[label].id

    def frame_path(self, video: Video, t: int) -> Path:
        """Absolute path of frame ``t`` of ``video`` (needs ``image_root``)."""
        if self.image_root is None:
            raise ValueError("image_root is not set: pass it to load_annotations()")
        return self.image_root / video.file_names[t]


def to_compressed_rle(seg: Any, height: int, width: int) -> dict:
    """Convert one frame's segmentation (any COCO form) to compressed RLE.

    Args:
        seg: compressed RLE (``counts`` str/bytes), uncompressed RLE (``counts`` list) or a
            polygon list ``[[x1, y1, x2, y2, ...], ...]``.
        height: frame height.
        width: frame width.

    Returns:
        ``{"size": [h, w], "counts": bytes}``.
    """
    if isinstance(seg, Mapping):
        counts = seg["counts"]
        if isinstance(counts, list):
            return mask_utils.frPyObjects(dict(seg), height, width)
        if isinstance(counts, str):
            return {"size": list(seg["size"]), "counts": counts.encode("utf-8")}
        return dict(seg)
    rles = mask_utils.frPyObjects(seg, height, width)
    return mask_utils.merge(rles) if isinstance(rles, list) else rles


def _check_segmentation(seg: Any, where: str, height: int, width: int) -> None:
    if isinstance(seg, Mapping):
        if "counts" not in seg or "size" not in seg:
            raise _fail(where, "RLE must have 'size' and 'counts'")
        size = list(seg["size"])
        if size != [height, width]:
            raise _fail(where, f"RLE size {size} != video size [{height}, {width}]")
        counts = seg["counts"]
        if isinstance(counts, list):
            total = sum(counts)
            if total != height * width:
                raise _fail(
                    where, f"uncompressed RLE counts sum to {total}, expected {height * width}"
                )
        elif not isinstance(counts, (str, bytes)):
            raise _fail(
                where, f"RLE counts must be a list or a string, got {type(counts).__name__}"
            )
    elif isinstance(seg, list):
        if not seg or not all(isinstance(p, list) and len(p) >= 6 for p in seg):
            raise _fail(where, "polygons must be a non-empty list of [x1, y1, x2, y2, x3, y3, ...]")
    else:
        raise _fail(where, f"expected RLE dict, polygon list or null, got {type(seg).__name__}")


def _require(entry: Mapping, key: str, where: str) -> Any:
    if key not in entry:
        raise _fail(where, f"missing field '{key}'")
    return entry[key]


def _parse_video(raw: Any, index: int) -> Video:
    if not isinstance(raw, Mapping):
        raise _fail(f"videos[{index}]", "must be an object")
    vid = _require(raw, "id", f"videos[{index}]")
    where = f"video {vid}"
    file_names = _require(raw, "file_names", where)
    if not isinstance(file_names, list) or not file_names:
        raise _fail(where, "field 'file_names' must be a non-empty list (empty video)")
    length = int(raw.get("length", len(file_names)))
    if length != len(file_names):
        raise _fail(where, f"field 'length' is {length} but 'file_names' has {len(file_names)}")
    width, height = int(_require(raw, "width", where)), int(_require(raw, "height", where))
    if width <= 0 or height <= 0:
        raise _fail(where, f"fields 'width'/'height' must be positive, got {width}x{height}")
    return Video(id=int(vid), width=width, height=height, length=length, file_names=file_names)


def _per_frame(raw: Mapping, key: str, where: str, length: int, required: bool) -> list | None:
    value = raw.get(key)
    if value is None:
        if required:
            raise _fail(where, f"missing field '{key}'")
        return None
    if not isinstance(value, list) or len(value) != length:
        got = len(value) if isinstance(value, list) else type(value).__name__
        raise _fail(where, f"field '{key}' has {got} entries, video length is {length}")
    return value


def _parse_track(raw: Any, index: int, videos: Mapping[int, Video], cat_ids: set[int]) -> Track:
    if not isinstance(raw, Mapping):
        raise _fail(f"annotations[{index}]", "must be an object")
    ann_id = _require(raw, "id", f"annotations[{index}]")
    where = f"annotation {ann_id}"
    video_id = _require(raw, "video_id", where)
    if video_id not in videos:
        raise _fail(where, f"field 'video_id' names unknown video {video_id}")
    video = videos[video_id]
    where = f"annotation {ann_id} (video {video_id})"
    category_id = _require(raw, "category_id", where)
    if category_id not in cat_ids:
        raise _fail(where, f"field 'category_id' is unknown category id {category_id}")
    segs = _per_frame(raw, "segmentations", where, video.length, required=True)
    assert segs is not None
    bboxes = _per_frame(raw, "bboxes", where, video.length, required=False)
    areas = _per_frame(raw, "areas", where, video.length, required=False)
    occlusion = _per_frame(raw, "occlusion", where, video.length, required=False)
    h, w = video.height, video.width
    for t, seg in enumerate(segs):
        if seg is not None:
            _check_segmentation(seg, f"{where} field 'segmentations'[{t}]", h, w)
    if bboxes is None:  # derive boxes from masks where the file has none
        bboxes = [
            None if s is None else mask_utils.toBbox(to_compressed_rle(s, h, w)).tolist()
            for s in segs
        ]
    else:
        for t, box in enumerate(bboxes):
            if box is not None and (not isinstance(box, list) or len(box) != 4):
                raise _fail(f"{where} field 'bboxes'[{t}]", f"expected [x, y, w, h], got {box}")
    if areas is None:
        areas = [
            None if s is None else float(mask_utils.area(to_compressed_rle(s, h, w))) for s in segs
        ]
    if occlusion is not None:
        for t, level in enumerate(occlusion):
            if level is not None and level not in OCCLUSION_LEVELS:
                raise _fail(
                    f"{where} field 'occlusion'[{t}]",
                    f"unknown level {level!r}, expected one of {OCCLUSION_LEVELS} or null",
                )
    return Track(
        id=int(ann_id),
        video_id=int(video_id),
        category_id=int(category_id),
        iscrowd=bool(raw.get("iscrowd", 0)),
        segmentations=segs,
        bboxes=bboxes,
        areas=areas,
        occlusion=occlusion,
        height=h,
        width=w,
    )


def parse_annotations(
    data: Mapping[str, Any], image_root: str | Path | None = None
) -> VISAnnotations:
    """Validate a loaded OVIS / YouTube-VIS dict and turn it into :class:`VISAnnotations`.

    Args:
        data: the decoded JSON.
        image_root: folder that ``file_names`` are relative to (``.../JPEGImages``).

    Raises:
        AnnotationError: naming the video / annotation id and the field at fault.
    """
    if not isinstance(data, Mapping):
        raise AnnotationError("annotation file: top level must be a JSON object")
    raw_videos = data.get("videos")
    if not isinstance(raw_videos, list) or not raw_videos:
        raise AnnotationError("annotation file: field 'videos' must be a non-empty list")
    raw_cats = data.get("categories")
    if not isinstance(raw_cats, list) or not raw_cats:
        raise AnnotationError("annotation file: field 'categories' must be a non-empty list")
    categories = sorted(
        (
            Category(int(_require(c, "id", f"categories[{i}]")), str(c.get("name", c["id"])))
            for i, c in enumerate(raw_cats)
        ),
        key=lambda c: c.id,
    )
    cat_ids = {c.id for c in categories}
    if len(cat_ids) != len(categories):
        raise AnnotationError("annotation file: field 'categories' has duplicate ids")

    videos: dict[int, Video] = {}
    for i, raw in enumerate(raw_videos):
        video = _parse_video(raw, i)
        if video.id in videos:
            raise _fail(f"video {video.id}", "duplicate video id")
        videos[video.id] = video

    raw_anns = data.get("annotations")
    has_annotations = raw_anns is not None
    has_occlusion = False
    if has_annotations:
        if not isinstance(raw_anns, list):
            raise AnnotationError("annotation file: field 'annotations' must be a list or null")
        seen: set[int] = set()
        for i, raw in enumerate(raw_anns):
            track = _parse_track(raw, i, videos, cat_ids)
            if track.id in seen:
                raise _fail(f"annotation {track.id}", "duplicate annotation id")
            seen.add(track.id)
            has_occlusion |= track.occlusion is not None
            videos[track.video_id].tracks.append(track)
    return VISAnnotations(
        videos=list(videos.values()),
        categories=categories,
        has_annotations=has_annotations,
        has_occlusion=has_occlusion,
        image_root=Path(image_root) if image_root is not None else None,
    )


def load_annotations(
    source: str | Path | Mapping[str, Any],
    image_root: str | Path | None = None,
    check_files: bool = False,
) -> VISAnnotations:
    """Load, validate and parse an OVIS / YouTube-VIS annotation file.

    Args:
        source: path of the JSON file, or the already decoded dict.
        image_root: folder that the videos' ``file_names`` are relative to. For a path source in
            the standard layout (``ROOT/annotations/x.json`` next to ``ROOT/JPEGImages``) it
            defaults to ``ROOT/JPEGImages`` when that folder exists.
        check_files: also check that every frame file exists.

    Raises:
        FileNotFoundError: the JSON (or, with ``check_files``, a frame file) does not exist.
        AnnotationError: the content is malformed (message names the id and the field).
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        data = read_json(path)
        if image_root is None:
            guess = path.resolve().parent.parent / "JPEGImages"
            image_root = guess if guess.is_dir() else None
    else:
        data = source
    try:
        ann = parse_annotations(data, image_root)
    except AnnotationError as e:
        if isinstance(source, (str, Path)):
            raise AnnotationError(f"{source}: {e}") from None
        raise
    if check_files:
        check_frame_files(ann)
    return ann


def check_frame_files(ann: VISAnnotations) -> None:
    """Raise FileNotFoundError naming the first video and frame whose image file is missing."""
    for video in ann.videos:
        for t in range(video.length):
            path = ann.frame_path(video, t)
            if not path.is_file():
                raise FileNotFoundError(f"video {video.id}: frame {t} file missing: {path}")


def read_json(path: Path) -> Any:
    """The decoded JSON of an annotation file.

    Raises:
        FileNotFoundError: the file does not exist (the message names it).
        AnnotationError: the file is not valid JSON.
    """
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        with path.open() as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path}: not valid JSON ({e})") from None


def count_categories(path: str | Path) -> int:
    """Number of categories of an annotation file, without validating the rest of it.

    Configs that take ``num_classes`` from the data (``conf/data/custom.yaml``) call this while
    Hydra composes, so it only reads the JSON; the DataModule validates the whole file later.

    Raises:
        FileNotFoundError: the file does not exist (the message names it).
        AnnotationError: the file is not JSON or has no non-empty ``categories`` list.
    """
    path = Path(path)
    data = read_json(path)
    categories = data.get("categories") if isinstance(data, Mapping) else None
    if not isinstance(categories, list) or not categories:
        raise AnnotationError(f"{path}: field 'categories' must be a non-empty list")
    return len(categories)
