"""scripts/gpu_check.py: the one-line skip without CUDA, and its helpers on the CPU."""

from __future__ import annotations

import csv
import importlib.util
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from ovisnet.train import CONFIG_DIR

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


gpu_check = _load_script()


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _run_script(args: list[str], timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_without_cuda_prints_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "report.md"
    proc = _run_script(["--out", str(out)], CUDA_VISIBLE_DEVICES="")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "gpu-check: skipped: no CUDA device (torch.cuda.is_available() is False); "
        "nothing was measured"
    ]
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


# -- budget --------------------------------------------------------------------------------------
def test_budget_counts_down_and_caps_timeouts():
    clock = FakeClock()
    budget = gpu_check.Budget(450.0, clock=clock)
    assert budget.remaining() == 450.0 and budget.allows(450.0)
    clock.now += 400.0
    assert budget.elapsed() == 400.0
    assert budget.remaining() == 50.0
    assert budget.allows(40.0) and not budget.allows(60.0)
    assert budget.timeout(120.0) == 50.0  # never past the budget
    assert budget.timeout(30.0) == 30.0  # the part's own cap
    clock.now += 100.0
    assert budget.remaining() == 0.0
    assert budget.timeout(30.0) == 1.0  # a subprocess always gets a moment
    note = budget.skip_note("section", 20.0)
    assert note == "section skipped: 0 s left of the 450 s budget, needs ~20 s"


# -- report --------------------------------------------------------------------------------------
def test_sections_render_status_failures_notes_and_body():
    ok = gpu_check.Section("1. Good", seconds=1.25)
    ok.add("a line", "", "| t |")
    ok.finish()
    bad = gpu_check.Section("2. Bad")
    bad.note("half skipped")
    bad.fail("first  problem\nwith a newline")
    bad.fail("second problem")
    bad.finish()
    assert (ok.status, bad.status) == ("PASS", "FAIL")
    assert bad.summary() == "first problem with a newline"  # one line for the table
    text = gpu_check.render_report(["device: X", "git: abc"], [ok, bad])
    lines = text.splitlines()
    assert lines[0] == "# ovisnet GPU check"
    assert lines[2:4] == ["- device: X", "- git: abc"]
    assert "## Summary" in lines
    summary_rows = [ln for ln in lines if ln.startswith("| 1. Good") or ln.startswith("| 2. Bad")]
    assert len(summary_rows) == 2
    assert "PASS" in summary_rows[0] and "1.2" in summary_rows[0]
    assert "FAIL" in summary_rows[1] and "first problem" in summary_rows[1]
    assert "## 1. Good" in lines and "**PASS** (1.2 s)" in lines
    assert "- FAIL: second problem" in lines and "- note: half skipped" in lines
    assert text.index("## 1. Good") < text.index("a line") < text.index("## 2. Bad")


def test_run_section_records_an_error_and_the_run_goes_on(tmp_path):
    clock = FakeClock()
    budget = gpu_check.Budget(100.0, clock=clock)
    report = gpu_check.Report(tmp_path / "sub" / "report.md", ["device: test"])

    def broken(section):
        section.add("measured before the error")
        raise RuntimeError("kernel exploded")

    def fine(section):
        section.add("all good")
        clock.now += 95.0

    first = gpu_check.run_section(report, "correlation", budget, 10.0, broken)
    assert first.status == "FAIL"
    assert first.failures == ["RuntimeError: kernel exploded"]
    second = gpu_check.run_section(report, "pytest", budget, 10.0, fine)
    assert second.status == "PASS"
    third = gpu_check.run_section(report, "inference", budget, 10.0, fine)  # 5 s left < 10 s
    assert third.status == "SKIPPED"
    assert third.lines == []  # the body never ran
    assert "5 s left of the 100 s budget" in third.notes[0]

    text = report.path.read_text()  # rewritten after every section
    assert "kernel exploded" in text and "measured before the error" in text
    assert "Traceback" in text and "in broken" in text
    assert "all good" in text
    assert "(run in progress, or stopped before its end)" in text
    assert text.count("**SKIPPED**") == 1


def test_tail_and_fenced():
    assert gpu_check.tail("short", limit=10) == "short"
    cut = gpu_check.tail("x" * 50 + "END", limit=10)
    assert cut.startswith("[... truncated ...]\n") and cut.endswith("END")
    assert len(cut.split("\n", 1)[1]) == 10
    assert gpu_check.fenced("a\nb\n") == "```text\na\nb\n```"


