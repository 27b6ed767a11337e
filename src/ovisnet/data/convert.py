"""Convert between the mmdetection / CocoVID video format and YouTube-VIS (OVIS) (no torch).

``python -m ovisnet.data.convert --to ytvis|cocovid IN.json OUT.json``

CocoVID (mmtracking / mmdetection) stores one entry per *frame* in ``images`` (``video_id``,
0-based ``frame_id``, ``file_name``, ``width``, ``height``) and one annotation per object per
frame (``image_id``, ``category_id``, ``instance_id``, ``bbox``, ``area``, ``segmentation``,
``iscrowd``). YouTube-VIS stores one entry per video with its ``file_names`` in temporal order and
one annotation per object *track* whose per-frame lists hold ``null`` where the object is absent
(see :mod:`ovisnet.data.annotations`).

Conventions of the mapping:

* ytvis → cocovid: images get ids 1, 2, … in video then frame order and ``frame_id`` is the frame
  index; a track's annotation id becomes the ``instance_id`` of one annotation per frame where
  the track is present (annotation ids 1, 2, …). Segmentations are copied as given (polygons or
  RLE). The OVIS per-frame ``occlusion`` label becomes an ``occlusion`` string on the frame's
  annotation. A video's ``name`` is the folder of its first frame.
* cocovid → ytvis: frames are sorted by ``frame_id``; a track is one ``(video_id, instance_id)``
  pair. Its annotation id is the ``instance_id`` when every instance id names a single track,
  otherwise all tracks are numbered 1, 2, … in order of first appearance. A track whose frames
  disagree on the category is an error; ``iscrowd`` is set if any frame is a crowd. ``bbox`` /
  ``area`` are computed from the mask where absent; ``occlusion`` strings become the per-frame
  list (null elsewhere). mmdetection's boolean ``occluded`` flag has no OVIS level and is dropped.
* Other top-level keys (``info``, ``licenses``) are copied. ``"annotations": null`` (an
  inference-only YouTube-VIS split) becomes an empty list.

So ytvis → cocovid → ytvis gives back the same videos and tracks, up to key and track order
(and bboxes / areas, which are filled in where the original had none).

Every problem raises :class:`~ovisnet.data.annotations.AnnotationError` (a ``ValueError``) that
names the entry at fault and, from the CLI, the input file.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

from pycocotools import mask as mask_utils

from ovisnet.data.annotations import AnnotationError, parse_annotations, to_compressed_rle

FORMATS = ("ytvis", "cocovid")
"""Target formats of the CLI's ``--to``."""

_MAIN_KEYS = {"videos", "images", "annotations", "categories"}


def _field(entry: Any, key: str, where: str) -> Any:
    if not isinstance(entry, Mapping):
        raise AnnotationError(f"{where}: must be an object")
    if key not in entry:
        raise AnnotationError(f"{where}: missing field '{key}'")
    return entry[key]


def _top_list(data: Mapping[str, Any], key: str, hint: str) -> list:
    value = data.get(key)
    if not isinstance(value, list):
        raise AnnotationError(f"top-level field '{key}' must be a list{hint}")
    return value


def _extra_keys(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in _MAIN_KEYS}


def _video_name(file_names: Sequence[str], video_id: int) -> str:
    parent = Path(file_names[0]).parent.as_posix()
    return parent if parent != "." else str(video_id)


def ytvis_to_cocovid(data: Mapping[str, Any]) -> dict[str, Any]:
    """Turn a YouTube-VIS / OVIS annotation dict into CocoVID (one annotation per frame).

    Args:
        data: the decoded YouTube-VIS JSON; it is validated with
            :func:`~ovisnet.data.annotations.parse_annotations` first.

    Returns:
        The CocoVID dict (``videos``, ``images``, ``annotations``, ``categories`` and any other
        top-level keys of ``data``).

    Raises:
        AnnotationError: ``data`` is not valid YouTube-VIS (the message names the entry).
    """
    if isinstance(data, Mapping) and "images" in data and "videos" in data:
        raise AnnotationError("top-level field 'images' found: the input is CocoVID already")
    parsed = parse_annotations(data)
    videos, images, annotations = [], [], []
    for video in parsed.videos:
        videos.append(
            {
                "id": video.id,
                "name": _video_name(video.file_names, video.id),
                "width": video.width,
                "height": video.height,
            }
        )
        first_image_id = len(images) + 1
        for t, file_name in enumerate(video.file_names):
            images.append(
                {
                    "id": first_image_id + t,
                    "video_id": video.id,
                    "frame_id": t,
                    "file_name": file_name,
                    "width": video.width,
                    "height": video.height,
                }
            )
        for track in video.tracks:
            for t in track.present_frames():
                ann = {
                    "id": len(annotations) + 1,
                    "image_id": first_image_id + t,
                    "video_id": video.id,
                    "category_id": track.category_id,
                    "instance_id": track.id,
                    "bbox": track.bboxes[t],
                    "area": track.areas[t],
                    "segmentation": track.segmentations[t],
                    "iscrowd": int(track.iscrowd),
                }
                if track.occlusion is not None and track.occlusion[t] is not None:
                    ann["occlusion"] = track.occlusion[t]
                annotations.append(ann)
    return {
        **_extra_keys(data),
        "videos": videos,
        "images": images,
        "annotations": annotations,
        "categories": list(data["categories"]),
    }


