"""Tests of the synthetic occluded-VIS generator (ovisnet.data.synthetic)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from ovisnet.data.annotations import load_annotations
from ovisnet.data.synthetic import (
    CATEGORIES,
    Scene,
    SceneObject,
    generate,
    main,
    mask_bbox,
    occlusion_level,
    render_frame,
    rle_uncompressed,
    video_scene,
)

TINY = {"num_videos": 4, "num_frames": 8, "size": (96, 64)}


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The result of :func:`generate` for a tiny set (4 videos x 8 frames x 96x64)."""
    return generate(tmp_path_factory.mktemp("tiny_syn"), seed=0, **TINY)


def test_rle_uncompressed_hand_cases() -> None:
    mask = np.array([[0, 1, 1], [0, 0, 1]], dtype=bool)  # column-major: 0 0 | 1 0 | 1 1
    assert rle_uncompressed(mask) == {"size": [2, 3], "counts": [2, 1, 1, 2]}
    starts_set = np.array([[1, 0], [1, 0]], dtype=bool)
    assert rle_uncompressed(starts_set) == {"size": [2, 2], "counts": [0, 2, 2]}
    assert rle_uncompressed(np.zeros((3, 4), bool))["counts"] == [12]


def test_rle_uncompressed_matches_pycocotools() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        mask = rng.random((17, 23)) < 0.4
        rle = rle_uncompressed(mask)
        decoded = mask_utils.decode(mask_utils.frPyObjects(rle, 17, 23)).astype(bool)
        np.testing.assert_array_equal(decoded, mask)


def test_mask_bbox() -> None:
    mask = np.zeros((10, 12), dtype=bool)
    mask[2:5, 3:9] = True
    mask[7, 4] = True
    assert mask_bbox(mask) == [3, 2, 6, 6]
    assert mask_bbox(np.zeros((4, 4), bool)) is None


def test_occlusion_level_thresholds() -> None:
    assert occlusion_level(10, 10) == "no_occlusion"
    assert occlusion_level(6, 10) == "slight_occlusion"
    assert occlusion_level(5, 10) == "severe_occlusion"  # exactly half is not "more than half"
    assert occlusion_level(1, 10) == "severe_occlusion"
    assert occlusion_level(0, 10) is None
    assert occlusion_level(0, 0) is None
    with pytest.raises(ValueError, match="exceeds"):
        occlusion_level(11, 10)


def test_categories_differ_in_shape_colour_and_texture() -> None:
    assert len(CATEGORIES) >= 5
    assert [c.id for c in CATEGORIES] == list(range(1, len(CATEGORIES) + 1))
    for attribute in ("name", "colour", "texture"):
        assert len({getattr(c, attribute) for c in CATEGORIES}) == len(CATEGORIES)


def _square(cx: float, cy: float, r: float = 13.0, category: int = 1) -> SceneObject:
    """A static, unrotated object; a square of radius 13 covers 20x20 pixels centred at (cx, cy)."""
    return SceneObject(
        category=category,
        colour=np.array(CATEGORIES[category].colour, dtype=np.float64),
        cx=np.array([cx]),
        cy=np.array([cy]),
        angle=np.array([0.0]),
        radius=np.array([r]),
    )


def test_render_frame_visible_masks_on_a_constructed_scene() -> None:
    w, h = 96, 64
    occluder = np.zeros((h, w), dtype=bool)
    occluder[:, 60:70] = True
    occluder_rgb = np.full((h, w, 3), 7.0, dtype=np.float32)
    objects = [
        _square(20, 20),  # A: x 10..29, y 10..29; B covers its 6 right columns -> 70% visible
        _square(20, 46),  # C: x 10..29, y 36..55; D covers 12 columns -> 40% visible
        _square(65, 40, r=4.0, category=0),  # E: small disc entirely behind the pillar
        _square(92, 10),  # F: x 82..101, 14 columns in frame, nothing in front of it
        _square(34, 20),  # B: x 24..43, in front of A
        _square(28, 46),  # D: x 18..37, in front of C
    ]
    background = np.full((h, w, 3), 100.0, dtype=np.float32)
    scene = Scene(background, occluder, occluder_rgb, objects, light=np.array([1.0, 0.0]))
    frame = render_frame(scene, 0)

    visible = frame.masks.reshape(len(objects), -1).sum(axis=1)
    assert frame.amodal_areas[[0, 1, 3, 4, 5]].tolist() == [400, 400, 280, 400, 400]
    assert frame.amodal_areas[2] > 0
    assert visible.tolist() == [280, 160, 0, 280, 400, 400]
    levels = [occlusion_level(int(v), int(a)) for v, a in zip(visible, frame.amodal_areas)]
    assert levels == [
        "slight_occlusion",
        "severe_occlusion",
        None,  # fully hidden by the pillar although in frame
        "no_occlusion",  # cut by the border only: truncation is not occlusion
        "no_occlusion",
        "no_occlusion",
    ]
    assert frame.masks.sum(axis=0).max() == 1  # visible masks are disjoint
    assert not frame.masks[:, occluder].any()  # the pillar hides what is behind it
    np.testing.assert_array_equal(frame.image[occluder], 7)
    assert mask_bbox(frame.masks[0]) == [10, 10, 14, 20]
    assert (frame.image[~frame.masks.any(axis=0) & ~occluder] == 100).all()


