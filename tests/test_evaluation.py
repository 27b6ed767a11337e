"""Video AP with the official OVIS / YouTube-VIS rules: hand-computed cases, errors, CLI."""

from __future__ import annotations

import copy
import gc
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from ovisnet.evaluation import (
    METRIC_KEYS,
    OCCLUSION_METRIC_KEYS,
    EvaluationError,
    GroundTruth,
    evaluate_results,
    vis_eval,
)
from ovisnet.evaluation.__main__ import main
from ovisnet.evaluation.masks import InvalidRLEError, prepend_background

H, W = 12, 16


def rect(x: int, y: int, w: int, h: int, size: tuple[int, int] = (H, W)) -> np.ndarray:
    m = np.zeros(size, bool)
    m[y : y + h, x : x + w] = True
    return m


def rle(mask: np.ndarray | None) -> dict | None:
    if mask is None:
        return None
    out = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    out["counts"] = out["counts"].decode()
    return out


def uncompressed(mask: np.ndarray) -> dict:
    """Uncompressed (column-major, zeros first) RLE."""
    flat = mask.flatten(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    return {"size": list(mask.shape), "counts": [0, *counts] if flat[0] else counts}


def gt_object(ann_id, video_id, masks, category_id=1, iscrowd=0, occlusion=None, areas=None):
    ann = {
        "id": ann_id,
        "video_id": video_id,
        "category_id": category_id,
        "iscrowd": iscrowd,
        "segmentations": [rle(m) for m in masks],
        "areas": areas
        if areas is not None
        else [None if m is None else int(m.sum()) for m in masks],
    }
    if occlusion is not None:
        ann["occlusion"] = occlusion
    return ann


def dataset(annotations, lengths=None, categories=(1, 2), size=(H, W)) -> dict:
    lengths = lengths or {1: 2}
    return {
        "videos": [
            {"id": v, "height": size[0], "width": size[1], "length": n} for v, n in lengths.items()
        ],
        "categories": [{"id": c, "name": f"c{c}"} for c in categories],
        "annotations": annotations,
    }


def det(video_id, masks, score, category_id=1) -> dict:
    return {
        "video_id": video_id,
        "category_id": category_id,
        "score": score,
        "segmentations": [rle(m) for m in masks],
    }


A = [rect(0, 0, 4, 3), rect(1, 0, 4, 3)]
B = [rect(8, 6, 5, 1), rect(8, 6, 3, 1)]  # 5 then 3 pixels


def test_perfect_predictions_give_one_and_keys_follow_occlusion():
    occ = ["no_occlusion", "no_occlusion"]
    gt = dataset([gt_object(1, 1, A, occlusion=occ), gt_object(2, 1, B, occlusion=occ)])
    res = [det(1, A, 0.9), det(1, B, 0.8)]
    m = evaluate_results(gt, res)
    assert tuple(m) == METRIC_KEYS + OCCLUSION_METRIC_KEYS
    for k in ("AP", "AP50", "AP75", "APs", "AR10", "AR100", "ARs", "AP_SO", "AR_SO"):
        assert m[k] == pytest.approx(1.0), k
    for k in ("APm", "APl", "ARm", "ARl", "AP_MO", "AP_HO", "AR_MO", "AR_HO"):
        assert m[k] == -1.0, k  # no ground truth in the setting
    assert m["AR1"] == pytest.approx(0.5)  # two objects share one (video, category)
    no_occ = dataset([gt_object(1, 1, A), gt_object(2, 1, B)])
    assert tuple(evaluate_results(no_occ, res)) == METRIC_KEYS


def test_no_predictions_give_zero_where_there_is_ground_truth():
    gt = dataset([gt_object(1, 1, A, occlusion=["no_occlusion"] * 2)])
    m = evaluate_results(gt, [])
    assert m["AP"] == m["AR100"] == m["APs"] == m["AP_SO"] == 0.0
    assert m["APm"] == m["AP_HO"] == -1.0
    empty = dict(gt, annotations=None)  # a split without annotations
    assert set(evaluate_results(empty, []).values()) == {-1.0}


def test_hand_computed_two_objects_three_detections():
    # d1 = A exactly (IoU 1); d2 disjoint (IoU 0); d3 = B in frame 0 only:
    # IoU(d3, B) = 5 / (5 + 3) = 0.625 (frame 1 has B alone: its 3 pixels join the union).
    gt = dataset([gt_object(1, 1, A), gt_object(2, 1, B)])
    res = [det(1, A, 0.9), det(1, [rect(14, 10, 2, 2)] * 2, 0.8), det(1, [B[0], None], 0.7)]
    m = evaluate_results(gt, res)
    # t in {.5, .55, .6}: TP FP TP -> recall .5 .5 1, interpolated precision 1 2/3 2/3:
    #   51 recall points read 1, 50 read 2/3.  Other 7 thresholds: TP FP FP -> 51 points read 1.
    ap_low, ap_high = (51 + 50 * 2 / 3) / 101, 51 / 101
    assert m["AP50"] == pytest.approx(ap_low, abs=1e-12)
    assert m["AP75"] == pytest.approx(ap_high, abs=1e-12)
    assert m["AP"] == pytest.approx((3 * ap_low + 7 * ap_high) / 10, abs=1e-12)
    assert m["AR100"] == m["AR10"] == pytest.approx((3 * 1.0 + 7 * 0.5) / 10)
    assert m["AR1"] == pytest.approx(0.5)  # only d1 is kept per (video, category)


def test_max_dets_cut_at_100_per_video_and_category():
    gt = dataset([gt_object(1, 1, A)])
    far = [rect(12, 8, 3, 3)] * 2
    hit = det(1, A, 0.01)
    res = [det(1, far, 0.5) for _ in range(99)] + [hit]
    m = evaluate_results(gt, res)
    assert m["AR100"] == pytest.approx(1.0) and m["AR10"] == 0.0 and m["AR1"] == 0.0
    assert m["AP"] == pytest.approx(1 / 100)  # precision 1/100 at the only recall step
    # detections of another category do not count against this cut
    other = [det(1, far, 0.5, category_id=2) for _ in range(50)]
    assert evaluate_results(gt, res + other)["AR100"] == pytest.approx(1.0)
    m = evaluate_results(gt, [*res, det(1, far, 0.5)])  # 101st detection pushes the hit out
    assert m["AR100"] == 0.0 and m["AP"] == 0.0


def test_area_ranges_use_the_areas_field_and_are_inclusive():
    # Mean area comes from the GT 'areas' field (non-null, non-zero entries): (0 and None
    # dropped) mean(16000, 16768) = 16384 = 128**2 -> both small and medium.
    gt = dataset(
        [
            gt_object(1, 1, A, areas=[16000, 16768]),
            gt_object(2, 1, A, category_id=2, areas=[None, 0]),
        ]
    )
    m = evaluate_results(gt, [det(1, A, 0.9), det(1, A, 0.9, category_id=2)])
    assert m["APs"] == m["APm"] == pytest.approx(1.0)
    assert m["APl"] == -1.0  # the matched detection is ignored with its ignored object
    # object 2 has mean area 0: small; a large unmatched detection is ignored in "small" only
    big = [rect(0, 0, 300, 300, size=(300, 300))] * 2
    obj = [rect(0, 0, 4, 3, size=(300, 300))] * 2
    gt = dataset([gt_object(1, 1, obj)], size=(300, 300))
    m = evaluate_results(gt, [det(1, big, 0.9), det(1, obj, 0.5)])
    assert m["APs"] == pytest.approx(1.0)
    assert m["AP"] == pytest.approx(0.5)  # the large FP ranks first in "all"


def test_crowd_is_ignored_can_match_many_and_uses_plain_iou():
    crowd = [rect(8, 4, 8, 8), rect(8, 4, 8, 8)]
    gt = dataset([gt_object(1, 1, A), gt_object(2, 1, crowd, iscrowd=1)])
    res = [det(1, crowd, 0.9), det(1, crowd, 0.8), det(1, A, 0.5)]
    m = evaluate_results(gt, res)
    assert m["AP"] == pytest.approx(1.0) and m["AR100"] == pytest.approx(1.0)
    # a detection covering half the crowd has IoU 0.5 (no COCO crowd IoU): ignored at t = 0.5,
    # a false positive above it -> AP = (1 + 9 * 0.5) / 10
    half = [rect(8, 4, 4, 8), rect(8, 4, 4, 8)]
    m = evaluate_results(gt, [det(1, half, 0.9), det(1, A, 0.5)])
    assert m["AP"] == pytest.approx((1 + 9 * 0.5) / 10)
    only_crowd = dataset([gt_object(2, 1, crowd, iscrowd=1)])
    assert evaluate_results(only_crowd, res)["AP"] == -1.0


@pytest.mark.parametrize(
    ("labels", "groups"),
    [
        (["slight_occlusion", None], (1, 1, 0)),  # 0.25: slight and moderate
        (["no_occlusion", "slight_occlusion", "severe_occlusion", None], (0, 1, 1)),  # 0.5
        (["no_occlusion", "no_occlusion", "severe_occlusion"], (0, 1, 0)),  # top 2: 0.375
        (["severe_occlusion", "no_occlusion", "no_occlusion", "no_occlusion"], (0, 1, 0)),
        (["no_occlusion", "no_occlusion"], (1, 0, 0)),
        (["severe_occlusion", "no_occlusion"], (0, 0, 1)),  # top 1 of 2: 0.75
        ([None, None], (0, 0, 0)),  # no labels: left out of every group (official crashes)
    ],
)
def test_occlusion_score_and_inclusive_groups(labels, groups):
    masks = A + [A[0]] * (len(labels) - 2)
    gt = dataset([gt_object(1, 1, masks, occlusion=labels)], lengths={1: len(labels)})
    m = evaluate_results(gt, [det(1, masks, 0.9)])
    assert m["AP"] == pytest.approx(1.0)
    got = tuple(int(m[k] == pytest.approx(1.0)) for k in ("AP_SO", "AP_MO", "AP_HO"))
    assert got == groups
    assert all(m[k] == -1.0 for k, g in zip(("AP_SO", "AP_MO", "AP_HO"), groups) if not g)


def test_unmatched_detections_stay_false_positives_in_occlusion_groups():
    gt = dataset([gt_object(1, 1, A, occlusion=["severe_occlusion"] * 2)])
    m = evaluate_results(gt, [det(1, [rect(12, 8, 3, 3)] * 2, 0.9), det(1, A, 0.5)])
    assert m["AP_HO"] == pytest.approx(0.5) and m["AP"] == pytest.approx(0.5)
    assert m["AP_SO"] == -1.0


def test_ground_truth_id_zero_quirk_is_kept():
    # The official code records the matched object's id and tests it for truthiness.
    gt = dataset([gt_object(0, 1, A)])
    m = evaluate_results(gt, [det(1, A, 0.9)])
    assert m["AP"] == 0.0 and m["AR100"] == 0.0


def test_segmentation_forms_and_result_sources(tmp_path: Path):
    poly = [[0.0, 0.0, 4.0, 0.0, 4.0, 3.0, 0.0, 3.0]]
    gt = dataset([gt_object(1, 1, A)])
    gt["annotations"][0]["segmentations"] = [uncompressed(A[0]), poly]
    decoded = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(poly, H, W))).astype(bool)
    res = [det(1, [A[0], decoded], 0.9)]
    assert evaluate_results(gt, res)["AP"] == pytest.approx(1.0)
    res_unc = copy.deepcopy(res)
    res_unc[0]["segmentations"] = [uncompressed(A[0]), uncompressed(decoded)]  # tolerated
    assert evaluate_results(gt, res_unc) == evaluate_results(gt, res)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    with zipfile.ZipFile(tmp_path / "results.zip", "w") as archive:
        archive.writestr("results.json", json.dumps(res))
    assert evaluate_results(tmp_path / "gt.json", tmp_path / "results.zip")["AP"] == pytest.approx(
        1.0
    )
    truth = GroundTruth.from_source(str(tmp_path / "gt.json"))
    assert evaluate_results(truth, res)["AP"] == pytest.approx(1.0)


