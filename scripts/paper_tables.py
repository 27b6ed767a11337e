"""The papers' comparisons on our synthetic data: ``make paper-tables``.

Trains each model family's CPU preset (one run per row and seed, cached), evaluates every row on
the synthetic val split and on a second synthetic set generated with another seed, and writes
``docs/paper_tables.md`` plus a bar chart PNG:

* OVIS Table 2 layout: MaskTrack, CMaskTrack, SipMask, CSipMask, STEm-Seg (AP, AP50, AP75, AR1,
  AR10, AP_SO, AP_MO, AP_HO), with the OVIS paper's real-OVIS validation AP beside them;
* OVIS Fig. 8: CMaskTrack with the ``calibration``, ``difference`` and ``add`` fusions;
* the oracle row (ground truth fed to the tracker, CMaskTrack's checkpoint);
* YouTube-VIS Table 1: ``tracker=masktrack|iou|deepsort|seq`` on MaskTrack's detections;
* YouTube-VIS Table 2: Eq. 3 with the score, IoU or category cue turned off.

Every finished row (a training run, an evaluation) is recorded in ``<work>/rows.json`` with its
wall time, so a killed run continues from its last finished row, and the report states the total
compute time on this machine, resumed or not. ``--seeds 0 1 2`` repeats every training row
(mean ± half the min-max spread over seeds).

Usage:
    python scripts/paper_tables.py                    # seed 0, docs/paper_tables.md
    python scripts/paper_tables.py --seeds 0 1 --work outputs/paper_tables
    python scripts/paper_tables.py --report-only      # rewrite the report from rows.json
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
METRICS = ("AP", "AP50", "AP75", "AR1", "AR10", "AP_SO", "AP_MO", "AP_HO")
SECOND_SET = {"seed": 1, "num_videos": 24, "valid_fraction": 0.84}
"""The second synthetic set: the independent set the README's figures use (20 valid videos)."""


@dataclass(frozen=True)
class Training:
    """A training row: a CPU preset plus overrides."""

    name: str
    experiment: str
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class Evaluation:
    """An evaluation row: a training row's checkpoint with evaluation-time overrides."""

    name: str
    training: str
    overrides: tuple[str, ...] = ()


