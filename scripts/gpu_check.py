"""One GPU check for the day a GPU is lent: one markdown report, within a time budget.

Sections (each one runs in a ``try``; a failure is written into the report as FAIL with its
error and the run goes on):

1. ``correlation``: the native CUDA correlation op against the native CPU op, forward and both
   gradients (float32; CMaskTrack's C=256, patch 16, dilation_patch 2 at P3 45x80 and P2
   90x160, and small odd shapes), max abs / relative error; ``torch.autograd.gradcheck`` in
   float64 on CUDA; the time of the (first, JIT) native build.
2. ``pytest``: ``python -m pytest -m gpu -q`` in a subprocess: summary line, short tracebacks.
3. ``inference``: ms/frame, frames/s and peak GPU memory of every family at 640x360 (R50-FPN,
   random weights, 25 classes) built from the Hydra experiments and streamed through the
   family's predictor (``VISSystem.make_predictor``): MaskTrack R-CNN, CMaskTrack R-CNN
   (``reference_fusion`` predictions and features), SipMask-VIS, CSipMask, STEm-Seg; float32
   and bf16 autocast. Score thresholds 0 (the box families keep 100 detections per frame);
   STEm-Seg with every pixel foreground and a seed candidate (30 clusters per sub-clip).
4. ``training``: 100 steps of every ``*_cpu`` preset on the GPU (bf16-mixed, the presets'
   precision) on a synthetic set, no validation, CSV logger; first-10 vs last-10 mean of
   ``train/loss``, finite or not, falling or not, steps/s, peak GPU memory.
5. ``bench``: ``scripts/bench_correlation.py`` at P3 / P2 (its table), with the native
   forward's share of the device's memory bandwidth (the theoretical peak when the card
   reports its memory clock and bus width, else a measured device-to-device copy).

The header gives the device, driver, CUDA / torch versions, the git commit and the wall time.
The report is rewritten after every section, so a killed run still leaves what it measured.

Time: a global budget (``--budget-s``, default 450 s, so that the run with its start-up fits in
8 minutes) is checked before every section, inference model and training preset; what no longer
fits is skipped with a note, and every subprocess (tests, training runs, bench) is killed at the
budget's end. Expected on an H200: correlation ~10 s plus the first native build (nvcc, ~1-2
min, cached afterwards), gpu tests ~30 s (capped at 120 s), inference ~60-90 s, training ~3 x
30 s (each capped at 110 s), bench ~30 s (capped at 120 s).

Exit status 0 when nothing failed, 1 when a section failed (the report is written either way).
Without a CUDA device the script prints one line and exits 0 without writing anything;
``--cpu-smoke`` runs sections 3 and 4 on the CPU at tiny sizes (the plumbing, not the numbers).

Usage:
    python scripts/gpu_check.py                          # all sections, report path printed
    python scripts/gpu_check.py --out report.md --budget-s 300
    python scripts/gpu_check.py --sections correlation inference
    python scripts/gpu_check.py --cpu-smoke              # sections 3-4 on the CPU, tiny sizes
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
sys.path.insert(0, str(SCRIPTS))  # the bench_* helpers, imported where they are used

SKIP_LINE = (
    "gpu-check: skipped: no CUDA device (torch.cuda.is_available() is False); nothing was measured"
)
SECTIONS = ("correlation", "pytest", "inference", "training", "bench")
SMOKE_SECTIONS = ("inference", "training")
TITLES = {
    "correlation": "1. Correlation op: CUDA vs CPU, gradcheck",
    "pytest": "2. GPU-marked tests",
    "inference": "3. Inference speed per family",
    "training": "4. Training steps of the CPU presets",
    "bench": "5. Correlation benchmark and memory bandwidth",
}
# seconds a section needs at least to start (it is skipped when less is left)
NEEDS = {"correlation": 20.0, "pytest": 20.0, "inference": 40.0, "training": 40.0, "bench": 25.0}
PYTEST_CAP_S = 120.0  # the gpu tests' subprocess
BENCH_CAP_S = 120.0  # bench_correlation.py's subprocess
TRAIN_CAP_S = 110.0  # one preset's training subprocess
TRAIN_NEED_S = 25.0  # a preset is skipped below this
MODEL_NEED_S = 12.0  # an inference model is skipped below this
REL_TOL = 1e-4  # correlation: max |cuda - cpu| / max |cpu|
TAIL_CHARS = 3000  # truncation of error output in the report


# -- report and budget (pure helpers) ----------------------------------------------------------
@dataclass
class Section:
    """One report section: status (PASS / FAIL / SKIPPED), seconds, markdown lines, notes."""

    title: str
    status: str = "NOT RUN"
    seconds: float = 0.0
    lines: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *lines: str) -> None:
        """Append markdown lines to the body."""
        self.lines.extend(lines)

    def fail(self, reason: str) -> None:
        """Mark a failed check (the section goes on; its status becomes FAIL)."""
        self.failures.append(reason)

    def note(self, text: str) -> None:
        """A remark shown under the status (e.g. parts skipped for the budget)."""
        self.notes.append(text)

    def finish(self, error: BaseException | None = None) -> None:
        """Set the status from the failures and an uncaught ``error`` (its traceback kept)."""
        if error is not None:
            self.fail(f"{type(error).__name__}: {error}")
            self.add("", "Traceback (last lines):", "", fenced(tail(format_error(error))))
        self.status = "FAIL" if self.failures else "PASS"

    def summary(self) -> str:
        """The first failure, else the first note, for the summary table."""
        return one_line((self.failures or self.notes or [""])[0], 160)

    def to_markdown(self) -> str:
        """``## title``, the status line, failures, notes, then the body."""
        out = [f"## {self.title}", "", f"**{self.status}** ({self.seconds:.1f} s)", ""]
        out += [f"- FAIL: {one_line(f)}" for f in self.failures]
        out += [f"- note: {one_line(n)}" for n in self.notes]
        if self.failures or self.notes:
            out.append("")
        out += self.lines
        return "\n".join(out).rstrip() + "\n"


