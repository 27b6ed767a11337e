"""``scripts/paper_tables.py``: resumable rows, cells, verdicts and the report (no training)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "paper_tables.py"


@pytest.fixture(scope="module")
def pt():
    spec = importlib.util.spec_from_file_location("paper_tables", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["paper_tables"] = module
    spec.loader.exec_module(module)
    return module


def _fake(pt, monkeypatch, calls: list[str], fail_at: int | None = None):
    """Training and evaluation replaced by fakes that record their calls (AP = a row constant,
    CMaskTrack better than MaskTrack, IoUTracker+ worse)."""
    ap = {"CMaskTrack R-CNN": 30.0, "tracker: IoUTracker+": 10.0}

    def train_row(training, seed, work, data_root):
        calls.append(f"train {training.name} {seed}")
        if fail_at is not None and len(calls) == fail_at:
            raise KeyboardInterrupt  # a kill
        return {"ckpt": f"{training.name}.ckpt"}

    def evaluate_row(ckpt, root, overrides, out):
        calls.append(f"eval {ckpt} {root.name} {overrides}")
        if fail_at is not None and len(calls) == fail_at:
            raise KeyboardInterrupt
        name = out.name
        value = next((v for k, v in ap.items() if pt.slug(k) in name), 20.0)
        metrics = {k: (value if k != "AP_SO" else -100.0) for k in pt.METRICS}
        return {
            "metrics": metrics,
            "timing": {"ms_per_frame": 400.0 if "features" in name else 500.0},
        }

    monkeypatch.setattr(pt, "train_row", train_row)
    monkeypatch.setattr(pt, "evaluate_row", evaluate_row)
    monkeypatch.setattr(pt, "ensure_sets", lambda a, b: None)
    monkeypatch.setattr(pt, "deepsort_fitted_overrides", lambda root: ("fitted=1",))


def test_a_killed_run_resumes_from_its_last_finished_row(pt, monkeypatch, tmp_path):
    calls: list[str] = []
    _fake(pt, monkeypatch, calls, fail_at=9)
    args = ["--work", str(tmp_path / "work"), "--out", str(tmp_path / "docs" / "t.md")]
    with pytest.raises(KeyboardInterrupt):
        pt.main(args)
    first = list(calls)
    assert len(pt.Ledger.load(tmp_path / "work" / "rows.json").rows) == 8
    # each training is followed by the evaluations of its checkpoint before the next training
    assert first[0] == "train CMaskTrack R-CNN 0" and first[7] == "train MaskTrack R-CNN 0"
    assert all(c.startswith("eval CMaskTrack R-CNN.ckpt") for c in first[1:7])
    calls.clear()
    _fake(pt, monkeypatch, calls)
    pt.main(args)
    assert calls[0] == first[-1]  # the interrupted row runs again, the finished ones do not
    assert not set(calls) & set(first[:-1])
    ledger = pt.Ledger.load(tmp_path / "work" / "rows.json")
    assert len(ledger.rows) == len(pt.TRAININGS) + 2 * len(pt.EVALUATIONS)
    report = (tmp_path / "docs" / "t.md").read_text()
    assert (tmp_path / "docs" / "t.png").is_file()
    assert "| CMaskTrack R-CNN | 30.00 |" in report and "n/a" in report  # AP_SO had no truth
    assert (
        "| Calibration beats plain MaskTrack R-CNN | holds | AP: val +10.00; second set +10.00 |"
        in report
    )
    assert "| The learned tracker beats IoUTracker+ | holds |" in report
    assert "| The learned tracker beats DeepSORT | no difference |" in report
    # the fitted-noise DeepSORT row gets the fitted overrides instead of the placeholder
    fitted = [c for c in first + calls if "fitted=1" in c]
    assert len(fitted) == 2 and all("tracker=deepsort" in c for c in fitted)
    assert not any(pt.FIT_DEEPSORT in c for c in first + calls)
    # the fusion=features row: AP, AP_HO, ms/frame on val, then the second set
    assert "| features (fast) | 30.00 | 30.00 | 400 |" in report
    assert "| predictions (papers) | 30.00 | 30.00 | 500 |" in report
    assert "14.9" in report  # the paper's figure, in its own labelled column
    # the cost of each training row: its preset, training minutes and streamed ms/frame per set
    assert "| STEm-Seg | `stemseg_cpu` | 0 | 500 | 500 |" in report


def test_cells_and_verdicts_over_seeds(pt, tmp_path):
    assert pt.cell([]) == "-" and pt.cell([-1.0]) == "n/a"
    assert pt.cell([10.0]) == "10.00" and pt.cell([10.0, 14.0]) == "12.00 ± 2.00"
    ledger = pt.Ledger(tmp_path / "rows.json")
    for seed, (a, b) in enumerate([(12.0, 10.0), (9.0, 11.0)]):
        for set_name in ("val", "second"):
            ledger.rows[f"eval|A|{set_name}|{seed}"] = {"metrics": {"AP": a}}
            ledger.rows[f"eval|B|{set_name}|{seed}"] = {"metrics": {"AP": b}}
    assert pt.holds(ledger, "A", "B", [0]) == "holds"
    assert pt.holds(ledger, "A", "B", [1]) == "does not hold"
    assert pt.holds(ledger, "A", "B", [0, 1]) == "mixed"
    assert pt.compare(ledger, "A", "B", [0, 1]) == (
        "val +0.00, per seed -2.00 to +2.00; second set +0.00, per seed -2.00 to +2.00"
    )
    assert pt.holds(ledger, "A", "C", [0]) == "not run"
    for key in ledger.rows:
        ledger.rows[key]["seconds"] = 10.0
    assert ledger.seconds([1]) == 40.0 and ledger.seconds() == 80.0


def test_a_training_killed_part_way_resumes_from_its_last_checkpoint(pt, monkeypatch, tmp_path):
    commands: list[list[str]] = []

    def fake_run(cmd, **kwargs):
        commands.append(cmd)
        run_dir = Path(next(a.split("=", 1)[1] for a in cmd if a.startswith("hydra.run.dir=")))
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"weights")
        return type("Done", (), {"returncode": 0})()

    monkeypatch.setattr(pt.subprocess, "run", fake_run)
    training = pt.TRAININGS[0]
    first = pt.train_row(training, 0, tmp_path, tmp_path / "data")
    assert not any(a.startswith("ckpt_path=") for a in commands[0])  # a fresh run
    again = pt.train_row(training, 0, tmp_path, tmp_path / "data")  # the ledger had no row
    assert commands[1][-1] == f"ckpt_path={first['ckpt']}" and again["ckpt"] == first["ckpt"]


def test_a_partial_ledger_writes_a_report_that_says_what_is_missing(pt, tmp_path):
    ledger = pt.Ledger(tmp_path / "rows.json")
    steps = pt.plan([0])
    for key, _ in steps[:7]:  # CMaskTrack R-CNN trained and evaluated, nothing else
        ledger.rows[key] = {"seconds": 600.0, "metrics": {k: 25.0 for k in pt.METRICS}}
    out = tmp_path / "docs" / "t.md"
    pt.write_report(ledger, [0], out)
    report = out.read_text()
    assert f"**Partial run:** {len(steps) - 7} of {len(steps)} steps" in report
    assert "(trainings left: MaskTrack R-CNN; SipMask-VIS; CSipMask; STEm-Seg;" in report
    assert "| Calibration beats plain MaskTrack R-CNN | not run |" in report
    assert "| CMaskTrack R-CNN | 25.00 |" in report and "| MaskTrack R-CNN | - |" in report
    assert "| CMaskTrack R-CNN | `cmasktrack_cpu` | 10 | - | - |" in report  # no timing recorded
    assert (
        "| MaskTrack R-CNN | `cmasktrack_cpu model.calibration=null system.lr_mult=null` | - |"
        in report
    )


def test_rows_restricts_a_run_to_named_rows_and_the_trainings_they_need(pt, monkeypatch, tmp_path):
    steps = [key for key, _ in pt.plan([1], ["SipMask-VIS", "tracker: SeqTracker"])]
    assert steps == [
        "train|MaskTrack R-CNN|1",
        "eval|tracker: SeqTracker|val|1",
        "eval|tracker: SeqTracker|second|1",
        "train|SipMask-VIS|1",
        "eval|SipMask-VIS|val|1",
        "eval|SipMask-VIS|second|1",
    ]
    with pytest.raises(SystemExit, match="unknown row"):
        pt.plan([0], ["SipMask"])
    calls: list[str] = []
    _fake(pt, monkeypatch, calls)
    args = ["--work", str(tmp_path / "work"), "--out", str(tmp_path / "t.md"), "--seeds", "0"]
    pt.main([*args, "--rows", "CSipMask"])
    assert calls[0] == "train CSipMask 0" and len(calls) == 3
    report = (tmp_path / "t.md").read_text()  # the report still covers every row
    assert "| MaskTrack R-CNN | - |" in report and "| CSipMask | 20.00 |" in report


def test_claims_pair_seeds_and_never_mix_them(pt, tmp_path):
    ledger = pt.Ledger(tmp_path / "rows.json")
    for set_name in ("val", "second"):
        ledger.rows[f"eval|A|{set_name}|0"] = {"metrics": {"AP": 10.0}}
        ledger.rows[f"eval|A|{set_name}|1"] = {"metrics": {"AP": 30.0}}
        ledger.rows[f"eval|B|{set_name}|1"] = {"metrics": {"AP": 20.0}}  # B ran seed 1 only
    assert pt.paired_diffs(ledger, "A", "B", "val", "AP", [0, 1]) == [10.0]
    assert pt.holds(ledger, "A", "B", [0, 1]) == "holds"  # not A's seed 0 against B's seed 1
    assert pt.compare(ledger, "A", "B", [0, 1]) == "val +10.00; second set +10.00"


def test_every_training_row_composes_into_a_model_its_optimiser_fits(pt, tmp_path):
    """Each row's preset + overrides builds, and its lr_mult prefixes name real parameters (the
    ``add`` fusion has no offset branch: its row must drop the preset's multiplier)."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from ovisnet.train import CONFIG_DIR

    for training in pt.TRAININGS:
        overrides = [f"experiment={training.experiment}", *training.overrides]
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("train", overrides=[*overrides, f"paths.output_dir={tmp_path}"])
        model = instantiate(cfg.model, _convert_="all")
        system = instantiate(cfg.system, model=model, _convert_="all")
        groups = system.param_groups()
        assert sum(len(g["params"]) for g in groups) == sum(
            1 for p in model.parameters() if p.requires_grad
        ), training.name