def test_missing_gt_areas_fall_back_to_mask_areas():
    ann = gt_object(1, 1, [rect(0, 0, 130, 130, (260, 260))] * 2)
    del ann["areas"], ann["iscrowd"]
    gt = dataset([ann], size=(260, 260))
    m = evaluate_results(gt, [det(1, [rect(0, 0, 130, 130, (260, 260))] * 2, 0.9)])
    assert m["APm"] == pytest.approx(1.0) and m["APs"] == -1.0


def _error(gt, res) -> str:
    with pytest.raises(EvaluationError) as info:
        evaluate_results(gt, res)
    return str(info.value)


def test_result_errors_name_the_entry_and_the_field():
    gt = dataset([gt_object(1, 1, A)])
    good = det(1, A, 0.9)
    msg = _error(gt, [good, dict(good, segmentations=[None] * 3)])
    assert all(s in msg for s in ("result 1", "video_id=1", "'segmentations'", "3", "expected 2"))
    msg = _error(gt, [dict(good, video_id=99)])
    assert "result 0" in msg and "'video_id' 99" in msg
    msg = _error(gt, [{k: v for k, v in good.items() if k != "score"}])
    assert "result 0" in msg and "'score'" in msg
    assert "'score'" in _error(gt, [dict(good, score=float("nan"))])
    small = rle(rect(0, 0, 2, 2, size=(6, 6)))
    msg = _error(gt, [dict(good, segmentations=[small, None])])
    assert "result 0" in msg and "segmentations[0]" in msg and "[6, 6]" in msg
    assert "expected a list" in _error(gt, {"video_id": 1})
    broken = dict(rle(A[1]), counts="PPPPPPPP")  # no first run: every group says "more"
    msg = _error(gt, [good, dict(good, segmentations=[rle(A[0]), broken])])
    assert "result 1" in msg and "segmentations[1]" in msg and "'counts'" in msg


