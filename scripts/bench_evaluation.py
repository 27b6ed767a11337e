"""Benchmark the video AP evaluator against the official OVIS evaluator, side by side.

The case is built deterministically (seed 0): 140 videos of 20-40 frames at 640x360, 25
categories (OVIS), 3-8 ground-truth tracks per video drawn from 1-3 of the categories (so that
objects share a category, as in OVIS), each an ellipse moving on a line, visible over a random
span of the video with a few fully hidden frames, with random OVIS occlusion labels (about 1 in
20 tracks is a crowd). Each video gets 20 predictions: 17 perturb a ground-truth track (centre
jitter and offset, axes scaled, some frames dropped, 1 in 7 with a wrong category), 3 are
unrelated tracks; scores are uniform random. That is 2,800 predictions. Masks are compressed
RLE (results as our ``results.json``), the ground truth carries per-frame ``areas`` and
``occlusion`` labels as OVIS does.

Both evaluators run in one process from the two JSON paths to the metrics (reading the JSON
included), interleaved (the order alternates every repetition); the medians of the wall times
are compared (CPU times of the process are shown too: steadier on a shared machine).
``ovisnet.evaluation.evaluate_results`` is what ``python -m ovisnet.evaluation`` runs. The
official one (``ovis.py`` + ``oviseval.py`` of qjy981010/cocoapi) runs unmodified from the
given ``PythonAPI`` folder with two shims, so that it needs no build and runs on current NumPy:
its ``from . import mask`` is served the installed ``pycocotools.mask`` (the fork left
cocodataset's ``common/maskApi.c`` as it was, so its C extension need not be compiled), and
``numpy.float`` (removed in NumPy 1.24) is aliased to ``float`` while it runs. Its printing is
swallowed.

Usage:
    python scripts/bench_evaluation.py                                  # ours only
    python scripts/bench_evaluation.py --official ~/cocoapi/PythonAPI   # ours vs official
    OVIS_COCOAPI=~/cocoapi/PythonAPI python scripts/bench_evaluation.py --repeats 5
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import math
import os
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from ovisnet.evaluation import METRIC_KEYS, OCCLUSION_METRIC_KEYS, evaluate_results

NUM_VIDEOS = 140
PREDICTIONS_PER_VIDEO = 20
SIZE = (640, 360)  # (W, H)
FRAMES = (20, 40)  # inclusive range of video lengths
NUM_CATEGORIES = 25
TARGET_SPEEDUP = 5.0  # official time / ours
LEVELS = ("no_occlusion", "slight_occlusion", "severe_occlusion")
# official ``stats`` index of each of our keys
OFFICIAL_STATS = {
    "AP": 0,
    "AP50": 1,
    "AP75": 2,
    "APs": 3,
    "APm": 4,
    "APl": 5,
    "AP_SO": 6,
    "AP_MO": 7,
    "AP_HO": 8,
    "AR1": 9,
    "AR10": 10,
    "AR100": 11,
    "ARs": 12,
    "ARm": 13,
    "ARl": 14,
    "AR_SO": 15,
    "AR_MO": 16,
    "AR_HO": 17,
}
Track = list[tuple[float, float, float, float] | None]  # per frame (cx, cy, a, b) or absent


# -- the case ----------------------------------------------------------------------------------
def ellipse_rle(cx: float, cy: float, a: float, b: float, h: int, w: int) -> dict | None:
    """Compressed RLE (``counts`` a str) of a filled axis-aligned ellipse, None if empty.

    Built column by column (RLE is column-major and an ellipse is one run per column), so no
    frame is rasterised.
    """
    x = np.arange(max(0, math.ceil(cx - a)), min(w, math.floor(cx + a) + 1))
    half = b * np.sqrt(np.clip(1.0 - ((x + 0.5 - cx) / a) ** 2, 0.0, None))
    top = np.clip(np.rint(cy - half), 0, h).astype(np.int64)
    bottom = np.clip(np.rint(cy + half), 0, h).astype(np.int64)
    keep = bottom > top
    if not keep.any():
        return None
    starts, ends = (x * h + top)[keep], (x * h + bottom)[keep]
    breaks = np.flatnonzero(starts[1:] != ends[:-1])  # runs that touch across columns join
    starts = starts[np.concatenate([[0], breaks + 1])]
    ends = ends[np.concatenate([breaks, [len(ends) - 1]])]
    counts = np.empty(2 * len(starts) + 1, np.int64)
    counts[0:-1:2] = starts - np.concatenate([[0], ends[:-1]])
    counts[1::2] = ends - starts
    counts[-1] = h * w - ends[-1]
    rle = mask_utils.frPyObjects({"size": [h, w], "counts": counts.tolist()}, h, w)
    rle["counts"] = rle["counts"].decode()
    return rle


def _gt_track(rng: np.random.Generator, length: int, w: int, h: int) -> Track:
    a, b = rng.uniform(15, 120), rng.uniform(15, 100)
    start = np.array([rng.uniform(0, w), rng.uniform(0, h)])
    velocity = rng.normal(0, 4, 2)
    first = int(rng.integers(0, length // 3 + 1))
    last = int(rng.integers(2 * length // 3, length + 1))
    track: Track = []
    for t in range(length):
        cx, cy = start + velocity * t
        visible = first <= t < last and rng.random() > 0.05
        track.append((cx, cy, a * (1 + 0.1 * math.sin(t / 5)), b) if visible else None)
    return track


def _perturbed(rng: np.random.Generator, track: Track) -> Track:
    offset = rng.normal(0, 6, 2)
    scale = rng.uniform(0.8, 1.2, 2)
    out: Track = []
    for frame in track:
        if frame is None or rng.random() < 0.1:
            out.append(None)
            continue
        cx, cy, a, b = frame
        jitter = offset + rng.normal(0, 2, 2)
        out.append((cx + jitter[0], cy + jitter[1], a * scale[0], b * scale[1]))
    return out


def _segmentations(track: Track, w: int, h: int) -> list[dict | None]:
    return [None if f is None else ellipse_rle(*f, h, w) for f in track]


def build_case(
    seed: int = 0,
    num_videos: int = NUM_VIDEOS,
    predictions: int = PREDICTIONS_PER_VIDEO,
    size: tuple[int, int] = SIZE,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ground-truth dict and the results list of the benchmark case (see the module doc)."""
    rng = np.random.default_rng(seed)
    w, h = size
    videos, annotations, results = [], [], []
    for video_id in range(1, num_videos + 1):
        length = int(rng.integers(FRAMES[0], FRAMES[1] + 1))
        videos.append({"id": video_id, "width": w, "height": h, "length": length})
        categories = rng.choice(np.arange(1, NUM_CATEGORIES + 1), int(rng.integers(1, 4)), False)
        tracks = []
        for _ in range(int(rng.integers(3, 9))):
            category = int(rng.choice(categories))
            track = _gt_track(rng, length, w, h)
            segs = _segmentations(track, w, h)
            if all(s is None for s in segs):
                continue
            areas = [None if s is None else int(mask_utils.area(s)) for s in segs]
            occlusion = [None if s is None else LEVELS[int(rng.integers(0, 3))] for s in segs]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "video_id": video_id,
                    "category_id": category,
                    "iscrowd": int(rng.random() < 0.05),
                    "segmentations": segs,
                    "areas": areas,
                    "occlusion": occlusion,
                }
            )
            tracks.append((category, track))
        for p in range(predictions):
            if p < predictions - 3 and tracks:
                category, track = tracks[int(rng.integers(0, len(tracks)))]
                track = _perturbed(rng, track)
                if rng.random() < 1 / 7:
                    category = int(rng.integers(1, NUM_CATEGORIES + 1))
            else:
                category = int(rng.choice(categories))
                track = _gt_track(rng, length, w, h)
            results.append(
                {
                    "video_id": video_id,
                    "category_id": category,
                    "score": float(rng.random()),
                    "segmentations": _segmentations(track, w, h),
                }
            )
    categories = [{"id": c, "name": f"category_{c}"} for c in range(1, NUM_CATEGORIES + 1)]
    return {"videos": videos, "categories": categories, "annotations": annotations}, results


