"""Image pseudo-clips: the motion, the COCO and frame sources, the datasets and the DataModule."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from conftest import rle_uncompressed
from ovisnet.data.annotations import load_annotations
from ovisnet.data.datamodule import VISDataModule
from ovisnet.data.datasets import VISTrainDataset
from ovisnet.data.image_clips import (
    ClipMotion,
    CocoImageSource,
    ImageClipDataset,
    MixedClipDataset,
    VideoFrameSource,
    image_to_clip,
)


@pytest.fixture
def ann(tiny_ovis):
    root, _ = tiny_ovis
    return load_annotations(root / "annotations" / "train.json")


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a & b).sum().item() / (a | b).sum().item()


def _mask_box(mask: torch.Tensor) -> list[float]:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


def _scene() -> tuple[torch.Tensor, torch.Tensor]:
    """A 128x160 image with two large objects (so one-pixel shifts barely change the IoU),
    object ``k`` painted 200 in colour channel ``k``."""
    masks = torch.zeros(2, 128, 160, dtype=torch.bool)
    masks[0, 20:80, 30:100] = True
    masks[1, 60:120, 90:150] = True
    image = torch.zeros(3, 128, 160, dtype=torch.uint8)
    image[:2][masks] = 200
    return image, masks


def test_motion_keeps_shapes_starts_near_identity_and_moves_smoothly():
    image, masks = _scene()
    for seed in range(5):
        frames, warped = image_to_clip(image, masks, 6, np.random.default_rng(seed))
        assert frames.shape == (6, 3, 128, 160) and frames.dtype == torch.uint8
        assert warped.shape == (6, 2, 128, 160) and warped.dtype == torch.bool
        for k in range(2):
            assert _iou(warped[0, k], masks[k]) > 0.9  # frame 0 ≈ the image
            steps = [_iou(warped[t, k], warped[t + 1, k]) for t in range(5)]
            assert min(steps) > 0.8  # consecutive frames are close
            assert _iou(warped[0, k], warped[-1, k]) < min(steps)  # the clip does move
            # the image moves with the masks: object k's colour stays inside its warped mask
            for frame, mask in zip(frames[:, k].float(), warped[:, k]):
                assert frame[mask].mean() > 180 and frame[~mask].mean() < 10


def test_motion_is_deterministic_and_identity_without_bounds():
    image, masks = _scene()
    a = image_to_clip(image, masks, 4, np.random.default_rng(7))
    b = image_to_clip(image, masks, 4, np.random.default_rng(7))
    c = image_to_clip(image, masks, 4, np.random.default_rng(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    still = ClipMotion(max_rotation=0, max_translation=0, max_scale=0, max_shear=0, perspective=0)
    frames, warped = image_to_clip(image, masks, 3, np.random.default_rng(0), still)
    assert torch.equal(frames, image.expand(3, -1, -1, -1))
    assert torch.equal(warped, masks.expand(3, -1, -1, -1))
    frames, warped = image_to_clip(image, masks[:0], 1, np.random.default_rng(0))
    assert frames.shape == (1, 3, 128, 160) and warped.shape == (1, 0, 128, 160)
    with pytest.raises(ValueError, match="max_scale must be < 1"):
        ClipMotion(max_scale=1.0)
    with pytest.raises(ValueError, match="num_frames must be >= 1"):
        image_to_clip(image, masks, 0, np.random.default_rng(0))


H, W = 32, 48


def _box_mask(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def _coco_rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def write_coco(folder: Path, image_ids: tuple[int, ...] = (101, 102, 103, 104)) -> Path:
    """A COCO file + PNG images (48x32): 101 = polygon "Disc" + RLE "box" + crowd "Disc",
    102 = "person" only, 103 = crowd "Disc" only, 104 = uncompressed-RLE "box" only."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    anns = [
        (101, 1, [[4, 4, 20, 4, 20, 16, 4, 16]], 0),  # polygon: pixels x 4..19, y 4..15
        (101, 3, _coco_rle(_box_mask(26, 6, 38, 20)), 0),
        (101, 1, rle_uncompressed(_box_mask(2, 24, 46, 30)), 1),
        (102, 2, [[10, 10, 30, 10, 30, 20, 10, 20]], 0),
        (103, 1, rle_uncompressed(_box_mask(0, 0, 10, 10)), 1),
        (104, 3, rle_uncompressed(_box_mask(8, 8, 24, 24)), 0),
    ]
    data = {
        "images": [{"id": i, "file_name": f"{i}.png", "height": H, "width": W} for i in image_ids],
        "annotations": [
            {
                "id": n,
                "image_id": img,
                "category_id": cat,
                "segmentation": seg,
                "bbox": [0, 0, 10, 10],  # only checked by the box filter: boxes come from masks
                "area": 100,
                "iscrowd": crowd,
            }
            for n, (img, cat, seg, crowd) in enumerate(anns)
            if img in image_ids
        ],
        "categories": [
            {"id": 1, "name": "Disc"},
            {"id": 2, "name": "person"},
            {"id": 3, "name": "box"},
        ],
    }
    for i in image_ids:
        Image.fromarray(np.full((H, W, 3), i, np.uint8)).save(folder / "images" / f"{i}.png")
    path = folder / "instances.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_source_maps_categories_by_name(tmp_path, ann):
    source = CocoImageSource(write_coco(tmp_path), tmp_path / "images", ann)
    assert len(source) == 1  # 102 unmapped, 103 crowd only, 104's "box" has no namesake
    image, objects = source.load(0)
    assert image.shape == (3, H, W) and image[0, 0, 0] == 101
    assert objects.labels.tolist() == [0, 0] and objects.iscrowd.tolist() == [False, True]
    assert objects.masks.shape == (2, H, W)
    assert objects.boxes.tolist() == [[4, 4, 20, 16], [2, 24, 46, 30]]
    assert objects.masks[1].sum() == 44 * 6


