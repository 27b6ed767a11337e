"""Dataset statistics of OVIS / YouTube-VIS annotation files (OVIS paper, Table 1 and Fig. 4).

``python -m ovisnet.stats ANN.json [--json OUT] [--plots DIR]`` prints a table and optionally
writes the numbers as JSON and histograms as PNG.

Definitions:

* An object is *present* in a frame when its segmentation there is not null; a *mask* is one such
  (object, frame) pair. Crowd tracks count like any other track (OVIS has none).
* Objects per frame is the mean over *all* frames, frames with no object included.
* Frames per instance counts the frames where the instance is present.
* BOR (Eq. 1 of the OVIS paper) of a frame with boxes B_1..B_N is
  ``|U_{i<j} (B_i ∩ B_j)| / |U_i B_i|``: the area covered by at least two boxes over the area
  covered by at least one, both computed exactly (:func:`bor`). A frame with one object has BOR 0.
* mBOR is the mean BOR over the frames that contain at least one object; frames without objects
  are ignored (as in the paper; single-object frames count with BOR 0, which is how "about 70% of
  the frames of YouTube-VIS have BOR 0" comes about).
* Occlusion proportions are over the non-null per-frame ``occlusion`` labels.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from ovisnet.data.annotations import (
    OCCLUSION_LEVELS,
    AnnotationError,
    Track,
    VISAnnotations,
    load_annotations,
)

__all__ = [
    "DatasetSamples",
    "bor",
    "collect_samples",
    "compute_stats",
    "format_table",
    "main",
    "plot_histograms",
]

_BOR_HIGH = 0.2  # the paper's reference point: "about half of the frames of OVIS have BOR >= 0.2"


def bor(boxes_xywh: np.ndarray | Sequence[Sequence[float]]) -> float:
    """Bounding-box Occlusion Rate of one frame (OVIS paper, Eq. 1), computed exactly.

    The plane is cut into cells along every box edge (coordinate compression); a 2-D difference
    array counts how many boxes cover each cell. The numerator is the area of the cells covered by
    two or more boxes (the union of all pairwise intersections, a region shared by three boxes
    counted once), the denominator the area of the cells covered by at least one.

    Args:
        boxes_xywh: (N, 4) boxes ``[x, y, w, h]``; boxes with non-positive width or height cover
            nothing.

    Returns:
        BOR in [0, 1]; 0.0 for fewer than two boxes or an empty union.
    """
    boxes = np.asarray(boxes_xywh, dtype=np.float64).reshape(-1, 4)
    if len(boxes) < 2:
        return 0.0
    x1, y1 = boxes[:, 0], boxes[:, 1]
    x2 = x1 + np.maximum(boxes[:, 2], 0.0)
    y2 = y1 + np.maximum(boxes[:, 3], 0.0)
    xs = np.unique(np.concatenate([x1, x2]))
    ys = np.unique(np.concatenate([y1, y2]))
    if len(xs) < 2 or len(ys) < 2:
        return 0.0
    ix1, ix2 = np.searchsorted(xs, x1), np.searchsorted(xs, x2)
    iy1, iy2 = np.searchsorted(ys, y1), np.searchsorted(ys, y2)
    diff = np.zeros((len(ys), len(xs)), dtype=np.int64)
    np.add.at(diff, (iy1, ix1), 1)
    np.add.at(diff, (iy1, ix2), -1)
    np.add.at(diff, (iy2, ix1), -1)
    np.add.at(diff, (iy2, ix2), 1)
    cover = diff.cumsum(axis=0).cumsum(axis=1)[:-1, :-1]
    cell_area = np.outer(np.diff(ys), np.diff(xs))
    union = float(cell_area[cover >= 1].sum())
    if union <= 0.0:
        return 0.0
    return float(cell_area[cover >= 2].sum()) / union


@dataclass
class DatasetSamples:
    """Per-video, per-instance and per-frame samples the statistics are computed from.

    Attributes:
        frames_per_video: (V,) video lengths.
        instances_per_video: (V,) tracks per video.
        frames_per_instance: (I,) frames where each track is present.
        objects_per_frame: (F,) present objects in each frame, every frame of every video.
        bor: BOR of each frame that has at least one object.
        occlusion_counts: Count of each OVIS occlusion level over non-null labels (zeros when the
            file has no labels).
        instances_per_category: Category name -> number of tracks, in category id order.
        severe_instances: Tracks with a ``severe_occlusion`` label in at least one frame.
        unoccluded_instances: Tracks labelled ``no_occlusion`` in every frame where present.
        reappearing_instances: Tracks absent in some frame between two frames where present.
        has_annotations: False for a file without annotations (inference-only split).
        has_occlusion: True when the file carries occlusion labels.
    """

    frames_per_video: np.ndarray
    instances_per_video: np.ndarray
    frames_per_instance: np.ndarray
    objects_per_frame: np.ndarray
    bor: np.ndarray
    occlusion_counts: dict[str, int]
    instances_per_category: dict[str, int]
    severe_instances: int
    unoccluded_instances: int
    reappearing_instances: int
    has_annotations: bool
    has_occlusion: bool


def _box(track: Track, t: int) -> list[float]:
    """Box of a present object; derived from its mask where the file's box is null."""
    box = track.bboxes[t]
    if box is None:
        rle = track.rle(t)
        assert rle is not None
        return mask_utils.toBbox(rle).tolist()
    return box