def test_results_of_unknown_categories_are_ignored_with_one_warning():
    # As the official evaluator (its getAnnIds filters the results by the GT's category ids):
    # same numbers as without them, one warning naming the ids and the count.
    gt, res = _golden_case(1)
    stray = [dict(r, category_id=c) for r, c in zip(res[:3], (7, 9, 7), strict=True)]
    mixed = [*res[:2], stray[0], *res[2:], *stray[1:]]
    with pytest.warns(UserWarning) as caught:
        got = evaluate_results(gt, mixed)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "7, 9" in message and "ignored 3 result(s)" in message
    assert got == evaluate_results(gt, res)
    # a result for an unknown video stays an error, also with an unknown category
    msg = _error(gt, [*res, dict(res[0], video_id=99, category_id=7)])
    assert f"result {len(res)}" in msg and "'video_id' 99" in msg


def test_ground_truth_errors_name_the_annotation():
    msg = _error(dataset([gt_object(5, 1, A, occlusion=["heavy", None])]), [])
    assert "annotation id=5" in msg and "'occlusion'" in msg and "'heavy'" in msg
    ann = gt_object(5, 1, [A[0]])
    assert "annotation id=5" in _error(dataset([ann]), [])  # 1 frame for a 2-frame video
    msg = _error(dataset([gt_object(5, 3, A)]), [])
    assert "annotation id=5" in msg and "'video_id'" in msg
    msg = _error(dataset([gt_object(5, 1, A), gt_object(5, 1, B)]), [])
    assert "duplicate" in msg
    msg = _error(dataset([gt_object(5, 1, A, category_id=9)]), [])
    assert "'category_id' 9" in msg