def test_tiny_set_loads_and_annotations_match_masks(tiny_set: dict) -> None:
    assert tiny_set["num_videos"] == {"train": 3, "valid": 1}
    assert tiny_set["num_images"] == 32
    ids: set[int] = set()
    for split in ("train", "valid"):
        ann = load_annotations(tiny_set[split], check_files=True)
        assert ann.has_occlusion
        assert [c.name for c in ann.categories] == [c.name for c in CATEGORIES]
        assert len(ann.videos) == tiny_set["num_videos"][split]
        masks = 0
        for video in ann.videos:
            assert (video.width, video.height, video.length) == (96, 64, 8)
            with Image.open(ann.frame_path(video, 0)) as image:
                assert image.size == (96, 64)
            for t in range(video.length):
                frame_masks = []
                for track in video.tracks:
                    mask = track.mask(t)
                    assert (
                        (mask is None) == (track.occlusion[t] is None) == (track.bboxes[t] is None)
                    )
                    if mask is None:
                        continue
                    masks += 1
                    frame_masks.append(mask)
                    assert mask.any()
                    assert track.areas[t] == mask.sum()
                    assert track.bboxes[t] == mask_bbox(mask)
                if frame_masks:
                    assert np.sum(frame_masks, axis=0).max() == 1
            for track in video.tracks:
                assert track.id not in ids
                ids.add(track.id)
                assert track.present_frames()
        assert len(ids) > 0
        assert masks == tiny_set["num_masks"][split]


def test_tiny_set_images_show_the_annotated_scene(tiny_set: dict) -> None:
    ann = load_annotations(tiny_set["train"])
    video = ann.videos[0]
    scene = video_scene(0, video.id, TINY["num_frames"], TINY["size"])
    frames = [render_frame(scene, t) for t in range(video.length)]
    for t in (0, 6):
        with Image.open(ann.frame_path(video, t)) as image:
            jpeg = np.asarray(image.convert("RGB"), dtype=np.float64)
        objects = frames[t].masks.any(axis=0) | frames[t + 1].masks.any(axis=0)
        own = np.abs(jpeg - frames[t].image)[objects].mean()  # noise + JPEG only
        assert own < 25.0
        assert np.abs(jpeg - frames[t + 1].image)[objects].mean() > 2.0 * own
        present = [m for m in frames[t].masks if m.any()]
        annotated = [tr.mask(t) for tr in video.tracks if tr.mask(t) is not None]
        assert len(present) == len(annotated)
        for rendered, stored in zip(present, annotated, strict=True):
            np.testing.assert_array_equal(rendered, stored)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_generation_is_deterministic(tmp_path: Path, tiny_set: dict) -> None:
    again = generate(tmp_path / "again", seed=0, **TINY)
    first = _tree_bytes(Path(tiny_set["root"]))
    second = _tree_bytes(Path(again["root"]))
    assert first.keys() == second.keys()
    assert first == second
    other = _tree_bytes(Path(generate(tmp_path / "other", seed=1, **TINY)["root"]))
    assert other["annotations/train.json"] != first["annotations/train.json"]
    frames = [k for k in first if k.endswith(".jpg")]
    assert all(other[k] != first[k] for k in frames)


def test_default_config_has_reappearance_after_full_occlusion(tmp_path: Path) -> None:
    """Search a set made with the default scene config for a track hidden mid-track in frame."""
    num_frames, size = 24, (320, 192)
    result = generate(tmp_path, seed=0, num_videos=8, num_frames=num_frames, size=size)
    found = 0
    for split in ("train", "valid"):
        for video in load_annotations(result[split]).videos:
            scene = video_scene(0, video.id, num_frames, size)
            frames = [render_frame(scene, t) for t in range(num_frames)]
            for track in video.tracks:
                present = track.present_frames()
                first = present[0]
                index = next(
                    i
                    for i, m in enumerate(frames[first].masks)
                    if np.array_equal(m, track.mask(first))
                )
                hidden = [
                    t
                    for t in range(present[0], present[-1])
                    if track.segmentations[t] is None and frames[t].amodal_areas[index] > 0
                ]
                found += bool(hidden)
    assert found >= 1


def test_generate_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="num_videos"):
        generate(tmp_path, num_videos=1)
    with pytest.raises(ValueError, match="num_frames"):
        generate(tmp_path, num_frames=0)
    with pytest.raises(ValueError, match="size"):
        generate(tmp_path, size=(16, 64))
    with pytest.raises(ValueError, match="valid_fraction"):
        generate(tmp_path, valid_fraction=1.0)
    with pytest.raises(ValueError, match="seed"):
        generate(tmp_path, seed=-1)


def test_cli_writes_the_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    main(["--out", str(out), "--videos", "3", "--frames", "2", "--size", "64x48", "--quiet"])
    train = json.loads((out / "annotations" / "train.json").read_text())
    valid = json.loads((out / "annotations" / "valid.json").read_text())
    assert [v["id"] for v in train["videos"]] == [1, 2]
    assert [v["id"] for v in valid["videos"]] == [3]
    assert train["videos"][0]["file_names"] == ["video_0001/00000.jpg", "video_0001/00001.jpg"]
    assert (out / "JPEGImages" / "video_0003" / "00001.jpg").is_file()
    assert "train: 2 videos" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--size", "320"], "WxH"),
        (["--size", "16x16"], "at least 32x32"),
        (["--videos", "0"], "must be >= 2"),
        (["--frames", "x"], "expected an integer"),
        (["--valid-fraction", "1.5"], "must be in (0, 1)"),
    ],
)
def test_cli_rejects_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(tmp_path), *args])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_default_set_meets_the_occlusion_targets(tmp_path: Path) -> None:
    """The default set: mBOR >= 0.2, >= 4 objects per frame, all three occlusion levels."""
    from ovisnet.stats import compute_stats

    result = generate(tmp_path)
    assert result["num_videos"] == {"train": 48, "valid": 12}
    for split in ("train", "valid"):
        stats = compute_stats(load_annotations(result[split]))
        assert stats["mbor"] >= 0.2
        assert stats["objects_per_frame"]["mean"] >= 4.0
        assert all(p > 0.05 for p in stats["occlusion"].values())
