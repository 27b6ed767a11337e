"""Per-frame detection quality of a checkpoint: COCO box and mask AP with frames as images.

Video AP mixes detection, segmentation and association; this separates the first two. The run's
model is rebuilt from its saved config (as ``python -m ovisnet.eval`` does) and streamed over the
validation split by :class:`~ovisnet.tracking.predictor.VideoPredictor` (each frame detected
with its ε_test references); every frame's detections, before the tracker sees them, are pasted
to the original resolution and scored by pycocotools' ``COCOeval`` against that frame's ground
truth (crowd objects ignored), class-aware and class-agnostic.

Usage:
    python scripts/frame_ap.py ckpt_path=RUN/checkpoints/last.ckpt [data.root=DIR] \\
        [model.test.score_thresh=0.0 | model.rcnn.score_thresh=0.0] [other run-config overrides]
"""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ovisnet.eval import load_config, parse_args, run_config
from ovisnet.structures import Instances
from ovisnet.tracking.predictor import VideoPredictor
from ovisnet.train import build

KINDS = ("bbox", "segm")


def coco_stats(
    images: list[dict], gts: list[dict], dets: list[dict], categories: list[int]
) -> dict[str, dict[str, float]]:
    """COCO AP / AP50 / AP75 / AR100 (percent) for boxes and masks."""
    coco = COCO()
    coco.dataset = {
        "images": images,
        "annotations": gts,
        "categories": [{"id": c} for c in categories],
    }
    if not dets:  # pycocotools' loadRes refuses an empty list
        return {kind: dict.fromkeys(("AP", "AP50", "AP75", "AR100"), 0.0) for kind in KINDS}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        found = coco.loadRes(dets)
    out = {}
    for kind in KINDS:
        evaluator = COCOeval(coco, found, kind)
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        stats = 100.0 * evaluator.stats
        out[kind] = {"AP": stats[0], "AP50": stats[1], "AP75": stats[2], "AR100": stats[8]}
    return out


def main(argv: list[str] | None = None) -> None:
    """Rebuild the run, stream the validation split, print the per-frame AP table."""
    own, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    ckpt = Path(own["ckpt_path"])
    cfg = load_config(run_config(ckpt, own.get("config")), overrides, Path(tempfile.mkdtemp()))
    datamodule, system = build(cfg)
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    system.load_state_dict(state["state_dict"])
    model = system.model.eval()
    ann = datamodule.load_split("val")
    images: list[dict] = []
    gts: list[dict] = []
    dets: list[dict] = []
    current: dict[str, Any] = {}
    detect = model.detect

    def recording_detect(*args: Any, **kwargs: Any) -> list[Instances]:
        found = detect(*args, **kwargs)
        video, t = current["video"], current["next"]
        current["next"] += 1
        image_id = len(images) + 1
        height, width = current["original_size"]
        images.append({"id": image_id, "height": height, "width": width})
        for track in video.tracks:
            rle = track.rle(t)
            area = 0.0 if rle is None or track.iscrowd else float(mask_util.area(rle))
            if area <= 0:
                continue
            gts.append(
                {
                    "id": len(gts) + 1,
                    "image_id": image_id,
                    "category_id": track.category_id,
                    "segmentation": rle,
                    "area": area,
                    "bbox": mask_util.toBbox(rle).tolist(),
                    "iscrowd": 0,
                }
            )
        pasted = model.paste(
            found[0], image_size=current["image_size"], original_size=(height, width)
        )
        for i in range(len(pasted)):
            rle = mask_util.encode(np.asfortranarray(pasted.masks[i].cpu().numpy(), np.uint8))
            rle["counts"] = rle["counts"].decode()
            x1, y1, x2, y2 = pasted.boxes[i].tolist()
            dets.append(
                {
                    "image_id": image_id,
                    "category_id": ann.category_id(int(pasted.labels[i])),
                    "segmentation": rle,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(pasted.scores[i]),
                }
            )
        return found

    model.detect = recording_detect
    predictor: VideoPredictor | None = None
    with torch.no_grad():
        for batch in datamodule.eval_dataloader("val"):
            if batch.frame_indices[0][0] == 0:
                current.update(
                    video=ann.video(batch.video_ids[0]),
                    next=0,
                    image_size=batch.image_sizes[0],
                    original_size=batch.original_sizes[0],
                )
                predictor = VideoPredictor.for_video(
                    batch,
                    model,
                    system.tracker_factory(),
                    system.paste,
                    [c.id for c in ann.categories],
                    eps_test=cfg.data.eps_test,
                )
            assert predictor is not None
            predictor.push(batch.images[0, 0])
    categories = [c.id for c in ann.categories]
    rows = {"class-aware": coco_stats(images, gts, dets, categories)}
    agnostic = [{**d, "category_id": 1} for d in dets]
    rows["class-agnostic"] = coco_stats(
        images, [{**g, "category_id": 1} for g in gts], agnostic, [1]
    )
    print(
        f"per-frame COCO AP, percent: {ckpt}, {len(images)} frames, {len(gts)} objects, "
        f"{len(dets)} detections"
    )
    print(
        f"{'':16}{'box AP':>8}{'AP50':>7}{'AP75':>7}{'AR100':>7}{'mask AP':>9}{'AP50':>7}"
        f"{'AP75':>7}{'AR100':>7}"
    )
    for name, stats in rows.items():
        box, segm = stats["bbox"], stats["segm"]
        print(
            f"{name:16}{box['AP']:8.1f}{box['AP50']:7.1f}{box['AP75']:7.1f}{box['AR100']:7.1f}"
            f"{segm['AP']:9.1f}{segm['AP50']:7.1f}{segm['AP75']:7.1f}{segm['AR100']:7.1f}"
        )


if __name__ == "__main__":
    main()