def test_coco_source_explicit_map_and_errors(tmp_path, ann):
    path = write_coco(tmp_path)
    source = CocoImageSource(path, tmp_path / "images", ann, category_map={1: 1, 3: 2})
    assert len(source) == 2  # 101 and 104
    _, objects = source.load(0)
    assert objects.labels.tolist() == [0, 1, 0]
    assert objects.iscrowd.tolist() == [False, False, True]
    assert torch.equal(objects.masks[1], torch.from_numpy(_box_mask(26, 6, 38, 20)))
    _, objects = source.load(1)
    assert objects.labels.tolist() == [1] and objects.boxes.tolist() == [[8, 8, 24, 24]]
    with pytest.raises(ValueError, match="not a category id of the video dataset"):
        CocoImageSource(path, tmp_path / "images", ann, category_map={1: 9})
    with pytest.raises(ValueError, match="category_map names unknown category 7"):
        CocoImageSource(path, tmp_path / "images", ann, category_map={7: 1})
    empty = write_coco(tmp_path / "empty", image_ids=(102, 103))
    with pytest.raises(ValueError, match=r"empty/instances.json: no image has a non-crowd"):
        CocoImageSource(empty, tmp_path / "empty" / "images", ann)


def test_frame_source_serves_every_valid_frame(ann):
    source = VideoFrameSource(ann)
    assert len(source) == 6
    image, objects = source.load(5)
    assert image.shape == (3, 32, 48) and objects.track_ids.tolist() == [20]
    assert objects.boxes.tolist() == [[3, 3, 8, 8]]


@pytest.mark.parametrize("flip_prob", [0.0, 1.0])
def test_image_clip_sample(tmp_path, ann, flip_prob):
    source = CocoImageSource(write_coco(tmp_path), tmp_path / "images", ann, category_map={1: 1})
    ds = ImageClipDataset(source, clip_length=5, max_size=(96, 64), flip_prob=flip_prob)
    assert len(ds) == 1
    s = ds[(0, 3)]
    assert s.images.shape == (5, 3, 64, 96) and s.images.dtype == torch.uint8
    assert s.frame_indices == [0, 1, 2, 3, 4] and s.video_length == 5 and s.video_id == -1
    assert s.scale == 2.0 and s.image_size == (64, 96) and s.original_size == (32, 48)
    assert s.flipped is (flip_prob == 1.0)
    assert len(s.targets) == 5
    for target in s.targets:
        assert set(target.track_ids.tolist()) <= {1, 2}
        assert target.labels.tolist() == [0] * len(target)
        assert target.iscrowd.tolist() == [tid == 2 for tid in target.track_ids.tolist()]
        for box, mask in zip(target.boxes, target.masks):
            assert _mask_box(mask) == box.tolist()
    assert s.targets[0].track_ids.tolist() == [1, 2]
    # frame 0 is the resized (and flipped) image: object 1's box is about (4, 4, 20, 16) x 2
    expected = [8, 8, 40, 32] if not s.flipped else [96 - 40, 8, 96 - 8, 32]
    assert np.allclose(s.targets[0].boxes[0].tolist(), expected, atol=3)
    again = ds[(0, 3)]
    assert torch.equal(again.images, s.images)
    assert all(torch.equal(a.masks, b.masks) for a, b in zip(again.targets, s.targets))


