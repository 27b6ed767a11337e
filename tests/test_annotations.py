"""Parsing and validation of OVIS / YouTube-VIS annotation files."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from ovisnet.data.annotations import AnnotationError, check_frame_files, load_annotations


def test_loads_all_segmentation_forms(tiny_ovis):
    root, _ = tiny_ovis
    ann = load_annotations(root / "annotations" / "train.json")
    assert ann.image_root == (root / "JPEGImages").resolve()
    assert [v.id for v in ann.videos] == [1, 2]
    assert ann.has_annotations and ann.has_occlusion and ann.num_classes == 2
    v1 = ann.video(1)
    assert [t.id for t in v1.tracks] == [10, 11]
    t11 = v1.tracks[1]
    assert t11.present_frames() == [0, 1, 3, 4]
    assert t11.mask(2) is None and t11.rle(2) is None
    m = t11.mask(0)  # uncompressed RLE decodes to the drawn rectangle
    assert m.shape == (32, 48) and m.sum() == 120 and m[10:22, 20:30].all()
    m2 = ann.video(2).tracks[0].mask(0)  # compressed RLE (string counts)
    assert m2.sum() == 25 and m2[3:8, 3:8].all()
    assert ann.label(2) == 1 and ann.category_id(0) == 1


def test_polygons_and_missing_boxes_are_derived(tiny_ovis):
    _, data = tiny_ovis
    data = copy.deepcopy(data)
    poly = [[4.0, 4.0, 14.0, 4.0, 14.0, 12.0, 4.0, 12.0]]
    ann0 = data["annotations"][2]
    ann0["segmentations"] = [poly]
    del ann0["bboxes"], ann0["areas"]
    ann = load_annotations(data)
    track = ann.video(2).tracks[0]
    assert track.bboxes[0] == pytest.approx([4.0, 4.0, 10.0, 8.0], abs=1.0)
    assert track.areas[0] == pytest.approx(track.mask(0).sum())
    assert track.occlusion is None


def test_inference_split_with_null_annotations(tiny_ovis):
    _, data = tiny_ovis
    data = dict(data, annotations=None)
    ann = load_annotations(data)
    assert not ann.has_annotations and all(v.tracks == [] for v in ann.videos)


def _broken(data, mutate):
    data = copy.deepcopy(data)
    mutate(data)
    return data


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda d: d["annotations"][0]["segmentations"].pop(),
            r"annotation 10 .*'segmentations' has 4 entries, video length is 5",
        ),
        (
            lambda d: d["annotations"][1]["bboxes"].append(None),
            r"annotation 11 .*'bboxes' has 6 entries",
        ),
        (
            lambda d: d["annotations"][0]["segmentations"][1].update(size=[16, 48]),
            r"annotation 10 .*'segmentations'\[1\].*RLE size \[16, 48\] != video size \[32, 48\]",
        ),
        (
            lambda d: d["annotations"][0]["segmentations"][1]["counts"].append(3),
            r"annotation 10 .*'segmentations'\[1\].*sum to 1539",
        ),
        (
            lambda d: d["annotations"][0].update(category_id=7),
            r"annotation 10 .*'category_id' is unknown category id 7",
        ),
        (
            lambda d: d["annotations"][0].update(video_id=99),
            r"annotation 10: field 'video_id' names unknown video 99",
        ),
        (
            lambda d: d["annotations"][1]["occlusion"].__setitem__(0, "partial"),
            r"annotation 11 .*'occlusion'\[0\].*unknown level 'partial'",
        ),
        (lambda d: d["videos"][1].update(file_names=[]), r"video 2: .*empty video"),
        (
            lambda d: d["videos"][0].update(length=7),
            r"video 1: field 'length' is 7 but 'file_names' has 5",
        ),
        (
            lambda d: d["annotations"][0].pop("segmentations"),
            r"annotation 10 .*missing field 'segmentations'",
        ),
        (
            lambda d: d["annotations"].append(copy.deepcopy(d["annotations"][0])),
            r"annotation 10: duplicate annotation id",
        ),
        (lambda d: d.update(categories=[]), r"'categories' must be a non-empty list"),
    ],
)
def test_malformed_files_name_the_id_and_field(tiny_ovis, mutate, expected):
    _, data = tiny_ovis
    with pytest.raises(AnnotationError, match=expected):
        load_annotations(_broken(data, mutate))


def test_error_from_a_file_names_the_file(tiny_ovis, tmp_path):
    _, data = tiny_ovis
    bad = _broken(data, lambda d: d["annotations"][0].update(category_id=9))
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(AnnotationError, match=r"bad\.json: annotation 10"):
        load_annotations(path)
    path.write_text("{not json")
    with pytest.raises(AnnotationError, match="not valid JSON"):
        load_annotations(path)
    with pytest.raises(FileNotFoundError, match="annotation file not found"):
        load_annotations(tmp_path / "absent.json")


def test_missing_frame_file_is_named(tiny_ovis):
    root, _ = tiny_ovis
    (root / "JPEGImages" / "v1" / "00003.jpg").unlink()
    ann = load_annotations(root / "annotations" / "train.json")
    with pytest.raises(FileNotFoundError, match=r"video 1: frame 3 file missing"):
        check_frame_files(ann)
    with pytest.raises(FileNotFoundError, match=r"video 1: frame 3"):
        load_annotations(root / "annotations" / "train.json", check_files=True)


def test_masks_are_exact_rectangles(tiny_ovis):
    root, _ = tiny_ovis
    ann = load_annotations(root / "annotations" / "train.json")
    t10 = ann.video(1).tracks[0]
    for t in range(5):
        expected = np.zeros((32, 48), bool)
        expected[4:10, 2 + 2 * t : 10 + 2 * t] = True
        np.testing.assert_array_equal(t10.mask(t), expected)