NO_CALIBRATION = ("model.calibration=null", "system.lr_mult=null")
TRAININGS = (  # in run order: the rows most other rows compare against first
    Training("CMaskTrack R-CNN", "cmasktrack_cpu"),
    Training("MaskTrack R-CNN", "cmasktrack_cpu", NO_CALIBRATION),
    Training("SipMask-VIS", "csipmask_cpu", NO_CALIBRATION),
    Training("CSipMask", "csipmask_cpu"),
    Training("STEm-Seg", "stemseg_cpu"),
    Training(
        "CMaskTrack R-CNN, difference", "cmasktrack_cpu", ("model.calibration.fusion=difference",)
    ),
    # `add` has no offset branch, hence nothing for the preset's lr_mult to slow down
    Training(
        "CMaskTrack R-CNN, add",
        "cmasktrack_cpu",
        ("model.calibration.fusion=add", "system.lr_mult=null"),
    ),
)
FEATURES_FUSION = "CMaskTrack R-CNN, reference_fusion=features"
TABLE2 = ("MaskTrack R-CNN", "CMaskTrack R-CNN", "SipMask-VIS", "CSipMask", "STEm-Seg")
FIG8 = {
    "calibration": "CMaskTrack R-CNN",
    "difference": "CMaskTrack R-CNN, difference",
    "add": "CMaskTrack R-CNN, add",
}
TRACKERS = {
    "MaskTrack (learned, Eq. 3)": "masktrack",
    "IoUTracker+": "iou",
    "DeepSORT": "deepsort",
    "DeepSORT, motion noise fitted on train": "deepsort",
    "SeqTracker": "seq",
}
FIT_DEEPSORT = "<DeepSORT's motion noise fitted on the train split>"
"""An override placeholder, replaced at evaluation time by :func:`deepsort_fitted_overrides`."""
# tracker=NAME replaces the run's system.tracker whole; the trackers that score with Eq. 3 keep
# the CPU presets' IoU weight (beta = 5, conf/experiment/cmasktrack_cpu.yaml) so that the rows
# differ by the tracker only. DeepSORT has no Eq. 3 weights.
TRACKER_EXTRA = {
    "iou": ("system.tracker.weights.iou=5",),
    "seq": ("system.tracker.weights.iou=5",),
    "deepsort": (),
}
CUES = {
    "all cues (Eq. 3)": (),
    "without det score": ("system.tracker.weights.det_score=0",),
    "without box IoU": ("system.tracker.weights.iou=0",),
    "without category": ("system.tracker.weights.label=0",),
}
EVALUATIONS = (
    *(Evaluation(t.name, t.name) for t in TRAININGS),
    Evaluation("CMaskTrack R-CNN, oracle", "CMaskTrack R-CNN", ("system.oracle=true",)),
    *(
        Evaluation(
            f"tracker: {label}",
            "MaskTrack R-CNN",
            (
                f"tracker={name}",
                *TRACKER_EXTRA[name],
                *((FIT_DEEPSORT,) if "fitted" in label else ()),
            ),
        )
        for label, name in TRACKERS.items()
        if name != "masktrack"
    ),
    *(
        Evaluation(f"cues: {label}", "MaskTrack R-CNN", overrides)
        for label, overrides in CUES.items()
        if overrides
    ),
    # not a paper table: ovisnet's fast inference mode (README, "reference_fusion"), same checkpoint
    Evaluation(FEATURES_FUSION, "CMaskTrack R-CNN", ("model.reference_fusion=features",)),
)
# report label -> ledger row: MaskTrack's own tracker / all cues is the MaskTrack R-CNN row
TRACKER_ROWS = {
    k: ("MaskTrack R-CNN" if v == "masktrack" else f"tracker: {k}") for k, v in TRACKERS.items()
}
CUE_ROWS = {k: ("MaskTrack R-CNN" if not v else f"cues: {k}") for k, v in CUES.items()}
PAPER_OVIS_VAL = {  # OVIS paper, Table 2, OVIS validation set (R50), real OVIS: not our data
    "MaskTrack R-CNN": 10.9,
    "CMaskTrack R-CNN": 14.9,
    "SipMask-VIS": 10.3,
    "CSipMask": 13.9,
    "STEm-Seg": 13.8,
}
PAPER_YTVIS_TABLE1 = {  # YouTube-VIS paper, Table 1, YouTube-VIS validation AP: not our data
    "MaskTrack (learned, Eq. 3)": 30.2,
    "IoUTracker+": 23.6,
    "DeepSORT": 26.1,
    "SeqTracker": 27.5,
}


@dataclass
class Ledger:
    """``rows.json``: every finished step with its result and wall time (resumable)."""

    path: Path
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Ledger:
        rows = json.loads(path.read_text()) if path.is_file() else {}
        return cls(path, rows)

    def done(self, key: str) -> bool:
        return key in self.rows

    def record(self, key: str, value: dict[str, Any]) -> None:
        self.rows[key] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.rows, indent=1, sort_keys=True))
        tmp.replace(self.path)  # atomic: a kill never leaves a half-written ledger

    def seconds(self, seeds: list[int] | None = None) -> float:
        """Wall seconds summed over the finished rows (of ``seeds`` only, when given)."""
        return sum(
            float(r.get("seconds", 0.0))
            for key, r in self.rows.items()
            if seeds is None or int(key.rsplit("|", 1)[1]) in seeds
        )


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_")


def ensure_sets(data_root: Path, second_root: Path) -> None:
    """Generate the synthetic set (``make synthetic``'s defaults) and the second set if absent."""
    from ovisnet.data.synthetic import generate

    if not (data_root / "annotations" / "valid.json").is_file():
        print(f"generating the synthetic set in {data_root}", flush=True)
        generate(data_root, seed=0)
    if not (second_root / "annotations" / "valid.json").is_file():
        print(f"generating the second set (seed {SECOND_SET['seed']}) in {second_root}", flush=True)
        generate(second_root, **SECOND_SET)