# Golden numbers from the official evaluator (oviseval.py / ytvoseval.py, qjy981010/cocoapi at
# commit 886baff and youtubevos/cocoapi), run outside this repository on the cases built by
# `_golden_case` below (np.float patched for current numpy). Not vendored: only the numbers.
GOLDEN = {
    0: {
        "AP": 0.5666666666666667,
        "AP50": 0.6666666666666665,
        "AP75": 0.4999999999999999,
        "APs": 0.475,
        "APm": -1.0,
        "APl": 0.9999999999999998,
        "AR1": 0.6333333333333333,
        "AR10": 0.6666666666666666,
        "AR100": 0.6666666666666666,
        "ARs": 0.5,
        "ARm": -1.0,
        "ARl": 1.0,
        "AP_SO": -1.0,
        "AP_MO": -1.0,
        "AP_HO": 0.5666666666666667,
        "AR_SO": -1.0,
        "AR_MO": -1.0,
        "AR_HO": 0.6666666666666666,
    },
    1: {
        "AP": 0.24681950337890934,
        "AP50": 0.2604235423542355,
        "AP75": 0.24912776991984917,
        "APs": 0.24681950337890934,
        "APm": -1.0,
        "APl": -1.0,
        "AR1": 0.16666666666666666,
        "AR10": 0.475,
        "AR100": 0.475,
        "ARs": 0.475,
        "ARm": -1.0,
        "ARl": -1.0,
        "AP_SO": 0.2997299729972997,
        "AP_MO": 0.23348334833483345,
        "AP_HO": 0.2640578343548641,
        "AR_SO": 0.5,
        "AR_MO": 0.5,
        "AR_HO": 0.6166666666666667,
    },
    3: {
        "AP": 0.2849284928492849,
        "AP50": 0.43564356435643553,
        "AP75": 0.37843784378437834,
        "APs": 0.2849284928492849,
        "APm": -1.0,
        "APl": -1.0,
        "AR1": 0.3,
        "AR10": 0.375,
        "AR100": 0.375,
        "ARs": 0.375,
        "ARm": -1.0,
        "ARl": -1.0,
    },
    8: {
        "AP": 0.4978822882288228,
        "AP50": 0.5117711771177118,
        "AP75": 0.4839933993399339,
        "APs": 0.5841584158415841,
        "APm": 0.4608085808580858,
        "APl": -1.0,
        "AR1": 0.4166666666666667,
        "AR10": 0.8333333333333334,
        "AR100": 0.8333333333333334,
        "ARs": 0.75,
        "ARm": 0.75,
        "ARl": -1.0,
        "AP_SO": 0.14583333333333331,
        "AP_MO": 0.43055555555555547,
        "AP_HO": 0.4000000000000001,
        "AR_SO": 0.5,
        "AR_MO": 0.6666666666666666,
        "AR_HO": 1.0,
    },
}


