"""Results formatting: per-frame track outputs -> results.json entries, and the zip writer."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from ovisnet.evaluation import (
    VideoResultBuilder,
    encode_mask,
    evaluate_results,
    format_video_results,
    write_results,
)


def box(x: int, y: int, w: int = 3, h: int = 2, size: tuple[int, int] = (8, 10)) -> np.ndarray:
    m = np.zeros(size, bool)
    m[y : y + h, x : x + w] = True
    return m


def decode(rle: dict) -> np.ndarray:
    return mask_utils.decode(rle).astype(bool)


def test_score_is_mean_category_is_majority_and_absent_frames_are_null():
    builder = VideoResultBuilder(video_id=7, length=5)
    outputs = [(0, 0.2, 3), (1, 0.4, 5), (3, 0.9, 5), (4, 0.5, 3)]  # tie 3 vs 5 -> 3
    for t, score, label in outputs:
        builder.add(11, t, score, label, box(t, 1))
    builder.add(4, 2, 0.3, 2, box(0, 5))
    builder.add(4, 3, 0.6, 8, box(1, 5))
    builder.add(4, 4, 0.3, 8, box(2, 5))  # 8 wins 2:1
    first, second = builder.finalize()  # increasing track id: 4 then 11
    assert first["category_id"] == 8 and first["score"] == pytest.approx(0.4)
    assert second == {
        "video_id": 7,
        "category_id": 3,
        "score": pytest.approx(0.5),
        "segmentations": second["segmentations"],
    }
    segs = second["segmentations"]
    assert len(segs) == 5 and segs[2] is None
    assert all(isinstance(s["counts"], str) and s["size"] == [8, 10] for s in segs if s)
    assert (decode(segs[3]) == box(3, 1)).all()
    assert first["segmentations"][:2] == [None, None]
    json.dumps([first, second])  # JSON-ready as is


def test_rle_inputs_and_whole_frame_adds():
    m = box(2, 3)
    compressed = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))  # bytes counts
    flat = m.flatten(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    uncompressed = {"size": [8, 10], "counts": runs}
    for rle in (compressed, uncompressed):
        out = encode_mask(rle)
        assert isinstance(out["counts"], str) and (decode(out) == m).all()
    builder = VideoResultBuilder(1, 2)
    builder.add_frame(0, [5, 6], [0.5, 0.7], [1, 2], np.stack([box(0, 0), box(5, 5)]))
    builder.add_frame(1, np.array([6]), np.array([0.9]), np.array([2]), [compressed])
    entries = builder.finalize()
    assert [e["score"] for e in entries] == pytest.approx([0.5, 0.8])
    assert (decode(entries[1]["segmentations"][1]) == m).all()


def test_format_video_results_matches_the_builder():
    tracks = {2: [(0, 0.6, 1, box(0, 0)), (1, 0.8, 1, box(1, 0))], 1: [(1, 0.1, 2, box(5, 5))]}
    entries = format_video_results(3, 2, tracks)
    assert [e["category_id"] for e in entries] == [2, 1]
    assert entries[1]["score"] == pytest.approx(0.7)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda b: b.add(1, 3, 0.5, 1, box(0, 0)), "frame index outside [0, 3)"),
        (lambda b: b.add(1, 0, 0.5, -1, box(0, 0)), "label"),
        (lambda b: b.add(2, 1, 0.5, 1, box(0, 0, size=(4, 4))), "mask size [4, 4]"),
        (lambda b: b.add(1, 0, 0.5, 1, box(0, 0)), "already has an output"),
        (lambda b: b.add(1, 1, 0.5, 1, np.zeros((1, 8, 10), bool)), "2-D"),
        (lambda b: b.add_frame(1, [1, 2], [0.5], [1], [box(0, 0)]), "same length"),
    ],
)
def test_builder_errors(call, message):
    builder = VideoResultBuilder(9, 3)
    builder.add(1, 0, 0.5, 1, box(0, 0))
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(")", r"\)")):
        call(builder)


def test_write_results_json_and_zip(tmp_path: Path):
    builder = VideoResultBuilder(np.int64(1), 2)
    builder.add(0, 0, np.float32(0.9), np.int64(1), box(0, 0))
    builder.add(0, 1, 0.7, 1, box(1, 0))
    results = builder.finalize()
    path = write_results(results, tmp_path / "out")
    assert path == tmp_path / "out" / "results.json"
    with zipfile.ZipFile(tmp_path / "out" / "results.zip") as archive:
        assert archive.namelist() == ["results.json"]
        assert json.loads(archive.read("results.json")) == json.loads(path.read_text())
    assert json.loads(path.read_text())[0]["score"] == pytest.approx(0.8)
    other = write_results(results, tmp_path / "preds.json", zip=False)
    assert other.exists() and not (tmp_path / "preds.zip").exists()
    raw = mask_utils.encode(np.asfortranarray(box(0, 0).astype(np.uint8)))  # bytes counts
    entry = {"video_id": np.int64(1), "category_id": np.int32(1), "score": np.float32(0.5)}
    loaded = json.loads(write_results([dict(entry, segmentations=[raw, None])], other).read_text())
    assert loaded == [{**entry, "segmentations": [encode_mask(raw), None]}]
    # the written file evaluates: its track is the ground truth -> AP 1
    gt = {
        "videos": [{"id": 1, "height": 8, "width": 10, "length": 2}],
        "categories": [{"id": 1}],
        "annotations": [
            {
                "id": 1,
                "video_id": 1,
                "category_id": 1,
                "iscrowd": 0,
                "segmentations": results[0]["segmentations"],
                "areas": [6, 6],
            }
        ],
    }
    assert evaluate_results(gt, tmp_path / "out" / "results.zip")["AP"] == pytest.approx(1.0)