def write_case(directory: Path, seed: int = 0) -> tuple[Path, Path]:
    """Build the case and write ``gt.json`` and ``results.json`` into ``directory``."""
    gt, results = build_case(seed)
    gt_path, results_path = directory / "gt.json", directory / "results.json"
    gt_path.write_text(json.dumps(gt))
    results_path.write_text(json.dumps(results))
    return gt_path, results_path


# -- the evaluators ----------------------------------------------------------------------------
def ours(gt_path: Path, results_path: Path) -> dict[str, float]:
    """What ``python -m ovisnet.evaluation GT RESULTS`` computes."""
    return evaluate_results(gt_path, results_path)


def load_official(python_api: Path) -> Callable[[Path, Path], dict[str, float]]:
    """The official OVIS evaluator of a qjy981010/cocoapi ``PythonAPI`` folder, as a function.

    Its ``pycocotools`` folder is imported as the package ``_official_ovis`` whose ``mask``
    submodule is the installed ``pycocotools.mask``; nothing in the folder is changed or built.
    """
    folder = Path(python_api).expanduser() / "pycocotools"
    for name in ("ovis.py", "oviseval.py"):
        if not (folder / name).is_file():
            raise SystemExit(f"error: {folder / name} not found (expected a cocoapi PythonAPI)")
    package = types.ModuleType("_official_ovis")
    package.__path__ = [str(folder)]
    sys.modules["_official_ovis"] = package
    sys.modules["_official_ovis.mask"] = mask_utils
    ovis = importlib.import_module("_official_ovis.ovis")
    oviseval = importlib.import_module("_official_ovis.oviseval")

    def evaluate(gt_path: Path, results_path: Path) -> dict[str, float]:
        had_float = "float" in np.__dict__
        np.float = float  # removed in NumPy 1.24; the official accumulate() uses it
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                gt = ovis.OVIS(str(gt_path))
                run = oviseval.OVISeval(gt, gt.loadRes(str(results_path)), "segm")
                run.evaluate()
                run.accumulate()
                run.summarize()
        finally:
            if not had_float:
                del np.float
        return {key: float(run.stats[i]) for key, i in OFFICIAL_STATS.items()}

    return evaluate