def _golden_case(seed: int) -> tuple[dict, list]:
    """Seeded case: crowds, null and empty frames, tied scores, off-category detections."""
    rng = np.random.default_rng(seed)
    levels = ["no_occlusion", "slight_occlusion", "severe_occlusion", None]
    size = (24, 32) if seed % 2 else (320, 400)
    videos, anns, res = [], [], []
    for v in range(1, 4):
        length = int(rng.integers(1, 6))
        videos.append({"id": v, "height": size[0], "width": size[1], "length": length})
        tracks = []
        for _ in range(int(rng.integers(1, 5))):
            w, h = (int(rng.integers(1, s + 1)) for s in size[::-1])
            x, y = int(rng.integers(0, size[1])), int(rng.integers(0, size[0]))
            masks = [
                None if rng.random() < 0.25 else rect(x + t, y, w, h, size) for t in range(length)
            ]
            cat = int(rng.integers(1, 4))
            occ = [None if m is None else levels[int(rng.integers(0, 3))] for m in masks]
            occ[0] = occ[0] or "slight_occlusion"
            anns.append(gt_object(len(anns) + 1, v, masks, cat, int(rng.random() < 0.15), occ))
            tracks.append((cat, masks))
        for _ in range(int(rng.integers(2, 12))):
            cat, masks = tracks[int(rng.integers(0, len(tracks)))]
            shift = int(rng.integers(0, 3))
            out = [None if m is None or rng.random() < 0.1 else np.roll(m, shift, 1) for m in masks]
            if rng.random() < 0.25:
                cat = int(rng.integers(1, 4))
            res.append(det(v, out, round(float(rng.random()), 1), cat))
    if seed % 4 == 3:  # a YouTube-VIS case: no occlusion labels, checked against ytvoseval.py
        for ann in anns:
            del ann["occlusion"]
    gt = {"videos": videos, "annotations": anns, "categories": [{"id": c} for c in (1, 2, 3)]}
    return gt, res