def train_row(training: Training, seed: int, work: Path, data_root: Path) -> dict[str, Any]:
    """Run ``python -m ovisnet.train`` for one row and seed; its last checkpoint. A training
    killed part-way (its ``last.ckpt``, written every ``checkpoint_every_n_steps`` steps, is there
    but the ledger has no row) continues from that checkpoint."""
    run_dir = work / "runs" / f"{slug(training.name)}_seed{seed}"
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    cmd = [
        sys.executable,
        "-m",
        "ovisnet.train",
        f"experiment={training.experiment}",
        *training.overrides,
        f"seed={seed}",
        f"data.root={data_root}",
        "evaluate_after_training=false",
        f"hydra.run.dir={run_dir}",
    ]
    if ckpt.is_file():
        print(f"  resuming from {ckpt}", flush=True)
        cmd.append(f"ckpt_path={ckpt}")
    log = run_dir.parent / f"{run_dir.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        proc = subprocess.run(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-20:])
        raise RuntimeError(f"training {training.name} (seed {seed}) failed; {log}:\n{tail}")
    if not ckpt.is_file():
        raise RuntimeError(f"training {training.name} wrote no {ckpt}")
    return {"ckpt": str(ckpt), "command": " ".join(cmd[2:])}


def evaluate_row(ckpt: str, root: Path, overrides: tuple[str, ...], out: Path) -> dict[str, Any]:
    """``python -m ovisnet.eval`` of a checkpoint on the val split of ``root``: its percent
    ``metrics`` and the ``timing`` of streamed inference (ms per frame)."""
    cmd = [
        sys.executable,
        "-m",
        "ovisnet.eval",
        f"ckpt_path={ckpt}",
        f"output_dir={out}",
        f"data.root={root}",
        *overrides,
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd[2:])} failed:\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}"
        )
    summary = json.loads((out / "metrics.json").read_text())
    return {"metrics": summary["metrics"], "timing": summary.get("timing", {})}


def plan(seeds: list[int], rows: list[str] | None = None) -> list[tuple[str, Any]]:
    """Every step of a run as ``(ledger key, spec)``, in run order: each training, then the
    evaluations of its checkpoint on both sets, so that a partial run fills whole rows.

    ``rows`` (``--rows``) keeps only the named evaluation rows and the trainings they need: a
    training's own row has the training's name, so ``["SipMask-VIS", "CSipMask"]`` is those two
    trainings and their evaluations, without the tracker or cue rows of other checkpoints.
    """
    evaluations = EVALUATIONS
    if rows is not None:
        known = [e.name for e in EVALUATIONS]
        unknown = [r for r in rows if r not in known]
        if unknown:
            raise SystemExit(f"--rows: unknown row(s) {unknown}; the rows are: {known}")
        evaluations = tuple(e for e in EVALUATIONS if e.name in rows)
    needed = {e.training for e in evaluations}
    steps: list[tuple[str, Any]] = []
    for seed in seeds:
        for t in TRAININGS:
            if t.name not in needed:
                continue
            steps.append((f"train|{t.name}|{seed}", (t, seed)))
            for e in evaluations:
                if e.training != t.name:
                    continue
                for set_name in ("val", "second"):
                    steps.append((f"eval|{e.name}|{set_name}|{seed}", (e, set_name, seed)))
    return steps


@functools.cache
def deepsort_fitted_overrides(data_root: Path) -> tuple[str, ...]:
    """DeepSORT's noise scaled until its 0.95 gate admits 95 % of the true re-detections of the
    *train* split's ground truth (``python -m ovisnet.tracking.fit_deepsort``), as overrides."""
    from ovisnet.tracking.deepsort import annotation_tracks, fit_noise_scale, noise_overrides

    scale, _ = fit_noise_scale(annotation_tracks(str(data_root / "annotations" / "train.json")))
    return tuple(f"system.tracker.{k}={v:g}" for k, v in noise_overrides(scale).items())