def collect_samples(ann: VISAnnotations) -> DatasetSamples:
    """Gather the per-video, per-instance and per-frame samples of an annotation set."""
    frames_per_video = np.array([v.length for v in ann.videos], dtype=np.int64)
    instances_per_video = np.array([len(v.tracks) for v in ann.videos], dtype=np.int64)
    names = {c.id: c.name for c in ann.categories}
    per_category = dict.fromkeys(names.values(), 0)
    occlusion_counts = dict.fromkeys(OCCLUSION_LEVELS, 0)
    frames_per_instance, objects_per_frame, bors = [], [], []
    severe = unoccluded = reappearing = 0
    for video in ann.videos:
        boxes: list[list[list[float]]] = [[] for _ in range(video.length)]
        for track in video.tracks:
            present = track.present_frames()
            frames_per_instance.append(len(present))
            per_category[names[track.category_id]] += 1
            if present and present[-1] - present[0] + 1 > len(present):
                reappearing += 1
            for t in present:
                boxes[t].append(_box(track, t))
            if track.occlusion is not None:
                labels = [track.occlusion[t] for t in present]
                for level in labels:
                    if level is not None:
                        occlusion_counts[level] += 1
                severe += OCCLUSION_LEVELS[2] in labels
                unoccluded += bool(labels) and all(lv == OCCLUSION_LEVELS[0] for lv in labels)
        objects_per_frame.extend(len(b) for b in boxes)
        bors.extend(bor(b) for b in boxes if b)
    return DatasetSamples(
        frames_per_video=frames_per_video,
        instances_per_video=instances_per_video,
        frames_per_instance=np.array(frames_per_instance, dtype=np.int64),
        objects_per_frame=np.array(objects_per_frame, dtype=np.int64),
        bor=np.array(bors, dtype=np.float64),
        occlusion_counts=occlusion_counts,
        instances_per_category=per_category,
        severe_instances=severe,
        unoccluded_instances=unoccluded,
        reappearing_instances=reappearing,
        has_annotations=ann.has_annotations,
        has_occlusion=ann.has_occlusion,
    )


def _summary(values: np.ndarray) -> dict[str, float] | None:
    if values.size == 0:
        return None
    return {"mean": float(values.mean()), "min": float(values.min()), "max": float(values.max())}


def _fraction(count: int, total: int) -> float | None:
    return count / total if total else None