def test_prepend_background_moves_masks_into_their_slab():
    rng = np.random.default_rng(0)
    masks = [rng.random((H, W)) < 0.4, np.zeros((H, W), bool), np.ones((H, W), bool)]
    masks.append(rect(W - 1, H - 1, 1, 1))  # ends with a foreground run
    frames = np.array([0, 3, 1, 20000])
    grown = prepend_background([rle(m)["counts"] for m in masks], frames * H * W)
    for mask, t, counts in zip(masks, frames, grown, strict=True):
        strip = mask_utils.decode({"size": [H, W * (t + 1)], "counts": counts})
        assert not strip[:, : W * t].any() and (strip[:, W * t :] == mask).all()
    assert prepend_background([], np.zeros(0)) == []
    with pytest.raises(InvalidRLEError) as info:
        prepend_background([rle(A[0])["counts"], "PPPPPPPP", "X"], np.zeros(3, np.int64))
    assert info.value.index == 1


@pytest.mark.parametrize("seed", [1, 8])
def test_strips_that_wrap_and_split_iou_calls_give_the_same_numbers(seed, monkeypatch):
    # Strips of 2 frames (pycocotools' 32-bit pixel counts, scaled down) and iou calls of at
    # most 3 mask pairs exercise the paths that long, large videos take.
    gt, res = _golden_case(seed)
    expected = evaluate_results(gt, res)
    height, width = gt["videos"][0]["height"], gt["videos"][0]["width"]
    monkeypatch.setattr(vis_eval, "_MAX_CANVAS_PIXELS", 2 * height * width + 1)
    monkeypatch.setattr(vis_eval, "_MAX_PAIRS", 3)
    assert evaluate_results(gt, res) == expected


def test_garbage_collector_state_is_restored():
    gt = dataset([gt_object(1, 1, A)])
    assert gc.isenabled()
    evaluate_results(gt, [det(1, A, 0.9)])
    assert gc.isenabled()
    with pytest.raises(EvaluationError):
        evaluate_results(gt, [det(1, A, float("nan"))])
    assert gc.isenabled()
    gc.disable()
    try:
        evaluate_results(gt, [det(1, A, 0.9)])
        assert not gc.isenabled()
    finally:
        gc.enable()


@pytest.mark.parametrize("seed", sorted(GOLDEN))
def test_matches_official_golden_numbers(seed):
    gt, res = _golden_case(seed)
    m = evaluate_results(gt, res)
    assert m.keys() == GOLDEN[seed].keys()
    for key, value in GOLDEN[seed].items():
        assert m[key] == pytest.approx(value, abs=1e-9), key


def _write_case(tmp_path: Path) -> tuple[Path, Path]:
    gt = dataset([gt_object(1, 1, A, occlusion=["no_occlusion"] * 2), gt_object(2, 1, B)])
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps([det(1, A, 0.9)]))
    return tmp_path / "gt.json", tmp_path / "res.json"


def test_cli_prints_percent_and_writes_json(tmp_path: Path, capsys):
    gt, res = _write_case(tmp_path)
    assert main([str(gt), str(res), "--json", str(tmp_path / "out" / "m.json")]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split()[1] for line in out.splitlines()[2:]}
    assert lines["AP"] == "50.50" and lines["AR100"] == "50.00" and lines["APm"] == "n/a"
    saved = json.loads((tmp_path / "out" / "m.json").read_text())
    assert saved == pytest.approx(evaluate_results(gt, res))
    assert saved["AP"] == pytest.approx(51 / 101)


def test_cli_module_entry_point_and_error_exit(tmp_path: Path):
    gt, res = _write_case(tmp_path)
    run = subprocess.run(
        [sys.executable, "-m", "ovisnet.evaluation", str(gt), str(res)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "AP_SO" in run.stdout and "value (%)" in run.stdout
    (tmp_path / "bad.json").write_text(json.dumps([{"video_id": 1}]))
    assert main([str(gt), str(tmp_path / "bad.json")]) == 2


def test_cli_reports_ignored_categories_as_one_warning_line(tmp_path: Path, capsys):
    gt, _ = _write_case(tmp_path)
    stray = [det(1, A, 0.9), det(1, A, 0.8, category_id=42)]
    (tmp_path / "stray.json").write_text(json.dumps(stray))
    assert main([str(gt), str(tmp_path / "stray.json")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("warning: ") and "42" in err[0]