def run(args: argparse.Namespace) -> Ledger:
    work = Path(args.work)
    ledger = Ledger.load(work / "rows.json")
    data_root, second_root = Path(args.data), work / "second_set"
    ensure_sets(data_root, second_root)
    sets = {"val": data_root, "second": second_root}
    trainings = {t.name: t for t in TRAININGS}
    steps = plan(args.seeds, args.rows)
    total = len(steps)
    start_all = time.perf_counter()
    for i, (key, spec) in enumerate(steps, 1):
        if ledger.done(key):
            continue
        started = time.perf_counter()
        elapsed = time.perf_counter() - start_all
        print(
            f"[{i}/{total}] {key.replace('|', ' / ')} (this session {elapsed / 60:.1f} min)",
            flush=True,
        )
        if key.startswith("train|"):
            training, seed = spec
            result = train_row(training, seed, work, data_root)
        else:
            evaluation, set_name, seed = spec
            ckpt = ledger.rows[f"train|{trainings[evaluation.training].name}|{seed}"]["ckpt"]
            out = work / "eval" / f"{slug(evaluation.name)}_{set_name}_seed{seed}"
            overrides = evaluation.overrides
            if FIT_DEEPSORT in overrides:
                fitted = deepsort_fitted_overrides(data_root)
                overrides = tuple(o for o in overrides if o != FIT_DEEPSORT) + fitted
            result = evaluate_row(ckpt, sets[set_name], overrides, out)
            result["overrides"] = list(overrides)
        result["seconds"] = time.perf_counter() - started
        ledger.record(key, result)
    return ledger


# -- the report ---------------------------------------------------------------------------------


def entries(ledger: Ledger, prefix: str, seeds: list[int]) -> list[dict]:
    """The finished ledger rows ``f"{prefix}|{seed}"`` of ``seeds``, in seed order."""
    keys = (f"{prefix}|{seed}" for seed in seeds)
    return [ledger.rows[key] for key in keys if key in ledger.rows]


def metric(ledger: Ledger, row: str, set_name: str, key: str, seeds: list[int]) -> list[float]:
    return [
        float(e["metrics"][key])
        for e in entries(ledger, f"eval|{row}|{set_name}", seeds)
        if key in e["metrics"]
    ]


def cell(values: list[float]) -> str:
    """``mean`` or ``mean ± half-range`` (several seeds); ``n/a`` for a group without ground truth
    (the evaluator's -1) and ``-`` for a row not run."""
    if not values:
        return "-"
    if any(v < 0 for v in values):
        return "n/a"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {(max(values) - min(values)) / 2:.2f}"


def table(
    ledger: Ledger,
    rows: dict[str, str],
    set_name: str,
    seeds: list[int],
    keys: tuple[str, ...] = METRICS,
    side: dict[str, float] | None = None,
    side_label: str = "",
) -> str:
    head = ["", *keys, *([side_label] if side else [])]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, row in rows.items():
        cells = [cell(metric(ledger, row, set_name, k, seeds)) for k in keys]
        if side:
            cells.append(f"{side[label]:.1f}" if label in side else "-")
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return "\n".join(lines)


def paired_diffs(
    ledger: Ledger, a: str, b: str, set_name: str, key: str, seeds: list[int]
) -> list[float]:
    """``a`` minus ``b`` for each seed that finished both rows (seeds are never mixed)."""
    diffs = []
    for seed in seeds:
        va, vb = metric(ledger, a, set_name, key, [seed]), metric(ledger, b, set_name, key, [seed])
        if va and vb:
            diffs.append(va[0] - vb[0])
    return diffs


def compare(ledger: Ledger, a: str, b: str, seeds: list[int], key: str = "AP") -> str:
    """``a`` minus ``b`` on both sets, with the per-seed spread, as a sentence fragment."""
    parts = []
    for set_name, label in (("val", "val"), ("second", "second set")):
        diffs = paired_diffs(ledger, a, b, set_name, key, seeds)
        if not diffs:
            parts.append(f"{label}: not run")
            continue
        spread = f", per seed {min(diffs):+.2f} to {max(diffs):+.2f}" if len(diffs) > 1 else ""
        parts.append(f"{label} {statistics.fmean(diffs):+.2f}{spread}")
    return "; ".join(parts)