def one_line(text: str, limit: int = 1000) -> str:
    """``text`` with its whitespace runs (newlines included) made single spaces, cut."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def format_error(error: BaseException) -> str:
    """The traceback of ``error`` as text."""
    return "".join(traceback.format_exception(type(error), error, error.__traceback__))


def tail(text: str, limit: int = TAIL_CHARS) -> str:
    """The last ``limit`` characters of ``text``, marked when cut."""
    return text if len(text) <= limit else "[... truncated ...]\n" + text[-limit:]


def fenced(text: str, lang: str = "text") -> str:
    """``text`` in a fenced code block."""
    return f"```{lang}\n{text.rstrip()}\n```"


def render_report(header: Sequence[str], sections: Sequence[Section]) -> str:
    """The whole markdown report: title, header bullets, summary table, sections."""
    from bench_inference import markdown_table

    rows = [[s.title, s.status, f"{s.seconds:.1f}", s.summary() or "-"] for s in sections]
    parts = [
        "# ovisnet GPU check",
        "",
        *(f"- {line}" for line in header),
        "",
        "## Summary",
        "",
        markdown_table(["section", "status", "seconds", "first failure / note"], rows),
        "",
    ]
    parts += [s.to_markdown() for s in sections]
    return "\n".join(parts)


class Budget:
    """A global wall-time budget: what is left, whether a part fits, subprocess timeouts.

    Args:
        total_s: seconds for the whole run.
        clock: monotonic clock (injectable for tests).
    """

    def __init__(self, total_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.total_s = total_s
        self.clock = clock
        self.start = clock()

    def elapsed(self) -> float:
        """Seconds since the start."""
        return self.clock() - self.start

    def remaining(self) -> float:
        """Seconds left (0 once spent)."""
        return max(0.0, self.total_s - self.elapsed())

    def allows(self, need_s: float) -> bool:
        """Whether at least ``need_s`` seconds are left."""
        return self.remaining() >= need_s

    def timeout(self, cap_s: float) -> float:
        """A subprocess timeout: ``cap_s``, but never past the budget (at least 1 s)."""
        return max(1.0, min(cap_s, self.remaining()))

    def skip_note(self, what: str, need_s: float) -> str:
        """The note written when ``what`` does not fit."""
        return (
            f"{what} skipped: {self.remaining():.0f} s left of the {self.total_s:.0f} s budget, "
            f"needs ~{need_s:.0f} s"
        )


def run_section(
    report: Report, name: str, budget: Budget, need_s: float, body: Callable[[Section], None]
) -> Section:
    """Run ``body`` as report section ``name`` unless the budget is spent; never raises.

    The report file is rewritten afterwards, so a killed run keeps the sections done.
    """
    section = Section(TITLES[name])
    report.sections.append(section)
    if not budget.allows(need_s):
        section.status = "SKIPPED"
        section.note(budget.skip_note("section", need_s))
        report.write()
        return section
    start = time.perf_counter()
    error: BaseException | None = None
    try:
        body(section)
    except Exception as exc:  # recorded in the report; the next section still runs
        error = exc
    section.seconds = time.perf_counter() - start
    section.finish(error)
    report.write()
    print(f"gpu-check: {section.title}: {section.status} ({section.seconds:.0f} s)", flush=True)
    return section


@dataclass
class Report:
    """The report file: header lines, the sections run so far, and the wall time once done."""

    path: Path
    header: list[str]
    sections: list[Section] = field(default_factory=list)
    wall_line: str = "total wall time: (run in progress, or stopped before its end)"

    def write(self) -> None:
        """(Re)write the markdown file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(render_report([*self.header, self.wall_line], self.sections))


# -- loss trend, step rate, pytest output (pure helpers) ---------------------------------------
@dataclass(frozen=True)
class LossTrend:
    """``train/loss`` over a run: first and last window means, finiteness, direction."""

    steps: int
    window: int
    first_mean: float
    last_mean: float
    finite: bool

    @property
    def falling(self) -> bool:
        """Whether the last window's mean is below the first one's (and both are finite)."""
        return self.finite and self.last_mean < self.first_mean


def read_logged(csv_path: Path, key: str) -> list[float]:
    """The values of ``key`` in a Lightning ``metrics.csv``, in logging order (rows where
    another metric was logged alone are skipped)."""
    with open(csv_path, newline="") as handle:
        return [float(row[key]) for row in csv.DictReader(handle) if row.get(key)]


