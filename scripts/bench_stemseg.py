"""Benchmark STEm-Seg's streamed inference per frame against MaskTrack R-CNN, side by side.

MaskTrack R-CNN and STEm-Seg on ResNet-50-FPN with random weights, 25 classes (OVIS), eval
mode, no grad, 640x360 frames (canvas 640x384) of a synthetic video. MaskTrack R-CNN streams
through :class:`~ovisnet.tracking.predictor.VideoPredictor` (score threshold 0: 100 detections
per frame, tracked, pasted, RLE); STEm-Seg through
:class:`~ovisnet.tracking.clip_predictor.ClipPredictor` (backbone once per frame, both
squeeze-expand decoders once per sub-clip of 8 frames overlapping by 4, clustering, stitching,
RLE). Random weights give STEm-Seg no seed above 0.8, so by default every pixel is made
foreground and a seed candidate (``--forced``): each sub-clip then forms its 30 clusters, the
clustering's worst case; ``--no-forced`` times the preset thresholds instead.

The two models are interleaved frame by frame in one process (the order alternates every frame)
and each one's pushes are timed; a short untimed video warms both up first. STEm-Seg's time is
split into the network (backbone + heads, timed around ``extract_features`` and
``clip_outputs``) and the rest (clustering, stitching, mask upsampling and RLE), as the official
code prints model / clustering / overall speed. Peak memory of a streamed 400- vs 50-frame
video is part ``rss`` of ``scripts/bench_inference.py`` (``--rss-experiments stemseg_cpu``).

Usage:
    python scripts/bench_stemseg.py                 # 32 frames on CPU, 64 on CUDA
    python scripts/bench_stemseg.py --frames 24 --device cuda
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
    NUM_CLASSES,
    Stopwatch,
    canvas_frames,
    make_predictor,
    markdown_table,
    time_interleaved,
    verdict,
)
from ovisnet.models.backbones import resnet_fpn
from ovisnet.models.masktrack import MaskTrackRCNN
from ovisnet.models.roi_heads import RCNNConfig
from ovisnet.models.stemseg import STEmSeg
from ovisnet.tracking.clip_predictor import ClipPredictor, ClusteringConfig

SIZE = (640, 360)
TARGET = 3.0  # STEm-Seg / MaskTrack R-CNN per frame (published implementations: 26.1 / 3.0 FPS)
FORCED = {"fg_thresh": 0.0, "seed_thresh": 0.01}
MASKTRACK, STEMSEG = "MaskTrack R-CNN", "STEm-Seg"


def stream(
    models: dict[str, nn.Module],
    frames: list[torch.Tensor],
    size_hw: tuple[int, int],
    device: torch.device,
    clustering: ClusteringConfig,
) -> tuple[dict[str, float], int]:
    """Push ``frames`` through one predictor per model, interleaved; seconds per model, and
    the number of STEm-Seg tracks written."""
    predictors = {
        MASKTRACK: make_predictor(models[MASKTRACK], len(frames), size_hw),
        STEMSEG: ClipPredictor(
            models[STEMSEG],
            video_id=1,
            length=len(frames),
            image_size=size_hw,
            original_size=size_hw,
            category_ids=range(1, NUM_CLASSES + 1),
            config=clustering,
        ),
    }
    seconds, results = time_interleaved(predictors, frames, device)
    return seconds, len(results[STEMSEG])


def main(argv: list[str] | None = None) -> None:
    """Build both models, warm them up, time the interleaved streams, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=None, help="timed frames (32 CPU, 64 CUDA)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--forced", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--cache-dir", default=str(Path(tempfile.gettempdir()) / "ovisnet-bench-inference")
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    frames_n = args.frames or (64 if device.type == "cuda" else 32)
    frames, size_hw = canvas_frames(Path(args.cache_dir), frames_n, SIZE, device)
    canvas = tuple(frames[0].shape[-2:])
    torch.manual_seed(0)
    models = {
        MASKTRACK: MaskTrackRCNN(
            resnet_fpn("resnet50"),
            num_classes=NUM_CLASSES,
            rcnn=RCNNConfig(score_thresh=0.0, detections_per_img=DETECTIONS),
        ),
        STEMSEG: STEmSeg(resnet_fpn("resnet50"), NUM_CLASSES),
    }
    models = {name: m.to(device).eval() for name, m in models.items()}
    clustering = ClusteringConfig(max_clusters=30, max_tracks=50, **(FORCED if args.forced else {}))
    network = Stopwatch(device)
    with torch.no_grad():
        stream(models, frames[:2], size_hw, device, clustering)  # warm-up video (untimed)
        network.wrap(models[STEMSEG], "extract_features", "network")
        network.wrap(models[STEMSEG], "clip_outputs", "network")
        network.enabled = True
        seconds, tracks = stream(models, frames, size_hw, device, clustering)
    per_frame = {name: s / len(frames) for name, s in seconds.items()}
    net = network.seconds["network"] / len(frames)
    rest = per_frame[STEMSEG] - net
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    forced = (
        "every pixel foreground and a seed candidate (30 clusters per sub-clip)"
        if args.forced
        else "the preset thresholds"
    )
    print(
        f"## STEm-Seg vs MaskTrack R-CNN per-frame inference: R50-FPN, random weights, "
        f"{NUM_CLASSES} classes, {SIZE[0]}x{SIZE[1]} (canvas {canvas[1]}x{canvas[0]}), {where}, "
        f"threads={args.threads}, {len(frames)} frames interleaved. MaskTrack: score threshold "
        f"0, 100 detections/frame. STEm-Seg: sub-clips of 8 overlapping by 4, {forced}; "
        f"{tracks} tracks written\n"
    )
    rows = [
        [MASKTRACK, f"{1000 * per_frame[MASKTRACK]:.1f}", f"{1 / per_frame[MASKTRACK]:.2f}"],
        [STEMSEG, f"{1000 * per_frame[STEMSEG]:.1f}", f"{1 / per_frame[STEMSEG]:.2f}"],
        [f"{STEMSEG}: network (backbone + heads)", f"{1000 * net:.1f}", f"{1 / net:.2f}"],
        [f"{STEMSEG}: clustering + stitching + RLE", f"{1000 * rest:.1f}", "-"],
    ]
    print(markdown_table(["model / part", "ms / frame", "frames / s"], rows))
    print()
    ratio = per_frame[STEMSEG] / per_frame[MASKTRACK]
    rows = [
        [f"{STEMSEG} / {MASKTRACK}", f"{ratio:.3f}x", f"<= {TARGET}x", verdict(ratio, TARGET)],
        [f"{STEMSEG} network / {MASKTRACK}", f"{net / per_frame[MASKTRACK]:.3f}x", "-", "-"],
        [
            f"{STEMSEG} clustering + stitching / {MASKTRACK}",
            f"{rest / per_frame[MASKTRACK]:.3f}x",
            "-",
            "-",
        ],
    ]
    print(markdown_table(["ratio (per frame)", "measured", "target", "met"], rows))


if __name__ == "__main__":
    main()