# -- main --------------------------------------------------------------------------------------
def table(headers: list[str], rows: list[list[str]]) -> str:
    """A markdown table, first column left-aligned, the others right-aligned.

    (``bench_inference.markdown_table`` does the same, but importing that module loads torch and
    torchvision, seconds of start-up that this NumPy-only benchmark does not need.)
    """
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        padded = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = ["-" * w if i == 0 else "-" * (w - 1) + ":" for i, w in enumerate(widths)]
    return "\n".join([line(headers), "| " + " | ".join(rule) + " |", *(line(r) for r in rows)])


def compare(a: dict[str, float], b: dict[str, float]) -> tuple[str, float]:
    """``identical`` / ``equal to 1e-12`` / ``DIFFERENT`` and the largest absolute difference."""
    keys = METRIC_KEYS + OCCLUSION_METRIC_KEYS
    worst = max(abs(a[k] - b[k]) for k in keys)
    if all(a[k] == b[k] for k in keys):
        return "identical", worst
    return ("equal to 1e-12" if worst <= 1e-12 else "DIFFERENT"), worst


def main(argv: list[str] | None = None) -> int:
    """Build the case, time the evaluators interleaved, print times, ratio and equality."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--official",
        type=Path,
        default=os.environ.get("OVIS_COCOAPI") or None,
        metavar="PATH",
        help="qjy981010/cocoapi's PythonAPI folder (default: $OVIS_COCOAPI)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each evaluator")
    args = parser.parse_args(argv)
    evaluators: dict[str, Callable[[Path, Path], dict[str, float]]] = {"ours": ours}
    if args.official is not None:
        evaluators["official"] = load_official(args.official)

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        gt_path, results_path = write_case(Path(tmp))
        built = time.perf_counter() - start
        wall: dict[str, list[float]] = {name: [] for name in evaluators}
        cpu: dict[str, list[float]] = {name: [] for name in evaluators}
        metrics: dict[str, dict[str, float]] = {}
        names = list(evaluators)
        for r in range(args.repeats):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                start, start_cpu = time.perf_counter(), time.process_time()
                metrics[name] = evaluators[name](gt_path, results_path)
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)

    median = {name: statistics.median(s) for name, s in wall.items()}
    median_cpu = {name: statistics.median(s) for name, s in cpu.items()}
    print(
        f"## Video AP evaluation: {NUM_VIDEOS} videos of {FRAMES[0]}-{FRAMES[1]} frames at "
        f"{SIZE[0]}x{SIZE[1]}, {NUM_VIDEOS * PREDICTIONS_PER_VIDEO} predictions, "
        f"{NUM_CATEGORIES} categories (case built in {built:.1f} s), JSON paths to metrics, "
        f"{args.repeats} interleaved runs each, medians\n"
    )
    rows = [
        [
            name,
            f"{median[name]:.2f}",
            f"{median_cpu[name]:.2f}",
            " ".join(f"{s:.2f}" for s in wall[name]),
        ]
        for name in evaluators
    ]
    print(table(["evaluator", "median s", "median CPU s", "runs s"], rows))
    print()
    if "official" not in evaluators:
        print(
            "official evaluator not timed: pass --official PATH or set OVIS_COCOAPI=PATH, "
            "PATH a checkout of qjy981010/cocoapi's PythonAPI folder"
        )
        return 0
    speedup = median["official"] / median["ours"]
    speedup_cpu = median_cpu["official"] / median_cpu["ours"]
    same, worst = compare(metrics["ours"], metrics["official"])
    target = f">= {TARGET_SPEEDUP:g}x"
    rows = [
        [
            "official / ours (wall time)",
            f"{speedup:.2f}x",
            target,
            "yes" if speedup >= TARGET_SPEEDUP else "no",
        ],
        ["official / ours (CPU time)", f"{speedup_cpu:.2f}x", target, "-"],
    ]
    print(table(["ratio", "measured", "target", "met"], rows))
    print(f"\nnumbers: {same} (18 metrics, largest difference {worst:.1e})")
    return 0 if same != "DIFFERENT" else 1


if __name__ == "__main__":
    sys.exit(main())