def _group_frames(
    raw_videos: list, raw_images: list
) -> tuple[dict[int, dict[str, Any]], dict[int, tuple[int, int]]]:
    """Videos in YouTube-VIS form (without tracks) and, per image id, ``(video_id, frame)``."""
    videos: dict[int, dict[str, Any]] = {}
    for i, raw in enumerate(raw_videos):
        vid = _field(raw, "id", f"videos[{i}]")
        if vid in videos:
            raise AnnotationError(f"video {vid}: duplicate video id")
        videos[vid] = {"raw": raw, "images": []}
    for i, raw in enumerate(raw_images):
        image_id = _field(raw, "id", f"images[{i}]")
        where = f"image {image_id}"
        for key in ("video_id", "frame_id", "file_name", "width", "height"):
            _field(raw, key, where)
        vid = raw["video_id"]
        if vid not in videos:
            raise AnnotationError(f"{where}: field 'video_id' names unknown video {vid}")
        videos[vid]["images"].append(raw)

    frame_of: dict[int, tuple[int, int]] = {}
    out: dict[int, dict[str, Any]] = {}
    for vid, entry in videos.items():
        frames = sorted(entry["images"], key=lambda im: im["frame_id"])
        if not frames:
            raise AnnotationError(f"video {vid}: has no images")
        for a, b in pairwise(frames):
            if a["frame_id"] == b["frame_id"]:
                raise AnnotationError(
                    f"video {vid}: images {a['id']} and {b['id']} share frame_id {a['frame_id']}"
                )
        sizes = {(im["width"], im["height"]) for im in frames}
        raw = entry["raw"]
        width, height = raw.get("width", frames[0]["width"]), raw.get("height", frames[0]["height"])
        if sizes != {(width, height)}:
            raise AnnotationError(
                f"video {vid}: frames must all be {width}x{height}, found sizes {sorted(sizes)}"
            )
        for t, im in enumerate(frames):
            if im["id"] in frame_of:
                raise AnnotationError(f"image {im['id']}: duplicate image id")
            frame_of[im["id"]] = (vid, t)
        out[vid] = {
            "id": vid,
            "width": width,
            "height": height,
            "length": len(frames),
            "file_names": [im["file_name"] for im in frames],
        }
    return out, frame_of