# -- loss trend and step rate --------------------------------------------------------------------
def _write_metrics(path: Path, losses: list[float]) -> None:
    """A Lightning-style metrics.csv: one row per step, plus rows without the loss."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", "step", "train/loss", "train/lr", "train/loss_cls"])
        for step, loss in enumerate(losses):
            writer.writerow([0, step, loss, 0.001, loss / 2])
            if step % 3 == 0:
                writer.writerow([0, step, "", 0.001, ""])  # another metric logged alone


def test_loss_trend_from_a_metrics_csv(tmp_path):
    losses = [5.0 - 0.02 * k for k in range(100)]
    _write_metrics(tmp_path / "metrics.csv", losses)
    values = gpu_check.read_logged(tmp_path / "metrics.csv", "train/loss")
    assert values == pytest.approx(losses)
    trend = gpu_check.loss_trend(values)
    assert trend.steps == 100 and trend.window == 10
    assert trend.first_mean == pytest.approx(5.0 - 0.02 * 4.5)
    assert trend.last_mean == pytest.approx(5.0 - 0.02 * 94.5)
    assert trend.finite and trend.falling


def test_loss_trend_flags_non_finite_and_rising_and_short_runs():
    rising = gpu_check.loss_trend([1.0, 2.0, 3.0])
    assert rising.window == 1  # half of a 3-step run
    assert (rising.first_mean, rising.last_mean) == (1.0, 3.0)
    assert rising.finite and not rising.falling
    nan = gpu_check.loss_trend([3.0, float("nan"), 1.0, 0.5])
    assert not nan.finite and not nan.falling
    inf = gpu_check.loss_trend([3.0, 2.0, math.inf, 1.0])
    assert not inf.finite
    assert gpu_check.loss_trend([2.0]).window == 1
    with pytest.raises(ValueError, match="no logged values"):
        gpu_check.loss_trend([])


def test_steps_per_second_skips_the_warm_up():
    ends = [0.0, 5.0] + [5.0 + 0.1 * k for k in range(1, 101)]  # slow first step, then 10/s
    assert gpu_check.steps_per_second(ends, skip=10) == pytest.approx(10.0)
    assert gpu_check.steps_per_second([0.0, 1.0, 1.5], skip=10) == pytest.approx(
        2.0
    )  # skip shrinks
    assert gpu_check.steps_per_second([1.0]) is None
    assert gpu_check.steps_per_second([1.0, 1.0]) is None


# -- pytest output -------------------------------------------------------------------------------
PYTEST_OUTPUT = """\
..F.                                                                     [100%]
=================================== FAILURES ===================================
_________________________________ test_breaks __________________________________
tests/test_x.py:3: in test_breaks
    assert 1 == 2