def test_vanished_objects_leave_the_frame(ann):
    source = VideoFrameSource(ann)
    far = ClipMotion(max_translation=2.0, start_fraction=0.0)  # frame 0 is the image itself
    ds = ImageClipDataset(source, clip_length=4, max_size=(48, 32), motion=far)
    clips = [[t.track_ids.tolist() for t in ds[(5, seed)].targets] for seed in range(10)]
    assert all(clip[0] == [1] for clip in clips)
    assert [] in [ids for clip in clips for ids in clip]  # moved up to twice the width: it exits
    assert {s.video_id for s in (ds[0], ds[5])} == {-1, -6}


def test_mixed_dataset_ratio_and_determinism(ann):
    videos = VISTrainDataset(ann, mode="clip", max_size=(48, 32), clip_length=3)
    images = ImageClipDataset(VideoFrameSource(ann), clip_length=3, max_size=(48, 32))
    mixed = MixedClipDataset(videos, images, image_ratio=0.3)
    assert len(mixed) == len(videos) == 6
    picks = [mixed.choice(seed) for seed in range(2000)]
    share = sum(p is not None for p in picks) / len(picks)
    assert abs(share - 0.3) < 0.04
    assert {p[0] for p in picks if p is not None} == set(range(6))  # every image gets drawn
    for seed in range(8):
        s = mixed[(2, seed)]
        assert torch.equal(s.images, mixed[(2, seed)].images)
        if picks[seed] is None:
            assert s.video_id > 0 and torch.equal(s.images, videos[(2, seed)].images)
        else:
            assert s.video_id == -(picks[seed][0] + 1) and s.frame_indices == [0, 1, 2]
    assert all(MixedClipDataset(videos, images, 0.0).choice(s) is None for s in range(50))
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match=r"image_ratio must be in \[0, 1\)"):
            MixedClipDataset(videos, images, bad)
    with pytest.raises(ValueError, match="clip lengths differ"):
        MixedClipDataset(videos, ImageClipDataset(VideoFrameSource(ann), clip_length=4), 0.3)


def _datamodule(root: Path, **kwargs) -> VISDataModule:
    return VISDataModule(
        str(root),
        train_ann="annotations/train.json",
        val_ann=None,
        num_classes=2,
        mode="clip",
        clip_length=3,
        max_size=(96, 64),
        batch_size=2,
        num_workers=0,
        seed=1,
        **kwargs,
    )


def test_datamodule_mixes_frame_pseudo_clips(tiny_ovis):
    root, _ = tiny_ovis
    dm = _datamodule(root, image_clips={"source": "frames", "ratio": 0.5, "max_rotation": 5.0})
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader.dataset, MixedClipDataset)
    assert loader.dataset.images.motion.max_rotation == 5.0
    batches = list(loader)
    assert len(batches) == 3
    for b in batches:
        assert b.images.shape == (2, 3, 3, 64, 96) and len(b.targets[0]) == 3
    ids = [v for b in batches for v in b.video_ids]
    assert any(v < 0 for v in ids) and any(v > 0 for v in ids)  # both kinds in one epoch
    assert [b.video_ids for b in dm.train_dataloader()] == [b.video_ids for b in batches]


def test_datamodule_coco_source_relative_to_root(tiny_ovis):
    root, _ = tiny_ovis
    write_coco(root / "coco")
    config = {"source": "coco/instances.json", "image_root": "coco/images", "ratio": 0.4}
    dm = _datamodule(root, image_clips={**config, "category_map": {1: 1, 3: 2}})
    images = dm.train_dataloader().dataset.images
    assert isinstance(images.source, CocoImageSource) and len(images) == 2
    assert images[(1, 0)].images.shape == (3, 3, 64, 96)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "pair", "image_clips": {"source": "frames", "ratio": 0.4}}, "needs mode='clip'"),
        ({"image_clips": {"source": "frames", "ratio": 0.4, "spin": 1}}, r"unknown keys \['spin'"),
        ({"image_clips": {"source": "frames"}}, r"missing keys \['ratio'\]"),
        ({"image_clips": {"source": "frames", "ratio": 1.0}}, r"ratio must be in \[0, 1\)"),
        ({"image_clips": {"source": "c.json", "ratio": 0.4}}, "c.json needs image_root"),
        ({"image_clips": {"source": "frames", "ratio": 0.4, "max_scale": 2}}, "max_scale"),
    ],
)
def test_datamodule_rejects_bad_image_clip_configs(tiny_ovis, kwargs, message):
    root, _ = tiny_ovis
    base = {"mode": "clip", "num_classes": 2}
    with pytest.raises(ValueError, match=message):
        VISDataModule(str(root), **{**base, **kwargs})