def _summarize(s: DatasetSamples) -> dict:
    instances = int(s.instances_per_video.sum())
    labels = sum(s.occlusion_counts.values())
    occlusion = None
    if s.has_occlusion and labels:
        occlusion = {level: n / labels for level, n in s.occlusion_counts.items()}
    labelled = s.has_occlusion and instances > 0
    return {
        "videos": len(s.frames_per_video),
        "instances": instances,
        "masks": int(s.objects_per_frame.sum()),
        "categories": len(s.instances_per_category),
        "frames": int(s.frames_per_video.sum()),
        "frames_per_video": _summary(s.frames_per_video),
        "frames_per_instance": _summary(s.frames_per_instance),
        "instances_per_video": _summary(s.instances_per_video) if s.has_annotations else None,
        "objects_per_frame": _summary(s.objects_per_frame) if s.has_annotations else None,
        "frames_with_objects": len(s.bor),
        "mbor": float(s.bor.mean()) if s.bor.size else None,
        "frac_frames_bor_ge_0.2": float((s.bor >= _BOR_HIGH).mean()) if s.bor.size else None,
        "occlusion_labels": labels,
        "occlusion": occlusion,
        "frac_instances_severe_once": _fraction(s.severe_instances, instances)
        if labelled
        else None,
        "frac_instances_unoccluded": _fraction(s.unoccluded_instances, instances)
        if labelled
        else None,
        "frac_instances_reappearing": _fraction(s.reappearing_instances, instances),
        "instances_per_category": dict(s.instances_per_category),
    }


def compute_stats(ann: VISAnnotations) -> dict:
    """Statistics of an annotation set (see the module docstring for the definitions).

    Args:
        ann: Loaded annotations (:func:`ovisnet.data.annotations.load_annotations`).

    Returns:
        A JSON-serialisable dict: counts ``videos``, ``instances``, ``masks``, ``categories``,
        ``frames``, ``frames_with_objects``, ``occlusion_labels``; ``{"mean", "min", "max"}``
        summaries ``frames_per_video``, ``frames_per_instance``, ``instances_per_video``,
        ``objects_per_frame``; ``mbor`` and ``frac_frames_bor_ge_0.2``; ``occlusion`` (level ->
        proportion); the instance fractions ``frac_instances_severe_once`` (severe in at least one
        frame), ``frac_instances_unoccluded`` (never occluded) and ``frac_instances_reappearing``
        (absent between two present frames); ``instances_per_category`` (name -> count). Values
        that do not exist for the file (no annotations, no occlusion labels) are None.
    """
    return _summarize(collect_samples(ann))


