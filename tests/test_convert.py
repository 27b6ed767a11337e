"""CocoVID <-> YouTube-VIS conversion and the `data=custom` config that reads any such set."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf.errors import InterpolationResolutionError
from pycocotools import mask as mask_utils

from conftest import make_tiny_ovis
from ovisnet.data.annotations import AnnotationError, count_categories, load_annotations
from ovisnet.data.convert import cocovid_to_ytvis, main, ytvis_to_cocovid
from ovisnet.train import CONFIG_DIR

H, W = 20, 30
SQUARE = [[2.0, 2.0, 8.0, 2.0, 8.0, 8.0, 2.0, 8.0]]  # polygon of the 6x6 square at (2, 2)


def _rle_box(x: int, y: int, w: int, h: int) -> dict:
    m = np.zeros((H, W), np.uint8)
    m[y : y + h, x : x + w] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    return {"size": [H, W], "counts": rle["counts"].decode()}


def _cocovid() -> dict:
    """2 videos (3 and 1 frames, images listed out of order); instance 7 is absent in frame 1,
    instance 8 is a polygon track, instance 9 a crowd RLE in video 2."""
    images = [
        {"id": 12, "video_id": 1, "frame_id": 2, "file_name": "a/2.jpg", "width": W, "height": H},
        {"id": 10, "video_id": 1, "frame_id": 0, "file_name": "a/0.jpg", "width": W, "height": H},
        {"id": 11, "video_id": 1, "frame_id": 1, "file_name": "a/1.jpg", "width": W, "height": H},
        {"id": 20, "video_id": 2, "frame_id": 0, "file_name": "b/0.jpg", "width": W, "height": H},
    ]

    def ann(ann_id, image_id, instance, cat, seg, crowd=0, **extra):
        return {
            "id": ann_id,
            "image_id": image_id,
            "video_id": 1 if image_id < 20 else 2,
            "category_id": cat,
            "instance_id": instance,
            "segmentation": seg,
            "iscrowd": crowd,
            **extra,
        }

    annotations = [
        ann(
            1, 10, 7, 1, _rle_box(1, 1, 4, 4), bbox=[1, 1, 4, 4], area=16, occlusion="no_occlusion"
        ),
        ann(2, 12, 7, 1, _rle_box(3, 1, 4, 4), occlusion="severe_occlusion"),
        ann(3, 10, 8, 2, SQUARE, bbox=[2, 2, 6, 6], area=36),
        ann(4, 11, 8, 2, SQUARE, bbox=[2, 2, 6, 6], area=36),
        ann(5, 12, 8, 2, SQUARE, bbox=[2, 2, 6, 6], area=36),
        ann(6, 20, 9, 3, _rle_box(0, 0, 10, 10), crowd=1, bbox=[0, 0, 10, 10], area=100),
    ]
    return {
        "info": {"description": "hand-made"},
        "videos": [{"id": 1, "name": "a"}, {"id": 2, "name": "b", "width": W, "height": H}],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": f"c{i}"} for i in (1, 2, 3)],
    }


def test_cocovid_to_ytvis():
    out = cocovid_to_ytvis(_cocovid())
    assert out["info"] == {"description": "hand-made"}
    v1, v2 = out["videos"]
    assert v1 == {
        "id": 1,
        "width": W,
        "height": H,
        "length": 3,
        "file_names": ["a/0.jpg", "a/1.jpg", "a/2.jpg"],
    }
    assert v2["length"] == 1 and v2["file_names"] == ["b/0.jpg"]
    tracks = {a["id"]: a for a in out["annotations"]}
    assert set(tracks) == {7, 8, 9}  # instance ids are unique, so they are the track ids
    t7 = tracks[7]
    assert t7["video_id"] == 1 and t7["category_id"] == 1 and t7["iscrowd"] == 0
    assert t7["segmentations"][1] is None and t7["bboxes"][1] is None and t7["areas"][1] is None
    assert t7["bboxes"][2] == [3.0, 1.0, 4.0, 4.0] and t7["areas"][2] == 16.0  # from the mask
    assert t7["occlusion"] == ["no_occlusion", None, "severe_occlusion"]
    assert tracks[8]["segmentations"] == [SQUARE] * 3 and "occlusion" not in tracks[8]
    assert tracks[9]["iscrowd"] == 1 and tracks[9]["video_id"] == 2

    parsed = load_annotations(out)
    assert parsed.num_classes == 3 and parsed.has_occlusion
    track = parsed.video(1).tracks[0]
    assert track.present_frames() == [0, 2]
    assert track.mask(2).sum() == 16


def test_ytvis_to_cocovid(tiny_ovis):
    _, data = tiny_ovis
    out = ytvis_to_cocovid(data)
    assert [v["name"] for v in out["videos"]] == ["v1", "v2"]
    assert [(im["id"], im["video_id"], im["frame_id"]) for im in out["images"]] == [
        (1, 1, 0),
        (2, 1, 1),
        (3, 1, 2),
        (4, 1, 3),
        (5, 1, 4),
        (6, 2, 0),
    ]
    # 5 frames of track 10, 4 of track 11 (absent in frame 2), 1 of track 20
    assert len(out["annotations"]) == 10
    by_instance = {}
    for a in out["annotations"]:
        by_instance.setdefault(a["instance_id"], []).append(a)
    assert sorted(by_instance) == [10, 11, 20]
    assert [a["image_id"] for a in by_instance[11]] == [1, 2, 4, 5]
    assert all(a["occlusion"] == "no_occlusion" for a in by_instance[11])
    rle = by_instance[20][0]
    assert rle["segmentation"]["counts"] == data["annotations"][2]["segmentations"][0]["counts"]
    assert rle["video_id"] == 2 and rle["image_id"] == 6 and rle["bbox"] == [3, 3, 5, 5]


def _by_id(data: dict) -> dict:
    return {a["id"]: a for a in data["annotations"]}


def test_round_trip(tiny_ovis):
    _, data = tiny_ovis
    back = ytvis_to_cocovid(copy.deepcopy(data))
    back = cocovid_to_ytvis(json.loads(json.dumps(back)))
    assert back["videos"] == data["videos"]
    assert back["categories"] == data["categories"]
    assert _by_id(back) == _by_id(data)
    # and the other way: CocoVID -> YouTube-VIS -> CocoVID -> YouTube-VIS is stable
    once = cocovid_to_ytvis(_cocovid())
    assert cocovid_to_ytvis(ytvis_to_cocovid(once)) == once


def test_shared_instance_ids_are_renumbered():
    data = _cocovid()
    data["annotations"][-1]["instance_id"] = 7  # instance 7 of video 2 is another track
    out = cocovid_to_ytvis(data)
    assert [(a["id"], a["video_id"]) for a in out["annotations"]] == [(1, 1), (2, 1), (3, 2)]


def test_cli_writes_parseable_files(tmp_path):
    src = tmp_path / "cocovid.json"
    src.write_text(json.dumps(_cocovid()))
    ytvis = tmp_path / "out" / "ytvis.json"
    assert main(["--to", "ytvis", str(src), str(ytvis)]) == 0
    ann = load_annotations(ytvis)
    assert len(ann.videos) == 2 and sum(len(v.tracks) for v in ann.videos) == 3
    again = tmp_path / "cocovid_again.json"
    assert main(["--to", "cocovid", str(ytvis), str(again)]) == 0
    assert len(json.loads(again.read_text())["annotations"]) == 6


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("images"), r"'images'.*YouTube-VIS already"),
        (lambda d: d["images"][0].pop("frame_id"), r"image 12: missing field 'frame_id'"),
        (lambda d: d["images"][0].update(video_id=5), r"image 12: .*unknown video 5"),
        (lambda d: d["annotations"][0].pop("instance_id"), r"annotation 1: missing.*instance_id"),
        (lambda d: d["annotations"][0].update(image_id=99), r"annotation 1: .*unknown image 99"),
        (
            lambda d: d["annotations"][3].update(image_id=10),
            r"annotation 4 \(video 1, instance 8, frame 0\): .*annotated twice",
        ),
        (lambda d: d["annotations"][4].update(category_id=1), r"annotation 5 .*category_id 1"),
        (lambda d: d["images"][1].update(frame_id=2), r"video 1: images .* share frame_id 2"),
    ],
)
def test_cocovid_errors(edit, message):
    data = _cocovid()
    edit(data)
    with pytest.raises(AnnotationError, match=message):
        cocovid_to_ytvis(data)


def test_errors_name_the_file(tmp_path, tiny_ovis):
    root, _ = tiny_ovis
    src = tmp_path / "cocovid.json"
    src.write_text(json.dumps(_cocovid()))
    with pytest.raises(AnnotationError, match=r"cocovid\.json: .*CocoVID already"):
        main(["--to", "cocovid", str(src), str(tmp_path / "o.json")])
    with pytest.raises(AnnotationError, match=r"train\.json: .*'images'"):
        main(["--to", "ytvis", str(root / "annotations" / "train.json"), str(tmp_path / "o.json")])
    with pytest.raises(FileNotFoundError, match=r"missing\.json"):
        main(["--to", "ytvis", str(tmp_path / "missing.json"), str(tmp_path / "o.json")])


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=overrides)


def _three_category_set(root: Path) -> None:
    """The conftest tiny set in a YouTube-VIS layout, with a third (unused) category."""
    data = make_tiny_ovis(root)
    data["categories"].append({"id": 3, "name": "triangle"})
    (root / "annotations" / "train.json").write_text(json.dumps(data))
    (root / "annotations" / "valid.json").write_text(json.dumps(data))


def test_custom_data_config_reads_num_classes(tmp_path):
    root = tmp_path / "mine"
    _three_category_set(root)
    cfg = _compose(
        [
            "experiment=masktrack",
            "data=custom",
            f"data.root={root}",
            "trainer=cpu",
            f"paths.output_dir={tmp_path}",
        ]
    )
    assert cfg.data.num_classes == cfg.model.num_classes == 3
    assert cfg.data.train_ann == "annotations/train.json" and cfg.data.test_ann is None
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup("fit")  # both splits parse, and their frames are under root/JPEGImages
    assert datamodule.load_split("val").num_classes == 3
    absolute = _compose(
        [
            "data=custom",
            "data.root=/nonexistent",
            f"data.train_ann={root / 'annotations' / 'train.json'}",
            f"paths.output_dir={tmp_path}",
        ]
    )
    assert absolute.model.num_classes == 3
    assert count_categories(root / "annotations" / "valid.json") == 3


def test_custom_data_config_missing_file(tmp_path):
    cfg = _compose(["data=custom", f"data.root={tmp_path}", f"paths.output_dir={tmp_path}"])
    with pytest.raises(InterpolationResolutionError, match=r"not found: .*annotations/train\.json"):
        _ = cfg.data.num_classes
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "train.json").write_text(json.dumps({"videos": []}))
    with pytest.raises(InterpolationResolutionError, match=r"train\.json: field 'categories'"):
        _ = cfg.model.num_classes