def loss_trend(values: Sequence[float], window: int = 10) -> LossTrend:
    """First-``window`` vs last-``window`` mean of ``values`` (``window`` shrinks to half the
    run when the run is shorter than two windows).

    Raises:
        ValueError: ``values`` is empty.
    """
    if not values:
        raise ValueError("no logged values")
    window = max(1, min(window, len(values) // 2 or 1))
    return LossTrend(
        steps=len(values),
        window=window,
        first_mean=statistics.fmean(values[:window]),
        last_mean=statistics.fmean(values[-window:]),
        finite=all(math.isfinite(v) for v in values),
    )


def steps_per_second(step_end_times: Sequence[float], skip: int = 10) -> float | None:
    """Optimiser steps per second between the end of step ``skip`` and the last step's end
    (the first steps pay for warm-up: cuDNN autotuning, allocator growth).

    ``skip`` shrinks to keep at least two timed step ends; ``None`` with fewer than two.
    """
    if len(step_end_times) < 2:
        return None
    skip = min(skip, len(step_end_times) - 2)
    span = step_end_times[-1] - step_end_times[skip]
    return (len(step_end_times) - 1 - skip) / span if span > 0 else None


def pytest_summary(output: str) -> str:
    """The final summary line of pytest's output (``3 passed, 1 skipped in 4.2s``), or ``?``."""
    keys = ("passed", "failed", "error", "skipped", "deselected", "no tests ran")
    for line in reversed(output.strip().splitlines()):
        if any(k in line for k in keys) and " in " in line:
            return line.strip("= ").strip()
    return "?"


def pytest_failures(output: str, limit: int = TAIL_CHARS) -> str:
    """The FAILURES / ERRORS part of pytest's output (short tracebacks), truncated; ``""``."""
    lines = output.splitlines()
    start = next(
        (
            i
            for i, ln in enumerate(lines)
            if ln.startswith("=") and ("FAILURES" in ln or "ERRORS" in ln)
        ),
        None,
    )
    if start is None:
        return ""
    end = next(
        (i for i in range(start + 1, len(lines)) if "short test summary info" in lines[i]),
        len(lines),
    )
    text = "\n".join(lines[start:end])
    return text if len(text) <= limit else text[:limit] + "\n[... truncated ...]"


# -- header --------------------------------------------------------------------------------------
def command_output(cmd: Sequence[str], timeout: float = 10.0) -> str | None:
    """Stripped stdout of ``cmd`` run in the repository, or ``None`` if it fails."""
    try:
        done = subprocess.run(
            list(cmd), cwd=REPO, capture_output=True, text=True, timeout=timeout, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def git_line() -> str:
    """The commit and how many paths differ from it."""
    commit = command_output(["git", "rev-parse", "--short=12", "HEAD"]) or "unknown"
    status = command_output(["git", "status", "--porcelain"])
    dirty = len(status.splitlines()) if status else 0
    return f"git: {commit}" + (f" + {dirty} uncommitted path(s)" if dirty else " (clean)")


def header_lines(device: torch.device, argv: Sequence[str]) -> list[str]:
    """Device, driver, versions, git and command line (the wall time is added at the end)."""
    import torchvision

    lines = [f"date: {datetime.now().isoformat(timespec='seconds')}", git_line()]
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        lines.append(
            f"device: {props.name} (sm_{props.major}{props.minor}, "
            f"{props.total_memory / 2**30:.1f} GiB, {props.multi_processor_count} SMs)"
        )
        smi = command_output(
            ["nvidia-smi", "--query-gpu=driver_version,name", "--format=csv,noheader"]
        )
        lines.append(f"driver (nvidia-smi): {smi or 'nvidia-smi not available'}")
    else:
        lines.append(f"device: CPU ({os.cpu_count()} cores), --cpu-smoke: tiny sizes")
    lines.append(
        f"torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN "
        f"{torch.backends.cudnn.version()}), torchvision {torchvision.__version__}, "
        f"Python {platform.python_version()}"
    )
    lines.append(f"command: `python scripts/gpu_check.py {' '.join(argv)}`".rstrip())
    return lines


# -- section 1: correlation CUDA vs CPU ----------------------------------------------------------
@dataclass(frozen=True)
class CorrelationCase:
    """A correlation shape ``B x C x H x W`` and its keyword arguments."""

    label: str
    shape: tuple[int, int, int, int]
    kwargs: dict[str, int]


CMTR = {"patch_size": 16, "dilation_patch": 2}
GENERAL = {"kernel_size": 3, "patch_size": 5, "stride": 2, "padding": 1, "dilation": 2}
CORRELATION_CASES = (
    CorrelationCase("CMaskTrack P3", (2, 256, 45, 80), CMTR),
    CorrelationCase("CMaskTrack P2", (1, 256, 90, 160), CMTR),
    CorrelationCase("odd, displacements past the border", (3, 7, 13, 21), CMTR),
    CorrelationCase("odd, patch 3", (1, 33, 9, 31), {"patch_size": 3, "dilation_patch": 1}),
    CorrelationCase("odd, k3 t2 p1 dil2", (2, 5, 11, 17), {**GENERAL, "dilation_patch": 1}),
)
GRADCHECK_CASES = (
    CorrelationCase("P4 s2", (1, 2, 5, 6), {"patch_size": 4, "dilation_patch": 2}),
    CorrelationCase("P16 s2", (1, 2, 5, 6), CMTR),
    CorrelationCase("k3 t2 p1 dil2", (1, 2, 6, 7), {**GENERAL, "dilation_patch": 1}),
)


def errors(got: torch.Tensor, want: torch.Tensor) -> tuple[float, float]:
    """Max abs error and max abs error over max |want| (relative to the output's scale)."""
    diff = (got.double().cpu() - want.double().cpu()).abs().max().item()
    scale = want.double().abs().max().item()
    return diff, diff / scale if scale > 0 else diff


def native_with_grads(
    q: torch.Tensor, r: torch.Tensor, kwargs: dict[str, int], device: str, seed: int = 1
) -> tuple[torch.Tensor, ...]:
    """The native op's output on ``device`` and the gradients of both inputs for a seeded
    random output gradient (drawn on the CPU: the same on every device)."""
    from ovisnet.ops.correlation import correlation

    qd, rd = (t.to(device, copy=True).requires_grad_(True) for t in (q, r))
    out = correlation(qd, rd, **kwargs, backend="native")
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    return (out.detach(), *torch.autograd.grad(out, (qd, rd), grad.to(device)))


def compare_devices(
    case: CorrelationCase, device: str = "cuda", reference: str = "cpu", seed: int = 0
) -> dict[str, tuple[float, float]]:
    """Errors of the native op on ``device`` against it on ``reference`` (float32, same
    inputs): output and both gradients, as ``{tensor: (max abs, max rel)}``."""
    gen = torch.Generator().manual_seed(seed)
    q, r = (torch.randn(case.shape, generator=gen) for _ in range(2))
    got = native_with_grads(q, r, case.kwargs, device)
    want = native_with_grads(q, r, case.kwargs, reference)
    names = ("output", "grad input1", "grad input2")
    return {name: errors(a, b) for name, a, b in zip(names, got, want, strict=True)}


def gradcheck_native(case: CorrelationCase, device: str = "cuda", seed: int = 1) -> bool:
    """``torch.autograd.gradcheck`` of the native op in float64 on ``device``."""
    from ovisnet.ops.correlation import correlation

    gen = torch.Generator().manual_seed(seed)
    q, r = (
        torch.randn(case.shape, generator=gen, dtype=torch.float64).to(device).requires_grad_(True)
        for _ in range(2)
    )
    return torch.autograd.gradcheck(
        lambda a, b: correlation(a, b, **case.kwargs, backend="native"),
        (q, r),
        raise_exception=False,
    )


def comparison_rows(section: Section, cases: Sequence[CorrelationCase]) -> list[list[str]]:
    """CUDA vs CPU rows (one per case and tensor); errors above ``REL_TOL`` fail ``section``."""
    rows = []
    for case in cases:
        for part, (abs_err, rel_err) in compare_devices(case).items():
            ok = rel_err <= REL_TOL
            if not ok:
                section.fail(f"{case.label} {part}: relative error {rel_err:.2e} > {REL_TOL:g}")
            cells = [case.label, str(case.shape), kwargs_text(case), part]
            rows.append([*cells, f"{abs_err:.2e}", f"{rel_err:.2e}", yes_no(ok)])
    return rows


def yes_no(ok: bool) -> str:
    """``yes`` / bold ``no`` for a table cell."""
    return "yes" if ok else "**no**"


def check_correlation(section: Section) -> None:
    """Section 1: build time, CUDA vs CPU errors, float64 gradcheck."""
    from bench_inference import markdown_table
    from ovisnet.ops.correlation import extension_dir, load_native

    start = time.perf_counter()
    extension = load_native()
    build_s = time.perf_counter() - start
    section.add(
        f"Native extension ready in **{build_s:.1f} s** (`load_native()`: a JIT build with "
        f"ninja / nvcc the first time, a load from `{extension_dir()}` when cached); CUDA "
        f"kernels: {bool(extension.has_cuda())}.",
        "",
    )
    if not extension.has_cuda():
        section.fail("the native build has no CUDA kernels (nvcc / CUDA_HOME not found?)")
        return
    rows = comparison_rows(section, CORRELATION_CASES)
    section.add(
        f"CUDA native vs CPU native kernels (float32, same inputs and output gradient; relative "
        f"= max abs error / max |CPU value|, tolerance {REL_TOL:g}):",
        "",
        markdown_table(
            ["case", "B,C,H,W", "arguments", "tensor", "max abs", "max rel", "ok"], rows
        ),
        "",
    )
    rows = []
    for case in GRADCHECK_CASES:
        ok = gradcheck_native(case)
        if not ok:
            section.fail(f"gradcheck failed: {case.label} {case.shape}")
        rows.append([case.label, str(case.shape), yes_no(ok)])
    section.add(
        "`torch.autograd.gradcheck`, float64, CUDA, native backend:",
        "",
        markdown_table(["case", "B,C,H,W", "passed"], rows),
    )


def kwargs_text(case: CorrelationCase) -> str:
    """``patch_size=16 dilation_patch=2`` for a table cell."""
    return " ".join(f"{k}={v}" for k, v in case.kwargs.items())


# -- section 2: gpu-marked tests -----------------------------------------------------------------
GPU_TESTS = ("-m", "gpu")


def run_captured(
    cmd: Sequence[str], timeout: float, env: dict[str, str] | None = None
) -> tuple[int | None, str]:
    """Run ``cmd`` in the repository; its exit status (``None`` when it timed out and was
    killed) and its stdout + stderr (what it wrote before a timeout)."""
    try:
        done = subprocess.run(
            list(cmd), cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as expired:
        parts = (expired.stdout, expired.stderr)
        text = [p.decode(errors="replace") if isinstance(p, bytes) else (p or "") for p in parts]
        return None, "".join(text)
    return done.returncode, done.stdout + done.stderr


def check_pytest(section: Section, budget: Budget, selection: Sequence[str] = GPU_TESTS) -> None:
    """Section 2: ``pytest -m gpu`` in a subprocess; summary line and short tracebacks."""
    cmd = [sys.executable, "-m", "pytest", *selection, "-q", "--tb=short", "-p", "no:cacheprovider"]
    timeout = budget.timeout(PYTEST_CAP_S)
    section.add(f"`python {' '.join(cmd[1:])}` (timeout {timeout:.0f} s)", "")
    status, output = run_captured(cmd, timeout)
    if status is None:
        section.fail(f"pytest timed out after {timeout:.0f} s")
        section.add("Output so far:", "", fenced(tail(output)))
        return
    summary = pytest_summary(output)
    section.add(f"Summary: `{summary}` (exit status {status})", "")
    if status != 0:
        section.fail(f"pytest exited with status {status}: {summary}")
        failures = pytest_failures(output)
        section.add("Failures (short tracebacks, truncated):", "", fenced(failures or tail(output)))


# -- section 3: inference speed ----------------------------------------------------------------
@dataclass(frozen=True)
class InferenceModel:
    """A family as section 3 builds it: its experiment overrides, and the extra ones of the
    ``--cpu-smoke`` run (fewer proposals / detections / clusters, narrow heads)."""

    label: str
    overrides: tuple[str, ...]
    smoke: tuple[str, ...] = ()


RCNN_SMOKE = (
    "model.rpn.pre_nms_top_n=50",
    "model.rpn.post_nms_top_n=50",
    "model.rcnn.detections_per_img=10",
    "++model.rcnn.representation_size=64",
    "++model.rcnn.mask_channels=16",
)
SIPMASK_SMOKE = (
    "model.test.detections_per_img=10",
    "model.config.basis_channels=32",
    "model.config.track_dim=32",
)
INFERENCE_MODELS = (
    InferenceModel(
        "MaskTrack R-CNN", ("experiment=masktrack", "model.rcnn.score_thresh=0.0"), RCNN_SMOKE
    ),
    InferenceModel(
        "CMaskTrack R-CNN (fusion: predictions)",
        (
            "experiment=cmasktrack",
            "model.rcnn.score_thresh=0.0",
            "model.reference_fusion=predictions",
        ),
        RCNN_SMOKE,
    ),
    InferenceModel(
        "CMaskTrack R-CNN (fusion: features)",
        ("experiment=cmasktrack", "model.rcnn.score_thresh=0.0", "model.reference_fusion=features"),
        RCNN_SMOKE,
    ),
    InferenceModel(
        "SipMask-VIS", ("experiment=sipmask", "model.test.score_thresh=0.0"), SIPMASK_SMOKE
    ),
    InferenceModel(
        "CSipMask", ("experiment=csipmask", "model.test.score_thresh=0.0"), SIPMASK_SMOKE
    ),
    InferenceModel(
        "STEm-Seg",
        (
            "experiment=stemseg",
            # random weights give no seed above 0.8: every pixel foreground and a seed
            # candidate, so each sub-clip forms its 30 clusters (bench_stemseg's FORCED)
            "system.predictor.config.fg_thresh=0.0",
            "system.predictor.config.seed_thresh=0.01",
        ),
        (
            "model.config.embedding_widths=[8,8,8,8]",
            "model.config.semantic_widths=[8,8,8,8]",
            "model.config.num_groups=4",
            "system.predictor.config.max_clusters=5",
        ),
    ),
)
# --cpu-smoke, every family: a light backbone
SMOKE_MODEL_OVERRIDES = ("model/backbone=r18_fpn", "model.backbone.out_channels=64")


@dataclass(frozen=True)
class StreamPlan:
    """Frames pushed through a predictor: ``warmup`` untimed, ``timed``, then ``tail`` untimed
    (the last pushes flush the pending frames / sub-clips: not a steady-state cost).
    ``timed`` is a multiple of 4, STEm-Seg's sub-clip stride, so its mean covers whole periods."""

    warmup: int
    timed: int
    tail: int

    @property
    def length(self) -> int:
        """Frames in the video."""
        return self.warmup + self.timed + self.tail


GPU_PLAN = StreamPlan(warmup=8, timed=24, tail=8)
SMOKE_PLAN = StreamPlan(warmup=1, timed=4, tail=1)
GPU_SIZE, SMOKE_SIZE = (640, 360), (96, 64)


@contextlib.contextmanager
def hydra_config(overrides: Sequence[str]) -> Iterator[Any]:
    """The composed ``train`` config for ``overrides`` (Hydra initialised for the block)."""
    from hydra import compose, initialize_config_dir

    from ovisnet.train import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        yield compose("train", overrides=list(overrides))


def build_system(overrides: Sequence[str], device: torch.device) -> tuple[Any, int]:
    """The Lightning system of an experiment (random weights) on ``device``, eval mode, and
    its class count."""
    from omegaconf import OmegaConf

    from ovisnet.train import build

    with hydra_config(overrides) as cfg:
        OmegaConf.resolve(cfg)
    torch.manual_seed(0)
    _, system = build(cfg)
    return system.to(device).eval(), int(cfg.data.num_classes)


def stream_inputs(
    cache_dir: Path, plan: StreamPlan, size: tuple[int, int], device: torch.device
) -> tuple[list[torch.Tensor], Any]:
    """The canvas frames of a synthetic video (``plan.length`` frames, ``size`` = (W, H)) on
    ``device`` and its first evaluation batch (what ``make_predictor`` reads)."""
    from bench_inference import canvas_frames, synthetic_video
    from ovisnet.data.annotations import load_annotations
    from ovisnet.data.datasets import VISFrameDataset
    from ovisnet.structures import collate_clips

    frames, _ = canvas_frames(cache_dir, plan.length, size, device)
    root = synthetic_video(cache_dir, plan.length, size)  # the cached set canvas_frames read
    dataset = VISFrameDataset(load_annotations(root / "annotations" / "valid.json"), max_size=size)
    return frames, collate_clips([dataset[0]])


def time_stream(
    system: Any,
    frames: Sequence[torch.Tensor],
    batch: Any,
    num_classes: int,
    plan: StreamPlan,
    bf16: bool,
) -> dict[str, float]:
    """Push a whole video through a fresh predictor of ``system`` (bf16 autocast or not).

    Returns:
        ms per push (median and mean of the timed pushes), frames/s (from the mean), memory
        allocated before the stream and its peak in MiB (NaN off CUDA), result tracks.
    """
    from bench_inference import sync

    device = frames[0].device
    cuda = device.type == "cuda"
    if cuda:  # the peak of this run only
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    weights = torch.cuda.memory_allocated(device) / 2**20 if cuda else float("nan")
    predictor = system.make_predictor(batch, list(range(1, num_classes + 1)))
    times = []
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    with torch.no_grad(), autocast:
        for k, image in enumerate(frames):
            sync(device)
            start = time.perf_counter()
            predictor.push(image)
            sync(device)
            if plan.warmup <= k < plan.warmup + plan.timed:
                times.append(time.perf_counter() - start)
        results = predictor.finalize()
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else float("nan")
    mean = statistics.fmean(times)
    return {
        "median_ms": 1e3 * statistics.median(times),
        "mean_ms": 1e3 * mean,
        "fps": 1.0 / mean,
        "weights_mib": weights,
        "peak_mib": peak,
        "tracks": float(len(results)),
    }


INFERENCE_HEADERS = (
    "model", "precision", "median ms/push", "mean ms/frame", "frames/s", "weights MiB",
    "peak MiB", "tracks",
)  # fmt: skip


def inference_row(label: str, precision: str, m: dict[str, float]) -> list[str]:
    """One table row of :func:`time_stream`'s measures."""

    def mib(value: float) -> str:
        return "-" if math.isnan(value) else f"{value:.0f}"

    return [
        label,
        precision,
        f"{m['median_ms']:.1f}",
        f"{m['mean_ms']:.1f}",
        f"{m['fps']:.2f}",
        mib(m["weights_mib"]),
        mib(m["peak_mib"]),
        f"{m['tracks']:.0f}",
    ]


def measure_family(
    section: Section,
    label: str,
    overrides: Sequence[str],
    frames: Sequence[torch.Tensor],
    batch: Any,
    plan: StreamPlan,
) -> list[list[str]]:
    """Table rows of one family: float32 and, on CUDA, bf16 autocast.

    A failure is written as an ``error`` row and does not stop the other families: it fails
    ``section`` for float32 (or the build), and is a note for bf16 autocast (an extra the
    models do not promise).
    """
    device = frames[0].device
    try:
        system, num_classes = build_system(overrides, device)
    except Exception as error:
        section.fail(f"{label}: building failed: {type(error).__name__}: {error}")
        return [[label, "-", "error", *["-"] * (len(INFERENCE_HEADERS) - 3)]]
    precisions = (
        {"fp32": False, "bf16 autocast": True} if device.type == "cuda" else {"fp32": False}
    )
    rows = []
    for precision, bf16 in precisions.items():
        try:
            measures = time_stream(system, frames, batch, num_classes, plan, bf16)
        except Exception as error:
            message = f"{label} ({precision}): {type(error).__name__}: {error}"
            if bf16:
                section.note(message)
            else:
                section.fail(message)
            rows.append([label, precision, "error", *["-"] * (len(INFERENCE_HEADERS) - 3)])
            continue
        rows.append(inference_row(label, precision, measures))
    del system
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def check_inference(
    section: Section, budget: Budget, device: torch.device, cache_dir: Path, smoke: bool
) -> None:
    """Section 3: every family streamed at 640x360 (float32, then bf16 autocast on CUDA)."""
    from bench_inference import markdown_table

    plan, size = (SMOKE_PLAN, SMOKE_SIZE) if smoke else (GPU_PLAN, GPU_SIZE)
    frames, batch = stream_inputs(cache_dir, plan, size, device)
    common = ["init_from=null", f"paths.output_dir={cache_dir / 'inference-run'}"]
    common += SMOKE_MODEL_OVERRIDES if smoke else ()
    rows = []
    for model in INFERENCE_MODELS:
        if not budget.allows(MODEL_NEED_S):
            section.note(budget.skip_note(f"{model.label} and the models after it", MODEL_NEED_S))
            break
        overrides = [*model.overrides, *common, *(model.smoke if smoke else ())]
        rows += measure_family(section, model.label, overrides, frames, batch, plan)
    section.add(inference_text(plan, size, tuple(frames[0].shape[-2:]), device, smoke), "")
    section.add(markdown_table(INFERENCE_HEADERS, rows))


def inference_text(
    plan: StreamPlan, size: tuple[int, int], canvas: tuple[int, ...], device: torch.device,
    smoke: bool,
) -> str:  # fmt: skip
    """What section 3 measured, in words."""
    backbone = "R18-FPN (--cpu-smoke, fewer proposals and detections)" if smoke else "R50-FPN"
    return (
        f"{backbone}, random weights, 25 classes (the OVIS configs), {size[0]}x{size[1]} "
        f"synthetic frames (canvas {canvas[1]}x{canvas[0]}), {device}, no grad, eval. Each model "
        f"streams one video of {plan.length} frames through its predictor "
        f"(`system.make_predictor`): {plan.warmup} warm-up pushes, {plan.timed} timed, "
        f"{plan.tail} untimed at the end (the final flush); each push is synchronised. Box "
        f"families: score threshold 0, 100 detections per frame, eps_test 3 for the calibrated "
        f"ones. STEm-Seg: sub-clips of 8 overlapping by 4, every pixel foreground and a seed "
        f"candidate; it runs its heads and clustering once per 4 pushes, so its median push is "
        f"not its cost: read the mean. frames/s = 1000 / mean. Weights: "
        f"`torch.cuda.memory_allocated` before the stream (model and frames); peak: "
        f"`torch.cuda.max_memory_allocated` over the stream, reset per run."
    )


# -- section 4: training steps of the CPU presets ---------------------------------------------
TRAIN_PRESETS = ("cmasktrack_cpu", "csipmask_cpu", "stemseg_cpu")
GPU_STEPS, SMOKE_STEPS = 100, 3
# the synthetic set of the training runs: (num_videos, num_frames, size); a quarter is valid
GPU_TRAIN_SET = (16, 24, (320, 192))
SMOKE_TRAIN_SET = (4, 5, (96, 64))


def synthetic_train_set(cache_dir: Path, smoke: bool) -> Path:
    """A cached synthetic set for the training runs (generated once; 16 videos on the GPU)."""
    from ovisnet.data.synthetic import generate

    videos, frames, size = SMOKE_TRAIN_SET if smoke else GPU_TRAIN_SET
    root = cache_dir / f"train_set_{videos}v{frames}f_{size[0]}x{size[1]}"
    done = root / ".complete"
    if not done.is_file():
        generate(
            root,
            seed=0,
            num_videos=videos,
            num_frames=frames,
            size=size,
            valid_fraction=0.25,
            progress=False,
        )
        done.touch()
    return root


def train_overrides(
    experiment: str, data_root: Path, out_dir: Path, steps: int, smoke: bool
) -> list[str]:
    """Hydra overrides of one preset's short run: the GPU (or CPU for the smoke run), ``steps``
    steps, no validation, one log row per step."""
    overrides = [
        f"experiment={experiment}",
        f"data.root={data_root}",
        f"paths.output_dir={out_dir}",
        f"trainer.accelerator={'cpu' if smoke else 'gpu'}",
        "trainer.devices=1",
        f"++trainer.max_steps={steps}",
        "trainer.max_epochs=-1",
        "++trainer.limit_val_batches=0",
        "trainer.log_every_n_steps=1",
        "evaluate_after_training=false",
        f"data.num_workers={0 if smoke else 4}",
    ]
    if smoke:
        overrides.append(f"data.max_size=[{SMOKE_TRAIN_SET[2][0]},{SMOKE_TRAIN_SET[2][1]}]")
    return overrides


def train_child(experiment: str, data_root: Path, out_dir: Path, steps: int, smoke: bool) -> None:
    """Run one preset's short training in this process; write ``timing.json`` to ``out_dir``.

    Runs in its own process (``--train-child``) so that a hang can be timed out and a failure
    leaves the parent's CUDA context alone. Lightning's own CSV logger writes the losses.
    """
    import lightning as L
    from hydra.utils import instantiate
    from lightning.pytorch.loggers import CSVLogger
    from omegaconf import OmegaConf

    from ovisnet.train import build

    class StepTimer(L.Callback):
        """Records the (synchronised) time at the end of every training step."""

        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
            if torch.cuda.is_available() and not smoke:
                torch.cuda.synchronize()  # the step's kernels are part of its time
            self.ends.append(time.perf_counter())

    with hydra_config(train_overrides(experiment, data_root, out_dir, steps, smoke)) as cfg:
        OmegaConf.resolve(cfg)
    L.seed_everything(cfg.seed, workers=True)
    datamodule, system = build(cfg)
    timer = StepTimer()
    trainer = instantiate(
        cfg.trainer,
        callbacks=[timer],
        logger=[CSVLogger(str(out_dir), name="csv")],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    trainer.fit(system, datamodule=datamodule)
    cuda = torch.cuda.is_available() and not smoke
    timing = {
        "fit_s": time.perf_counter() - start,
        "step_ends": timer.ends,
        "precision": str(cfg.trainer.precision),
        "peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
    }
    (out_dir / "timing.json").write_text(json.dumps(timing))


def train_child_command(
    experiment: str, data_root: Path, out_dir: Path, steps: int, smoke: bool
) -> list[str]:
    """This script with ``--train-child``: one preset's run in a fresh process."""
    return [
        sys.executable, str(Path(__file__).resolve()), "--train-child", experiment,
        "--data-root", str(data_root), "--child-dir", str(out_dir), "--steps", str(steps),
        *(["--cpu-smoke"] if smoke else []),
    ]  # fmt: skip


TRAIN_HEADERS = (
    "preset", "precision", "steps", "window", "loss, first window", "loss, last window",
    "finite", "falling", "steps/s", "peak MiB",
)  # fmt: skip


def train_row(experiment: str, out_dir: Path, steps: int, section: Section) -> list[str]:
    """The table row of a finished run: loss trend from its ``metrics.csv``, steps/s, peak
    memory; a missing or non-finite loss fails ``section``."""
    timing = json.loads((out_dir / "timing.json").read_text())
    metrics = sorted(out_dir.glob("csv/version_*/metrics.csv"))
    losses = read_logged(metrics[-1], "train/loss") if metrics else []
    if not losses:
        section.fail(f"{experiment}: no train/loss in the CSV log")
        return [experiment, timing["precision"], "0", *["-"] * (len(TRAIN_HEADERS) - 3)]
    trend = loss_trend(losses)
    if not trend.finite:
        section.fail(f"{experiment}: non-finite train/loss")
    if trend.steps != steps:
        section.note(f"{experiment}: {trend.steps} losses logged for {steps} steps")
    rate = steps_per_second(timing["step_ends"])
    peak = timing.get("peak_mib")
    return [
        experiment,
        timing["precision"],
        str(trend.steps),
        str(trend.window),
        f"{trend.first_mean:.4f}",
        f"{trend.last_mean:.4f}",
        yes_no(trend.finite),
        "yes" if trend.falling else "no",
        f"{rate:.2f}" if rate else "-",
        f"{peak:.0f}" if peak else "-",
    ]


def check_training(
    section: Section, budget: Budget, device: torch.device, cache_dir: Path, smoke: bool
) -> None:
    """Section 4: ``GPU_STEPS`` steps of every CPU preset on the GPU, one subprocess each."""
    from bench_inference import markdown_table

    steps = SMOKE_STEPS if smoke else GPU_STEPS
    start = time.perf_counter()
    data_root = synthetic_train_set(cache_dir, smoke)
    videos, frames, size = SMOKE_TRAIN_SET if smoke else GPU_TRAIN_SET
    section.add(
        f"Synthetic set: {videos} videos x {frames} frames at {size[0]}x{size[1]} (a quarter "
        f"valid, unused), ready in {time.perf_counter() - start:.1f} s at `{data_root}`.",
        "",
    )
    runs = Path(tempfile.mkdtemp(prefix="train-", dir=cache_dir))
    rows = []
    for experiment in TRAIN_PRESETS:
        if not budget.allows(TRAIN_NEED_S):
            section.note(budget.skip_note(f"{experiment} and the presets after it", TRAIN_NEED_S))
            break
        out_dir = runs / experiment
        out_dir.mkdir()
        timeout = budget.timeout(TRAIN_CAP_S)
        cmd = train_child_command(experiment, data_root, out_dir, steps, smoke)
        status, output = run_captured(cmd, timeout, env={**os.environ, "HYDRA_FULL_ERROR": "1"})
        if status != 0:
            why = f"timed out after {timeout:.0f} s" if status is None else f"exit status {status}"
            section.fail(f"{experiment}: {why}")
            section.add(f"{experiment} output:", "", fenced(tail(output)), "")
            continue
        rows.append(train_row(experiment, out_dir, steps, section))
    where = "CPU (--cpu-smoke)" if smoke else str(device)
    section.add(
        f"{steps} optimiser steps per preset on {where}, `trainer.accelerator` overridden, the "
        f"presets' precision, no validation, one `train/loss` row per step in a CSV log "
        f"(`{runs}`). Loss: mean of the first vs the last `window` logged steps (10, fewer in a "
        f"short run). steps/s: from the end of step 10 to the last step's end (synchronised). "
        f"Peak: `torch.cuda.max_memory_allocated` of the run.",
        "",
        markdown_table(TRAIN_HEADERS, rows),
    )


# -- section 5: correlation bench and bandwidth ------------------------------------------------
def copy_bandwidth(device: torch.device, mib: int = 1024, repeats: int = 10) -> float:
    """Achieved copy bandwidth on ``device`` in bytes/s (bytes read + written / time): the
    reference when the card's peak cannot be derived."""
    from bench_inference import sync

    src = torch.empty(mib * 2**20 // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        dst.copy_(src)
    sync(device)
    seconds = time.perf_counter() - start
    return 2 * src.numel() * src.element_size() * repeats / seconds


def check_bench(section: Section, budget: Budget, device: torch.device) -> None:
    """Section 5: ``bench_correlation.py`` with its bandwidth column against a stated reference."""
    from bench_correlation import peak_bandwidth

    copy = copy_bandwidth(device)
    peak = peak_bandwidth(device)
    if peak:
        reference, what = peak, "the theoretical peak (2 x memory clock x bus width)"
    else:
        reference, what = copy, "the measured device-to-device copy (the card reports no peak)"
    peak_text = f"{peak / 1e9:.0f} GB/s (the copy: {100 * copy / peak:.0f} %)" if peak else "-"
    section.add(
        f"Device-to-device copy (1 GiB, read + written): **{copy / 1e9:.0f} GB/s**; theoretical "
        f"peak: {peak_text}. The `% of peak` column below is against {what}: "
        f"{reference / 1e9:.0f} GB/s.",
        "",
    )
    cmd = [
        sys.executable, str(SCRIPTS / "bench_correlation.py"), "--device", "cuda",
        "--peak-gbs", f"{reference / 1e9:.1f}",
    ]  # fmt: skip
    timeout = budget.timeout(BENCH_CAP_S)
    status, output = run_captured(cmd, timeout)
    section.add(f"`python scripts/bench_correlation.py {' '.join(cmd[2:])}`:", "")
    section.add(fenced(output if status == 0 else tail(output)))
    if status != 0:
        why = f"timed out after {timeout:.0f} s" if status is None else f"exit status {status}"
        section.fail(f"bench_correlation.py: {why}")


# -- main ----------------------------------------------------------------------------------------
def default_out() -> Path:
    """``outputs/gpu_check/gpu_check_<timestamp>.md`` in the repository."""
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    return REPO / "outputs" / "gpu_check" / f"gpu_check_{stamp}.md"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="report path (default: printed)")
    parser.add_argument("--budget-s", type=float, default=450.0, help="global time budget")
    parser.add_argument(
        "--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="what to run"
    )
    parser.add_argument(
        "--cpu-smoke", action="store_true", help="sections 3-4 on the CPU at tiny sizes"
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "ovisnet-gpu-check",
        help="synthetic videos and training runs (reused when present)",
    )
    parser.add_argument("--train-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data-root", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-dir", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=GPU_STEPS, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def run_checks(args: argparse.Namespace, argv: Sequence[str]) -> Report:
    """Run the chosen sections into one report (rewritten after each); returns it."""
    budget = Budget(args.budget_s)
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    report = Report((args.out or default_out()).resolve(), header_lines(device, argv))
    print(f"gpu-check: writing {report.path} (budget {budget.total_s:.0f} s)", flush=True)
    bodies: dict[str, Callable[[Section], None]] = {
        "correlation": check_correlation,
        "pytest": lambda s: check_pytest(s, budget),
        "inference": lambda s: check_inference(s, budget, device, args.cache_dir, args.cpu_smoke),
        "training": lambda s: check_training(s, budget, device, args.cache_dir, args.cpu_smoke),
        "bench": lambda s: check_bench(s, budget, device),
    }
    for name in (n for n in SECTIONS if n in args.sections):
        if args.cpu_smoke and name not in SMOKE_SECTIONS:
            report.sections.append(Section(TITLES[name], status="SKIPPED"))
            report.sections[-1].note("--cpu-smoke: needs a CUDA device")
            continue
        run_section(report, name, budget, NEEDS[name], bodies[name])
    report.wall_line = f"total wall time: {budget.elapsed():.0f} s (budget {budget.total_s:.0f} s)"
    report.write()
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: the one-line skip without CUDA, the child mode, or the checks.

    Returns:
        0, or 1 when a section failed (the report is written either way).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.train_child is not None:
        train_child(args.train_child, args.data_root, args.child_dir, args.steps, args.cpu_smoke)
        return 0
    if not args.cpu_smoke and not torch.cuda.is_available():
        print(SKIP_LINE)
        return 0
    report = run_checks(args, argv)
    counts = {k: sum(s.status == k for s in report.sections) for k in ("PASS", "FAIL", "SKIPPED")}
    tally = ", ".join(f"{n} {k}" for k, n in counts.items())
    print(f"gpu-check: report written to {report.path} ({tally})")
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