def cocovid_to_ytvis(data: Mapping[str, Any]) -> dict[str, Any]:
    """Turn a CocoVID annotation dict into YouTube-VIS (one annotation per object track).

    Args:
        data: the decoded CocoVID JSON.

    Returns:
        The YouTube-VIS dict, validated with :func:`~ovisnet.data.annotations.parse_annotations`.

    Raises:
        AnnotationError: a missing field, an image of an unknown video, an instance annotated
            twice in one frame, a track with two categories, ... (the message names the entry).
    """
    if not isinstance(data, Mapping):
        raise AnnotationError("top level must be a JSON object")
    hint = " (is the input YouTube-VIS already?)" if "images" not in data else ""
    raw_videos = _top_list(data, "videos", "")
    raw_images = _top_list(data, "images", hint)
    raw_anns = _top_list(data, "annotations", "")
    _top_list(data, "categories", "")
    videos, frame_of = _group_frames(raw_videos, raw_images)

    tracks: dict[tuple[int, int], dict[str, Any]] = {}
    for i, raw in enumerate(raw_anns):
        ann_id = raw.get("id") if isinstance(raw, Mapping) else None
        where = f"annotation {ann_id}" if ann_id is not None else f"annotations[{i}]"
        image_id = _field(raw, "image_id", where)
        for key in ("category_id", "instance_id", "segmentation"):
            _field(raw, key, where)
        if image_id not in frame_of:
            raise AnnotationError(f"{where}: field 'image_id' names unknown image {image_id}")
        vid, t = frame_of[image_id]
        video = videos[vid]
        key = (vid, raw["instance_id"])
        track = tracks.get(key)
        if track is None:
            n = video["length"]
            track = tracks[key] = {
                "instance_id": raw["instance_id"],
                "video_id": vid,
                "category_id": raw["category_id"],
                "iscrowd": 0,
                "segmentations": [None] * n,
                "bboxes": [None] * n,
                "areas": [None] * n,
                "occlusion": [None] * n,
            }
        where = f"{where} (video {vid}, instance {raw['instance_id']}, frame {t})"
        if track["segmentations"][t] is not None:
            raise AnnotationError(f"{where}: the instance is annotated twice in this frame")
        if raw["category_id"] != track["category_id"]:
            raise AnnotationError(
                f"{where}: category_id {raw['category_id']} differs from the track's "
                f"category_id {track['category_id']} in an earlier frame"
            )
        seg = raw["segmentation"]
        bbox, area = raw.get("bbox"), raw.get("area")
        if bbox is None or area is None:
            try:
                rle = to_compressed_rle(seg, video["height"], video["width"])
            except Exception as e:  # pycocotools raises bare Exceptions on malformed input
                raise AnnotationError(f"{where}: unreadable segmentation ({e})") from None
            bbox = mask_utils.toBbox(rle).tolist() if bbox is None else bbox
            area = float(mask_utils.area(rle)) if area is None else area
        track["segmentations"][t] = seg
        track["bboxes"][t] = list(bbox)
        track["areas"][t] = area
        track["occlusion"][t] = raw.get("occlusion")
        track["iscrowd"] |= int(bool(raw.get("iscrowd", 0)))

    instance_ids = [track["instance_id"] for track in tracks.values()]
    keep_ids = len(set(instance_ids)) == len(instance_ids)
    annotations = []
    for number, track in enumerate(tracks.values(), start=1):
        occlusion = track.pop("occlusion")
        instance_id = track.pop("instance_id")
        ann = {"id": instance_id if keep_ids else number, **track}
        if any(level is not None for level in occlusion):
            ann["occlusion"] = occlusion
        annotations.append(ann)
    result = {
        **_extra_keys(data),
        "videos": list(videos.values()),
        "annotations": annotations,
        "categories": list(data["categories"]),
    }
    parse_annotations(result)
    return result


def convert(data: Mapping[str, Any], to: str) -> dict[str, Any]:
    """Convert ``data`` to the format ``to`` (``"ytvis"`` or ``"cocovid"``)."""
    if to == "ytvis":
        return cocovid_to_ytvis(data)
    if to == "cocovid":
        return ytvis_to_cocovid(data)
    raise ValueError(f"unknown target format {to!r}, expected one of {FORMATS}")


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: convert ``IN.json`` to the format of ``--to`` and write ``OUT.json``.

    Raises:
        FileNotFoundError: ``IN.json`` does not exist.
        AnnotationError: ``IN.json`` is not JSON or not in the source format (the message starts
            with its path).
    """
    parser = argparse.ArgumentParser(
        prog="python -m ovisnet.data.convert",
        description="Convert video annotations between CocoVID (mmdetection) and YouTube-VIS.",
    )
    parser.add_argument("--to", required=True, choices=FORMATS, help="target format")
    parser.add_argument("input", type=Path, help="source JSON (the other format)")
    parser.add_argument("output", type=Path, help="where to write the converted JSON")
    args = parser.parse_args(argv)
    if not args.input.is_file():
        raise FileNotFoundError(f"annotation file not found: {args.input}")
    try:
        with args.input.open() as f:
            data = json.load(f)
        result = convert(data, args.to)
    except (json.JSONDecodeError, AnnotationError) as e:
        raise AnnotationError(f"{args.input}: {e}") from None
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with args.output.open("w") as f:
        json.dump(result, f)
    print(
        f"wrote {args.output}: {len(result['videos'])} videos, "
        f"{len(result['annotations'])} annotations ({args.to})"
    )
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except (FileNotFoundError, AnnotationError) as error:
        raise SystemExit(f"ovisnet.data.convert: {error}") from None