def plot_histograms(samples: DatasetSamples, out_dir: str | Path) -> list[Path]:
    """Write histograms of the samples as PNG files.

    Figures are drawn on matplotlib's Agg canvas directly; pyplot and the global backend are left
    alone, so this is safe to call from a notebook.

    Args:
        samples: From :func:`collect_samples`.
        out_dir: Folder for the PNG files (created if needed).

    Returns:
        The written paths, ``<name>.png`` for the names frames_per_video and, for a file with
        annotations, instances_per_video, frames_per_instance, objects_per_frame, bor,
        occlusion_levels (if labelled) and instances_per_category.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(name: str, title: str, xlabel: str, values: np.ndarray | dict[str, int]) -> None:
        fig = Figure(figsize=(6.4, 4.0))
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        if isinstance(values, dict):
            ax.bar(list(values), list(values.values()), color="tab:green")
            ax.tick_params(axis="x", labelrotation=90 if len(values) > 6 else 0)
        elif name == "bor":
            ax.hist(values, bins=np.linspace(0.0, 1.0, 21), color="tab:red", edgecolor="white")
        else:
            top = int(values.max()) if values.size else 0
            step = max(1, (top + 1) // 40)
            bins = np.arange(-0.5, top + step + 0.5, step)
            ax.hist(values, bins=bins, color="tab:blue", edgecolor="white")
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("count")
        fig.tight_layout()
        path = out / f"{name}.png"
        fig.savefig(path, dpi=100)
        written.append(path)

    save("frames_per_video", "Frames per video", "frames", samples.frames_per_video)
    if not samples.has_annotations:
        return written
    save("instances_per_video", "Instances per video", "instances", samples.instances_per_video)
    save(
        "frames_per_instance",
        "Frames per instance (present)",
        "frames",
        samples.frames_per_instance,
    )
    save("objects_per_frame", "Objects per frame", "objects", samples.objects_per_frame)
    mbor = float(samples.bor.mean()) if samples.bor.size else 0.0
    save("bor", f"BOR per frame with objects (mBOR {mbor:.3f})", "BOR", samples.bor)
    if samples.has_occlusion:
        save(
            "occlusion_levels",
            "Occlusion level per object and frame",
            "level",
            samples.occlusion_counts,
        )
    save(
        "instances_per_category",
        "Instances per category",
        "category",
        samples.instances_per_category,
    )
    return written


def _fmt_summary(summary: dict[str, float] | None) -> str:
    if summary is None:
        return "-"
    return f"{summary['mean']:.2f} (min {summary['min']:g}, max {summary['max']:g})"


def format_table(stats: dict, title: str = "") -> str:
    """Format :func:`compute_stats` output as a readable table.

    Args:
        stats: Output of :func:`compute_stats`.
        title: Optional first line.

    Returns:
        The table, one statistic per line, then the instances per category.
    """

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100.0 * value:.1f}%"

    mbor = "-" if stats["mbor"] is None else f"{stats['mbor']:.3f}"
    rows = [
        ("videos", f"{stats['videos']}"),
        ("instances", f"{stats['instances']}"),
        ("masks", f"{stats['masks']}"),
        ("categories", f"{stats['categories']}"),
        ("frames", f"{stats['frames']}"),
        ("frames / video", _fmt_summary(stats["frames_per_video"])),
        ("frames / instance", _fmt_summary(stats["frames_per_instance"])),
        ("instances / video", _fmt_summary(stats["instances_per_video"])),
        ("objects / frame", _fmt_summary(stats["objects_per_frame"])),
        ("mBOR", f"{mbor} over {stats['frames_with_objects']} frames with objects"),
        ("frames with BOR >= 0.2", pct(stats["frac_frames_bor_ge_0.2"])),
    ]
    if stats["occlusion"] is not None:
        levels = "  ".join(
            f"{level.split('_')[0]} {pct(p)}" for level, p in stats["occlusion"].items()
        )
        rows.append(("occlusion levels", f"{levels}  (of {stats['occlusion_labels']} labels)"))
    rows += [
        ("instances severe >= 1 frame", pct(stats["frac_instances_severe_once"])),
        ("instances never occluded", pct(stats["frac_instances_unoccluded"])),
        ("instances re-appearing", pct(stats["frac_instances_reappearing"])),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [title] if title else []
    lines += [f"  {name:<{width}}  {value}" for name, value in rows]
    if stats["instances"]:
        lines.append("  instances per category:")
        cat_width = max(len(name) for name in stats["instances_per_category"])
        lines += [
            f"    {name:<{cat_width}}  {count}"
            for name, count in stats["instances_per_category"].items()
        ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m ovisnet.stats ANN.json [--json OUT] [--plots DIR]``."""
    parser = argparse.ArgumentParser(
        prog="python -m ovisnet.stats",
        description="Statistics of an OVIS / YouTube-VIS annotation file (videos, instances, "
        "masks, objects per frame, BOR / mBOR, occlusion levels, instances per category).",
    )
    parser.add_argument("annotations", type=Path, help="annotation JSON file")
    parser.add_argument("--json", type=Path, help="also write the statistics to this JSON file")
    parser.add_argument("--plots", type=Path, help="write histograms (PNG) into this folder")
    args = parser.parse_args(argv)
    try:
        ann = load_annotations(args.annotations)
    except (FileNotFoundError, AnnotationError) as e:
        parser.error(str(e))
    samples = collect_samples(ann)
    stats = _summarize(samples)
    print(format_table(stats, title=f"Statistics of {args.annotations}"))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(stats, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.plots is not None:
        paths = plot_histograms(samples, args.plots)
        print(f"wrote {len(paths)} histograms to {args.plots}")


if __name__ == "__main__":
    main()