E   assert 1 == 2
=========================== short test summary info ============================
FAILED tests/test_x.py::test_breaks - assert 1 == 2
1 failed, 3 passed, 400 deselected in 2.51s
"""


def test_pytest_summary_and_failures_from_its_output():
    assert gpu_check.pytest_summary(PYTEST_OUTPUT) == "1 failed, 3 passed, 400 deselected in 2.51s"
    assert gpu_check.pytest_summary("== 5 passed in 0.10s ==\n") == "5 passed in 0.10s"
    assert gpu_check.pytest_summary("garbage") == "?"
    failures = gpu_check.pytest_failures(PYTEST_OUTPUT)
    assert failures.startswith("=") and "E   assert 1 == 2" in failures
    assert "short test summary" not in failures
    assert gpu_check.pytest_failures("5 passed in 1s") == ""
    assert gpu_check.pytest_failures(PYTEST_OUTPUT, limit=20).endswith("[... truncated ...]")


def test_check_pytest_reports_a_real_failing_run(tmp_path):
    test_file = tmp_path / "test_sample.py"
    test_file.write_text("def test_ok():\n    pass\n\n\ndef test_bad():\n    assert 1 == 2\n")
    section = gpu_check.Section("2. tests")
    gpu_check.check_pytest(section, gpu_check.Budget(120.0), selection=[str(test_file)])
    section.finish()
    assert section.status == "FAIL"
    assert section.failures[0].startswith("pytest exited with status 1: 1 failed, 1 passed")
    body = "\n".join(section.lines)
    assert "test_bad" in body and "assert 1 == 2" in body


# -- configs the sections compose ----------------------------------------------------------------
def _compose(overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize("smoke", [False, True])
def test_inference_overrides_compose(smoke, tmp_path):
    common = ["init_from=null", f"paths.output_dir={tmp_path}"]
    for model in gpu_check.INFERENCE_MODELS:
        extra = [*gpu_check.SMOKE_MODEL_OVERRIDES, *model.smoke] if smoke else []
        cfg = _compose([*model.overrides, *common, *extra])
        assert cfg.init_from is None
        assert cfg.data.num_classes == 25  # the OVIS configs
        if "rcnn" in cfg.model:
            assert cfg.model.rcnn.score_thresh == 0.0
            assert cfg.model.rcnn.detections_per_img == (10 if smoke else 100)
        elif "test" in cfg.model:
            assert cfg.model.test.score_thresh == 0.0
            assert cfg.model.test.detections_per_img == (10 if smoke else 100)
        else:
            assert cfg.system.predictor.config.fg_thresh == 0.0
            assert cfg.system.predictor.config.seed_thresh == 0.01
        fusion = cfg.model.get("reference_fusion")
        if "features" in model.label:
            assert fusion == "features"
        assert cfg.model.backbone.name == ("resnet18" if smoke else "resnet50")


@pytest.mark.parametrize("experiment", gpu_check.TRAIN_PRESETS)
def test_train_overrides_compose(experiment, tmp_path):
    cfg = _compose(
        gpu_check.train_overrides(experiment, tmp_path / "data", tmp_path, 100, smoke=False)
    )
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.devices == 1
    assert cfg.trainer.max_steps == 100 and cfg.trainer.max_epochs == -1
    assert cfg.trainer.limit_val_batches == 0
    assert cfg.trainer.log_every_n_steps == 1
    assert cfg.trainer.precision == "bf16-mixed"  # the preset's own
    assert cfg.evaluate_after_training is False
    assert cfg.data.root == str(tmp_path / "data")
    smoke = _compose(gpu_check.train_overrides(experiment, tmp_path, tmp_path, 3, smoke=True))
    assert smoke.trainer.accelerator == "cpu" and smoke.trainer.max_steps == 3
    assert list(smoke.data.max_size) == list(gpu_check.SMOKE_TRAIN_SET[2])


# -- device-independent parts of the GPU sections ------------------------------------------------
@pytest.mark.skipif(
    shutil.which(os.environ.get("CXX", "c++")) is None, reason="no C++ compiler for the native op"
)
def test_correlation_comparison_and_gradcheck_run_on_the_cpu():
    case = gpu_check.CorrelationCase("small", (1, 3, 7, 9), {"patch_size": 5, "dilation_patch": 2})
    errors = gpu_check.compare_devices(case, device="cpu", reference="cpu")
    assert set(errors) == {"output", "grad input1", "grad input2"}
    assert all(e == (0.0, 0.0) for e in errors.values())  # same kernels, same inputs
    assert all(gpu_check.gradcheck_native(c, device="cpu") for c in gpu_check.GRADCHECK_CASES)
    a = torch.tensor([1.0, -4.0])
    assert gpu_check.errors(a + torch.tensor([0.0, 0.5]), a) == (0.5, 0.125)


def test_copy_bandwidth_is_positive_on_the_cpu():
    assert gpu_check.copy_bandwidth(torch.device("cpu"), mib=8, repeats=2) > 0


# -- the plumbing of sections 3 and 4 on the CPU -------------------------------------------------
@pytest.mark.slow  # minutes on 2 cores: six models and three training runs (subprocesses)
def test_cpu_smoke_runs_inference_and_training(tmp_path):
    out = tmp_path / "report.md"
    cache = tmp_path / "cache"
    args = ["--cpu-smoke", "--out", str(out), "--cache-dir", str(cache), "--budget-s", "1200"]
    proc = _run_script(args, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.splitlines()[-1].startswith(f"gpu-check: report written to {out}")
    text = out.read_text()
    assert "total wall time:" in text and "in progress" not in text
    assert "**PASS**" in text.split("## 3. Inference")[1].split("\n## ")[0]
    assert "**PASS**" in text.split("## 4. Training")[1]
    for model in gpu_check.INFERENCE_MODELS:
        assert f"| {model.label}" in text
    for preset in gpu_check.TRAIN_PRESETS:
        row = next(ln for ln in text.splitlines() if ln.startswith(f"| {preset}"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == "bf16-mixed" and cells[2] == "3"  # precision, steps
        assert cells[6] == "yes"  # finite
    for title in ("1. Correlation", "2. GPU-marked tests", "5. Correlation benchmark"):
        body = text.split(f"## {title}")[1].split("\n## ")[0]
        assert "**SKIPPED**" in body and "--cpu-smoke: needs a CUDA device" in body
