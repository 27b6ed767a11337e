"""Shared fixtures: a tiny hand-made dataset in the OVIS layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils


def rle_uncompressed(mask: np.ndarray) -> dict:
    """Uncompressed (column-major) RLE of a bool mask, as OVIS files store it."""
    flat = mask.astype(np.uint8).flatten(order="F")
    counts, current, run = [], 0, 0
    for v in flat:
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": [int(c) for c in counts]}


def make_tiny_ovis(root: Path, *, with_occlusion: bool = True) -> dict:
    """Write a 2-video dataset (5 and 1 frames, 32x48) and return its annotation dict.

    Video 1: object 10 (category 1) moves right by 2 px per frame, object 11 (category 2) is
    absent in frame 2. Video 2 has one frame and one object.
    """
    h, w = 32, 48
    videos, anns = [], []
    specs = {1: 5, 2: 1}
    for vid, length in specs.items():
        names = [f"v{vid}/{t:05d}.jpg" for t in range(length)]
        for t, name in enumerate(names):
            (root / "JPEGImages" / f"v{vid}").mkdir(parents=True, exist_ok=True)
            img = np.full((h, w, 3), 40 * t, dtype=np.uint8)
            Image.fromarray(img).save(root / "JPEGImages" / name)
        videos.append({"id": vid, "width": w, "height": h, "length": length, "file_names": names})

    def track(ann_id, vid, cat, boxes):
        segs, bbs, areas, occ = [], [], [], []
        for b in boxes:
            if b is None:
                segs.append(None), bbs.append(None), areas.append(None), occ.append(None)
                continue
            x, y, bw, bh = b
            m = np.zeros((h, w), dtype=bool)
            m[y : y + bh, x : x + bw] = True
            segs.append(rle_uncompressed(m))
            bbs.append([x, y, bw, bh])
            areas.append(bw * bh)
            occ.append("no_occlusion")
        entry = {
            "id": ann_id,
            "video_id": vid,
            "category_id": cat,
            "iscrowd": 0,
            "segmentations": segs,
            "bboxes": bbs,
            "areas": areas,
        }
        if with_occlusion:
            entry["occlusion"] = occ
        return entry

    anns.append(track(10, 1, 1, [(2 + 2 * t, 4, 8, 6) for t in range(5)]))
    anns.append(
        track(
            11, 1, 2, [(20, 10, 10, 12), (21, 10, 10, 12), None, (23, 10, 10, 12), (24, 10, 10, 12)]
        )
    )
    comp = mask_utils.encode(
        np.asfortranarray(np.pad(np.ones((5, 5), np.uint8), ((3, 24), (3, 40))))
    )
    comp["counts"] = comp["counts"].decode()
    anns.append(
        {
            "id": 20,
            "video_id": 2,
            "category_id": 1,
            "iscrowd": 0,
            "segmentations": [comp],
            "bboxes": [[3, 3, 5, 5]],
            "areas": [25],
        }
    )
    data = {
        "info": {},
        "licenses": [],
        "videos": videos,
        "annotations": anns,
        "categories": [{"id": 1, "name": "disc"}, {"id": 2, "name": "square"}],
    }
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "train.json").write_text(json.dumps(data))
    return data


@pytest.fixture
def tiny_ovis(tmp_path: Path) -> tuple[Path, dict]:
    """``(root, annotation dict)`` of the tiny dataset, written under a temporary folder."""
    root = tmp_path / "tiny"
    return root, make_tiny_ovis(root)


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory) -> Path:
    """A 4-video synthetic set (5 frames, 96x64): 3 train videos, 1 validation video."""
    from ovisnet.data.synthetic import generate

    root = tmp_path_factory.mktemp("synthetic")
    generate(root, seed=3, num_videos=4, num_frames=5, size=(96, 64), valid_fraction=0.25)
    return root


@pytest.fixture(scope="session")
def tiny_train_overrides(tiny_synthetic: Path) -> list[str]:
    """Hydra overrides that shrink an experiment to seconds on ``tiny_synthetic``, from scratch
    (the paper recipes' ``init_from=coco`` would need the weights in torch hub's cache)."""
    return [
        "init_from=null",
        "data=synthetic",
        "trainer=cpu",
        "model/backbone=timm_fpn",
        f"data.root={tiny_synthetic}",
        "data.max_size=[96,64]",
        "data.num_workers=0",
        "data.batch_size=2",
        "trainer.max_epochs=1",
        "trainer.check_val_every_n_epoch=1",
        "++trainer.limit_train_batches=2",
        "+trainer.enable_progress_bar=false",
        "model.rpn.pre_nms_top_n=50",
        "model.rpn.post_nms_top_n=50",
        "model.rcnn.detections_per_img=10",
    ]


@pytest.fixture(scope="session")
def tiny_stemseg_overrides(tiny_train_overrides: list[str]) -> list[str]:
    """``tiny_train_overrides`` for STEm-Seg: narrow decoders, and every pixel foreground and a
    seed candidate (a 2-step model's seediness stays near 0.5), so that tracks are written."""
    kept = [o for o in tiny_train_overrides if not o.startswith(("model.rpn.", "model.rcnn."))]
    return [
        *kept,
        "model.config.embedding_widths=[8,8,8,8]",
        "model.config.semantic_widths=[8,8,8,8]",
        "model.config.num_groups=4",
        "system.predictor.config.fg_thresh=0.01",
        "system.predictor.config.seed_thresh=0.01",
    ]


@pytest.fixture(scope="session")
def tiny_sipmask_overrides(tiny_train_overrides: list[str]) -> list[str]:
    """``tiny_train_overrides`` for the SipMask family: no RPN / R-CNN keys, a narrow head,
    and every detection kept (a 2-step model scores below the recipe's 0.03)."""
    kept = [o for o in tiny_train_overrides if not o.startswith(("model.rpn.", "model.rcnn."))]
    return [
        *kept,
        "model.test.detections_per_img=10",
        "model.test.score_thresh=0.0",
        "model.config.basis_channels=32",
        "model.config.track_dim=32",
    ]