def holds(ledger: Ledger, a: str, b: str, seeds: list[int], key: str = "AP") -> str:
    """``holds`` when ``a`` beats ``b`` on both sets for every seed, ``does not hold`` when it
    never does, ``no difference`` when they are equal everywhere, ``mixed`` otherwise."""
    diffs = []
    for set_name in ("val", "second"):
        diffs += paired_diffs(ledger, a, b, set_name, key, seeds)
    if not diffs:
        return "not run"
    if all(d == 0 for d in diffs):
        return "no difference"
    return (
        "holds"
        if all(d > 0 for d in diffs)
        else "does not hold"
        if all(d <= 0 for d in diffs)
        else "mixed"
    )


def _ms_per_frame(entries: list[dict]) -> str:
    ms = [e["timing"]["ms_per_frame"] for e in entries if e.get("timing")]
    return f"{statistics.fmean(ms):.0f}" if ms else "-"


def fusion_table(ledger: Ledger, seeds: list[int]) -> str:
    """AP, AP_HO, streamed inference ms/frame and evaluation wall time of
    ``reference_fusion=predictions|features``."""
    rows = {"predictions (papers)": "CMaskTrack R-CNN", "features (fast)": FEATURES_FUSION}
    keys = ("AP", "AP_HO", "ms/frame", "eval s")
    head = ["fusion", *(f"{k} {s}" for s in ("val", "second") for k in keys)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, row in rows.items():
        cells = [label]
        for set_name in ("val", "second"):
            cells += [cell(metric(ledger, row, set_name, k, seeds)) for k in ("AP", "AP_HO")]
            done = entries(ledger, f"eval|{row}|{set_name}", seeds)
            secs = [float(e["seconds"]) for e in done]
            cells.append(_ms_per_frame(done))
            cells.append(f"{statistics.fmean(secs):.0f}" if secs else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cost_table(ledger: Ledger, seeds: list[int], trainings: tuple[Training, ...]) -> str:
    """What each training row cost on this machine: its preset, its training wall minutes (the
    ledger's, of the run that finished it) and its streamed inference ms/frame on both sets."""
    head = ["", "preset", "training min", "ms/frame val", "ms/frame second"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for training in trainings:
        secs = [float(e["seconds"]) for e in entries(ledger, f"train|{training.name}", seeds)]
        cells = [training.name, f"`{' '.join((training.experiment, *training.overrides))}`"]
        cells.append(f"{statistics.fmean(secs) / 60:.0f}" if secs else "-")
        cells += [
            _ms_per_frame(entries(ledger, f"eval|{training.name}|{s}", seeds))
            for s in ("val", "second")
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_chart(ledger: Ledger, seeds: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = {
        "OVIS Table 2": {k: k for k in TABLE2},
        "Fig. 8 fusion": {k: v for k, v in FIG8.items()},
        "Trackers": TRACKER_ROWS,
        "Eq. 3 cues": CUE_ROWS,
    }
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 4.2))
    for ax, (title, rows) in zip(axes, groups.items(), strict=True):
        labels = list(rows)
        x = range(len(labels))
        for offset, (set_name, color) in enumerate((("val", "#4c72b0"), ("second", "#dd8452"))):
            means, errs = [], []
            for label in labels:
                values = metric(ledger, rows[label], set_name, "AP", seeds)
                means.append(statistics.fmean(values) if values else math.nan)
                errs.append((max(values) - min(values)) / 2 if len(values) > 1 else 0.0)
            ax.bar(
                [i + 0.38 * offset for i in x],
                means,
                0.38,
                yerr=errs,
                color=color,
                label="val split" if set_name == "val" else "second set",
            )
        ax.set_xticks([i + 0.19 for i in x], labels, rotation=35, ha="right", fontsize=8)
        ax.set_title(title)
        ax.set_ylabel("video AP (%)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", ncol=len(labels), fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.93))  # room above the titles for the legend
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(ledger: Ledger, seeds: list[int], out: Path) -> None:
    chart = out.with_suffix(".png")
    write_chart(ledger, seeds, chart)
    hours = ledger.seconds(seeds) / 3600
    seeds_text = ", ".join(map(str, seeds))
    missing = [key for key, _ in plan(seeds) if not ledger.done(key)]
    trainings_left = [
        k.split("|")[1] + (f" (seed {k.split('|')[2]})" if len(seeds) > 1 else "")
        for k in missing
        if k.startswith("train|")
    ]
    sections = [
        "# The papers' comparisons on synthetic data",
        "",
        f"Written by `make paper-tables` (`scripts/paper_tables.py`). Every figure below was "
        f"measured on **synthetic** occlusion videos (`ovisnet.data.synthetic`), not on OVIS or "
        f"YouTube-VIS: the CPU presets (`*_cpu`) trained on the synthetic train split, evaluated "
        f"on its val split (12 videos) and on a second set generated with seed "
        f"{SECOND_SET['seed']} ({SECOND_SET['num_videos']} videos, "
        f"{round(SECOND_SET['num_videos'] * SECOND_SET['valid_fraction'])} of them in its val "
        f"split). Seeds: {seeds_text}; with several seeds a cell is mean ± half the min-max "
        f"spread over the seeds that finished its row (a cell without ± is one seed), and a "
        f"claim compares two rows seed by seed. Compute: {hours:.2f} h of wall time on this "
        f"machine ({platform.machine()}, {os.cpu_count()} CPUs), summed over the finished rows "
        f"of these seeds.",
        "",
        f"![AP per row](./{chart.name})",
        "",
    ]
    if missing:
        sections[-2:-2] = [
            f"**Partial run:** {len(missing)} of {len(plan(seeds))} steps are not finished "
            f"(trainings left: {'; '.join(trainings_left) or 'none'}); a cell no seed finished "
            f"reads `-`, a claim no seed finished reads `not run`. `make paper-tables` "
            f"continues from here.",
            "",
        ]
    for set_name, label in (("val", "val split"), ("second", "second set")):
        sections += [
            f"## OVIS Table 2 layout ({label})",
            "",
            table(
                ledger,
                {k: k for k in TABLE2},
                set_name,
                seeds,
                side=PAPER_OVIS_VAL,
                side_label="paper, real OVIS val AP",
            ),
            "",
        ]
    sections += [
        "The last column is the OVIS paper's Table 2 (R50, real OVIS validation set), for "
        "reference only: those are not our figures.",
        "",
        "What each training row cost here. The CPU presets have different schedules (each fits "
        "its family into a short CPU budget), so the rows compare presets, not architectures "
        "at equal compute:",
        "",
        cost_table(ledger, seeds, TRAININGS),
        "",
        "## OVIS Fig. 8: fusion of the reference features",
        "",
        "CMaskTrack R-CNN trained three times, the calibrated reference features fused into "
        "the query features by `model.calibration.fusion=calibration|difference|add`.",
        "",
    ]
    for set_name in ("val", "second"):
        sections += [
            f"{'Val split' if set_name == 'val' else 'Second set'}:",
            "",
            table(ledger, FIG8, set_name, seeds, keys=("AP", "AP_HO")),
            "",
        ]
    sections += [
        "## Oracle: the ground truth fed to the tracker (CMaskTrack R-CNN's checkpoint)",
        "",
        table(
            ledger,
            {"CMaskTrack R-CNN": "CMaskTrack R-CNN", "oracle": "CMaskTrack R-CNN, oracle"},
            "val",
            seeds,
            keys=("AP", "AP50", "AP75", "AP_HO"),
        ),
        "",
        "## Inference option, not a paper table: `model.reference_fusion`",
        "",
        "The same CMaskTrack R-CNN checkpoint evaluated with the papers' rule (`predictions`: "
        "heads once per reference, predictions averaged) and with ovisnet's fast mode "
        "(`features`: calibrated maps averaged, heads once). ms/frame is the streamed "
        "inference (model, tracker, masks) per frame as `ovisnet.eval` reports it; eval s is "
        "the whole `ovisnet.eval` call (model build, data loading, inference, scoring), run "
        "alone on this machine, one after the other.",
        "",
        fusion_table(ledger, seeds),
        "",
        "## YouTube-VIS Table 1: trackers on MaskTrack R-CNN's detections",
        "",
    ]
    for set_name in ("val", "second"):
        sections += [
            f"{'Val split' if set_name == 'val' else 'Second set'}:",
            "",
            table(
                ledger,
                TRACKER_ROWS,
                set_name,
                seeds,
                keys=("AP", "AP50", "AP75", "AR1", "AR10"),
                side=PAPER_YTVIS_TABLE1,
                side_label="paper, YouTube-VIS val AP",
            ),
            "",
        ]
    sections += [
        "## YouTube-VIS Table 2: the cues of Eq. 3",
        "",
    ]
    for set_name in ("val", "second"):
        sections += [
            f"{'Val split' if set_name == 'val' else 'Second set'}:",
            "",
            table(ledger, CUE_ROWS, set_name, seeds, keys=("AP", "AP50", "AP75")),
            "",
        ]
    claims = [
        ("Calibration beats plain MaskTrack R-CNN", "CMaskTrack R-CNN", "MaskTrack R-CNN", "AP"),
        ("… and on heavy occlusion (AP_HO)", "CMaskTrack R-CNN", "MaskTrack R-CNN", "AP_HO"),
        ("Calibration beats plain SipMask-VIS", "CSipMask", "SipMask-VIS", "AP"),
        ("… and on heavy occlusion (AP_HO)", "CSipMask", "SipMask-VIS", "AP_HO"),
        (
            "Calibration beats the difference fusion",
            "CMaskTrack R-CNN",
            "CMaskTrack R-CNN, difference",
            "AP",
        ),
        ("Difference beats add", "CMaskTrack R-CNN, difference", "CMaskTrack R-CNN, add", "AP"),
        (
            "Calibration beats add (the paper: add is the poorest)",
            "CMaskTrack R-CNN",
            "CMaskTrack R-CNN, add",
            "AP",
        ),
        ("The learned tracker beats IoUTracker+", "MaskTrack R-CNN", "tracker: IoUTracker+", "AP"),
        ("The learned tracker beats DeepSORT", "MaskTrack R-CNN", "tracker: DeepSORT", "AP"),
        (
            "… and DeepSORT with its motion noise fitted on train",
            "MaskTrack R-CNN",
            "tracker: DeepSORT, motion noise fitted on train",
            "AP",
        ),
        ("The learned tracker beats SeqTracker", "MaskTrack R-CNN", "tracker: SeqTracker", "AP"),
        (
            "The box-IoU cue matters (all cues beat without IoU)",
            "MaskTrack R-CNN",
            "cues: without box IoU",
            "AP",
        ),
        ("The category cue matters", "MaskTrack R-CNN", "cues: without category", "AP"),
        (
            "The score cue matters (the paper: only slightly)",
            "MaskTrack R-CNN",
            "cues: without det score",
            "AP",
        ),
    ]
    sections += [
        "## The papers' claims on our data (computed)",
        "",
        "A claim holds when the first row beats the second on both sets for every seed, does not "
        "hold when it never does, and is mixed otherwise; differences are in points.",
        "",
        "| claim | verdict | first − second |",
        "|---|---|---|",
    ]
    for text, a, b, key in claims:
        verdict, diff = holds(ledger, a, b, seeds, key), compare(ledger, a, b, seeds, key)
        sections.append(f"| {text} | {verdict} | {key}: {diff} |")
    notes = REPO / "docs" / "paper_tables_reading.md"
    if notes.is_file():
        sections += ["", notes.read_text().strip()]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(sections) + "\n")
    print(f"report: {out}\nchart:  {chart}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--work", default=str(REPO / "outputs" / "paper_tables"))
    parser.add_argument("--data", default=str(REPO / "data" / "synthetic"))
    parser.add_argument("--out", default=str(REPO / "docs" / "paper_tables.md"))
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite the report from rows.json"
    )
    parser.add_argument(
        "--rows",
        nargs="+",
        metavar="ROW",
        help="run only these evaluation rows and the trainings they need (e.g. --seeds 0 1 "
        "--rows SipMask-VIS CSipMask); the report still covers every row",
    )
    args = parser.parse_args(argv)
    ledger = Ledger.load(Path(args.work) / "rows.json") if args.report_only else run(args)
    write_report(ledger, args.seeds, Path(args.out))


if __name__ == "__main__":
    main()
