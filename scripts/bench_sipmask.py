"""Benchmark the one-stage family: per-frame inference cost against MaskTrack R-CNN.

MaskTrack R-CNN, SipMask-VIS and CSipMask (TFC, 256 channels, eps_test 3) on ResNet-50-FPN
with random weights, 25 classes (OVIS), eval mode, no grad, 640x360 frames (canvas 640x384) of a
synthetic video, each model streaming the same video through
:class:`~ovisnet.tracking.predictor.VideoPredictor` (backbone once per frame, detect, embed,
track, paste, RLE). Every score threshold is 0, so each model keeps its 100 detections per frame
after NMS. The three models are interleaved frame by frame in one process (the order rotates
every frame) and each one's pushes are timed; a short untimed video warms every model up first.
The per-frame cost is a model's total push time divided by the frames (CSipMask's detections
lag its pushes by eps_test frames; the whole video is timed, so every frame counts once).

Peak memory of streamed CSipMask evaluation (400 vs 50 frames) is part ``rss`` of
``scripts/bench_inference.py`` (``--rss-experiments csipmask_cpu``).

Usage:
    python scripts/bench_sipmask.py                 # 6 frames on CPU, 20 on CUDA
    python scripts/bench_sipmask.py --frames 10 --device cuda
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import (
    DETECTIONS,
    EPS_TEST,
    NUM_CLASSES,
    canvas_frames,
    make_predictor,
    markdown_table,
    time_interleaved,
    verdict,
)
from ovisnet.models.backbones import resnet_fpn
from ovisnet.models.calibration import TemporalFeatureCalibration
from ovisnet.models.masktrack import MaskTrackRCNN
from ovisnet.models.roi_heads import RCNNConfig
from ovisnet.models.sipmask import SipMaskTestConfig, SipMaskVIS

SIZE = (640, 360)
TARGET_SIPMASK = 0.8  # SipMask-VIS / MaskTrack R-CNN per frame (published implementations: 0.74)


def build_models() -> dict[str, nn.Module]:
    """The three models, random weights, every detection kept."""
    torch.manual_seed(0)
    test = SipMaskTestConfig(score_thresh=0.0, detections_per_img=DETECTIONS)
    return {
        "MaskTrack R-CNN": MaskTrackRCNN(
            resnet_fpn("resnet50"),
            num_classes=NUM_CLASSES,
            rcnn=RCNNConfig(score_thresh=0.0, detections_per_img=DETECTIONS),
        ),
        "SipMask-VIS": SipMaskVIS(
            resnet_fpn("resnet50", pyramid="p3p7"), num_classes=NUM_CLASSES, test=test
        ),
        "CSipMask": SipMaskVIS(
            resnet_fpn("resnet50", pyramid="p3p7"),
            num_classes=NUM_CLASSES,
            calibration=TemporalFeatureCalibration(channels=256),
            test=test,
        ),
    }


def count_detections(model: nn.Module, counts: list[int]) -> None:
    """Record the number of detections of every ``detect`` call of ``model`` in ``counts``."""
    detect = model.detect

    def counted(*args, **kwargs):
        out = detect(*args, **kwargs)
        counts.extend(len(d) for d in out)
        return out

    model.detect = counted


def stream(
    models: dict[str, nn.Module], frames: list[torch.Tensor], size_hw: tuple[int, int], device
) -> dict[str, float]:
    """Push ``frames`` through one predictor per model, interleaved; seconds per model."""
    predictors = {name: make_predictor(m, len(frames), size_hw) for name, m in models.items()}
    return time_interleaved(predictors, frames, device)[0]


def main(argv: list[str] | None = None) -> None:
    """Build the models, warm them up, time the interleaved streams, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=None, help="timed frames (6 CPU, 20 CUDA)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--cache-dir", default=str(Path(tempfile.gettempdir()) / "ovisnet-bench-inference")
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    frames_n = args.frames or (20 if device.type == "cuda" else 6)
    frames, size_hw = canvas_frames(Path(args.cache_dir), frames_n, SIZE, device)
    canvas = tuple(frames[0].shape[-2:])
    models = {name: m.to(device).eval() for name, m in build_models().items()}
    counts: dict[str, list[int]] = {name: [] for name in models}
    with torch.no_grad():
        stream(models, frames[:2], size_hw, device)  # warm-up video (untimed)
        for name, model in models.items():
            count_detections(model, counts[name])
        seconds = stream(models, frames, size_hw, device)
    per_frame = {name: s / len(frames) for name, s in seconds.items()}
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"## One-stage family per-frame inference: R50-FPN, random weights, {NUM_CLASSES} "
        f"classes, score threshold 0, {DETECTIONS} detections/frame, "
        f"{SIZE[0]}x{SIZE[1]} (canvas {canvas[1]}x{canvas[0]}), eps_test {EPS_TEST}, "
        f"{where}, threads={args.threads}, {len(frames)} frames interleaved\n"
    )
    rows = [
        [name, f"{1000 * t:.1f}", f"{1 / t:.2f}", f"{sum(counts[name]) / len(counts[name]):.1f}"]
        for name, t in per_frame.items()
    ]
    print(markdown_table(["model", "ms / frame", "frames / s", "detections / frame"], rows))
    print()
    sip = per_frame["SipMask-VIS"] / per_frame["MaskTrack R-CNN"]
    csip = per_frame["CSipMask"] / per_frame["SipMask-VIS"]
    rows = [
        [
            "SipMask-VIS / MaskTrack R-CNN",
            f"{sip:.3f}x",
            f"<= {TARGET_SIPMASK}x",
            verdict(sip, TARGET_SIPMASK),
        ],
        ["CSipMask / SipMask-VIS", f"{csip:.3f}x", "-", "-"],
    ]
    print(markdown_table(["ratio (per frame)", "measured", "target", "met"], rows))


if __name__ == "__main__":
    main()
