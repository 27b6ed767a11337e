"""Tests of the dataset statistics (ovisnet.stats): BOR / mBOR, counts, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ovisnet.data.annotations import load_annotations
from ovisnet.data.synthetic import generate, mask_bbox, rle_uncompressed
from ovisnet.stats import bor, collect_samples, compute_stats, format_table, main, plot_histograms


@pytest.mark.parametrize(
    ("boxes", "expected"),
    [
        ([[0, 0, 2, 2], [1, 1, 2, 2]], 1 / 7),  # overlap 1, union 4 + 4 - 1
        # three boxes on one row: x [0,4], [2,6], [1,5]; covered twice or more on [1,5] (the
        # triple region [2,4] once, not three times), union [0,6]
        ([[0, 0, 4, 2], [2, 0, 4, 2], [1, 0, 4, 2]], 8 / 12),
        # A [0,2]^2, B [1,3]x[0,2], C [0,2]x[1,3]: pairwise union = AB 2 + AC 2 - overlap 1 = 3
        # (BC = ABC = [1,2]^2 adds nothing); union 4 + 2 + 2 = 8
        ([[0, 0, 2, 2], [1, 0, 2, 2], [0, 1, 2, 2]], 3 / 8),
        ([[0, 0, 2, 2], [5, 5, 1, 1]], 0.0),  # disjoint
        ([[0, 0, 2, 2], [2, 0, 2, 2]], 0.0),  # touching edges share no area
        ([[1.5, 2.5, 3.0, 4.0], [1.5, 2.5, 3.0, 4.0]], 1.0),  # identical
        ([[0, 0, 1.5, 1], [0.5, 0, 1.5, 1]], 0.5),  # float edges: overlap 1, union 2
        ([[0, 0, 2, 2], [1, 1, 0, 3]], 0.0),  # a zero-width box covers nothing
        ([[3, 4, 5, 6]], 0.0),  # a single box
        (np.zeros((0, 4)), 0.0),
    ],
)
def test_bor_hand_computed(boxes, expected: float) -> None:
    assert bor(np.asarray(boxes, dtype=float)) == pytest.approx(expected, abs=1e-12)


def test_bor_matches_pixel_count_on_integer_boxes() -> None:
    rng = np.random.default_rng(0)
    for _ in range(25):
        n = int(rng.integers(2, 7))
        xy = rng.integers(0, 30, (n, 2))
        wh = rng.integers(1, 15, (n, 2))
        cover = np.zeros((50, 50), dtype=int)
        for (x, y), (w, h) in zip(xy, wh, strict=True):
            cover[y : y + h, x : x + w] += 1
        expected = (cover >= 2).sum() / (cover >= 1).sum()
        boxes = np.concatenate([xy, wh], axis=1)
        assert bor(boxes) == pytest.approx(expected, abs=1e-12)
        assert bor(boxes[::-1]) == pytest.approx(expected, abs=1e-12)


def test_compute_stats_on_the_tiny_fixture(tiny_ovis: tuple[Path, dict]) -> None:
    root, _ = tiny_ovis
    stats = compute_stats(load_annotations(root / "annotations" / "train.json"))
    assert (stats["videos"], stats["instances"], stats["masks"], stats["frames"]) == (2, 3, 10, 6)
    assert stats["frames_per_video"] == {"mean": 3.0, "min": 1.0, "max": 5.0}
    assert stats["frames_per_instance"] == pytest.approx({"mean": 10 / 3, "min": 1.0, "max": 5.0})
    assert stats["instances_per_video"] == {"mean": 1.5, "min": 1.0, "max": 2.0}
    # frames of video 1 hold 2, 2, 1, 2, 2 objects; video 2's single frame holds 1
    assert stats["objects_per_frame"] == pytest.approx({"mean": 10 / 6, "min": 1.0, "max": 2.0})
    assert stats["frames_with_objects"] == 6
    assert stats["mbor"] == 0.0  # the boxes never overlap (they touch at y = 10 at most)
    assert stats["occlusion"] == {
        "no_occlusion": 1.0,
        "slight_occlusion": 0.0,
        "severe_occlusion": 0.0,
    }
    assert stats["occlusion_labels"] == 9  # track 20 has no labels
    assert stats["frac_instances_reappearing"] == pytest.approx(1 / 3)  # track 11
    assert stats["instances_per_category"] == {"disc": 2, "square": 1}
    json.dumps(stats)


def _box_mask(h: int, w: int, box: list[int]) -> np.ndarray:
    x, y, bw, bh = box
    mask = np.zeros((h, w), dtype=bool)
    mask[y : y + bh, x : x + bw] = True
    return mask


def _track(ann_id: int, boxes: list, levels: list, h: int = 8, w: int = 8) -> dict:
    masks = [None if b is None else _box_mask(h, w, b) for b in boxes]
    return {
        "id": ann_id,
        "video_id": 1,
        "category_id": 1,
        "iscrowd": 0,
        "segmentations": [None if m is None else rle_uncompressed(m) for m in masks],
        "bboxes": [None if m is None else mask_bbox(m) for m in masks],
        "areas": [None if m is None else int(m.sum()) for m in masks],
        "occlusion": levels,
    }


def test_mbor_ignores_empty_frames_and_counts_single_object_frames() -> None:
    """Frame 0: two boxes (BOR 1/7); frame 1: one box (BOR 0); frame 2: none (ignored)."""
    data = {
        "videos": [{"id": 1, "width": 8, "height": 8, "length": 3, "file_names": ["a", "b", "c"]}],
        "annotations": [
            _track(
                1,
                [[0, 0, 2, 2], [0, 0, 2, 2], None],
                ["slight_occlusion", "severe_occlusion", None],
            ),
            _track(2, [[1, 1, 2, 2], None, None], ["no_occlusion", None, None]),
        ],
        "categories": [{"id": 1, "name": "disc"}],
    }
    stats = compute_stats(load_annotations(data))
    assert stats["frames_with_objects"] == 2
    assert stats["mbor"] == pytest.approx((1 / 7 + 0.0) / 2)
    assert stats["frac_frames_bor_ge_0.2"] == 0.0
    assert stats["objects_per_frame"]["mean"] == pytest.approx(1.0)  # (2 + 1 + 0) / 3
    assert stats["occlusion"] == pytest.approx(
        {"no_occlusion": 1 / 3, "slight_occlusion": 1 / 3, "severe_occlusion": 1 / 3}
    )
    assert stats["frac_instances_severe_once"] == pytest.approx(0.5)
    assert stats["frac_instances_unoccluded"] == pytest.approx(0.5)
    assert stats["frac_instances_reappearing"] == 0.0


def test_stats_of_a_file_without_annotations(tmp_path: Path) -> None:
    data = {
        "videos": [{"id": 7, "width": 8, "height": 8, "length": 2, "file_names": ["a", "b"]}],
        "annotations": None,
        "categories": [{"id": 1, "name": "disc"}],
    }
    samples = collect_samples(load_annotations(data))
    stats = compute_stats(load_annotations(data))
    assert (stats["videos"], stats["frames"], stats["instances"]) == (1, 2, 0)
    assert stats["mbor"] is None and stats["objects_per_frame"] is None
    assert "mBOR" in format_table(stats)
    assert [p.name for p in plot_histograms(samples, tmp_path)] == ["frames_per_video.png"]


def test_stats_of_a_tiny_synthetic_set(tmp_path: Path) -> None:
    result = generate(tmp_path, seed=3, num_videos=3, num_frames=6, size=(96, 64))
    stats = compute_stats(load_annotations(result["train"]))
    assert stats["videos"] == result["num_videos"]["train"] == 2
    assert stats["instances"] == result["num_instances"]["train"]
    assert stats["masks"] == result["num_masks"]["train"]
    assert stats["objects_per_frame"]["mean"] * stats["frames"] == pytest.approx(stats["masks"])
    assert stats["frames_with_objects"] <= stats["frames"] == 12
    assert 0.0 <= stats["mbor"] <= 1.0
    assert sum(stats["occlusion"].values()) == pytest.approx(1.0)
    assert sum(stats["instances_per_category"].values()) == stats["instances"]


def test_cli_prints_and_writes_json_and_plots(
    tiny_ovis: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, _ = tiny_ovis
    ann_path = root / "annotations" / "train.json"
    out_json, plots = tmp_path / "out" / "stats.json", tmp_path / "plots"
    main([str(ann_path), "--json", str(out_json), "--plots", str(plots)])
    printed = capsys.readouterr().out
    assert "mBOR" in printed and "objects / frame" in printed and "no 100.0%" in printed
    assert json.loads(out_json.read_text()) == compute_stats(load_annotations(ann_path))
    names = sorted(p.name for p in plots.iterdir())
    assert names == sorted(
        f"{n}.png"
        for n in (
            "frames_per_video",
            "instances_per_video",
            "frames_per_instance",
            "objects_per_frame",
            "bor",
            "occlusion_levels",
            "instances_per_category",
        )
    )
    assert all((plots / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in names)


def test_cli_rejects_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "missing.json")])
    assert exc.value.code == 2
    assert "not found" in capsys.readouterr().err
