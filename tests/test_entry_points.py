"""The command lines: Hydra train runs, evaluation from a checkpoint, resume, sweeps, SLURM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from omegaconf import OmegaConf

from ovisnet.eval import apply_overrides, evaluate, main, parse_args
from ovisnet.evaluation import evaluate_results
from ovisnet.train import CONFIG_DIR, train

REPO = Path(CONFIG_DIR).parent


def _compose(overrides: list[str], **kwargs):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=overrides, **kwargs)


def _run_module(module: str, args: list[str], **env: str) -> subprocess.CompletedProcess:
    """``python -m module args`` from the repository root; fails the test on a non-zero exit."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "1", **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def cli_run(tiny_synthetic, tiny_train_overrides, tmp_path_factory) -> Path:
    """One real `python -m ovisnet.train` run of CMaskTrack on the tiny set."""
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    _run_module(
        "ovisnet.train",
        ["experiment=cmasktrack_cpu", *tiny_train_overrides, f"hydra.run.dir={run_dir}"],
    )
    return run_dir


@pytest.mark.parametrize("experiment", ["csipmask_cpu", "stemseg_cpu"])
def test_cli_run_of_another_family_is_rebuilt_by_eval_from_its_checkpoint(
    experiment, tiny_synthetic, tiny_sipmask_overrides, tiny_stemseg_overrides, tmp_path
):
    run_dir = tmp_path / "run"
    overrides = tiny_stemseg_overrides if "stemseg" in experiment else tiny_sipmask_overrides
    _run_module(
        "ovisnet.train", [f"experiment={experiment}", *overrides, f"hydra.run.dir={run_dir}"]
    )
    trained = json.loads((run_dir / "results" / "val_epoch000" / "results.json").read_text())
    assert trained  # tracks were written
    ckpt = next((run_dir / "checkpoints").glob("epoch*.ckpt"))
    summary = evaluate(ckpt, output_dir=str(tmp_path / "eval"))
    evaluated = json.loads((Path(summary["results_dir"]) / "results.json").read_text())
    assert evaluated == trained  # the rebuilt model streams exactly as in training
    expected = evaluate_results(tiny_synthetic / "annotations" / "valid.json", evaluated)
    for key, value in summary["metrics"].items():
        assert value == pytest.approx(100.0 * expected[key], abs=1e-9)
    if "stemseg" in experiment:  # no tracker to feed the ground truth to
        with pytest.raises(InstantiationException, match="oracle mode"):
            evaluate(ckpt, output_dir=str(tmp_path / "oracle"), overrides=["system.oracle=true"])
        return
    oracle = evaluate(ckpt, output_dir=str(tmp_path / "oracle"), overrides=["system.oracle=true"])
    assert oracle["metrics"]["AP"] == pytest.approx(100.0)


def test_cli_run_saves_config_checkpoints_and_results(cli_run):
    assert (cli_run / ".hydra" / "config.yaml").is_file()
    assert (cli_run / "checkpoints" / "last.ckpt").is_file()
    assert len(list((cli_run / "checkpoints").glob("epoch*.ckpt"))) == 1
    assert (cli_run / "results" / "val_epoch000" / "results.zip").is_file()
    # the category list travels with the weights (the demo runs without the dataset)
    state = torch.load(cli_run / "checkpoints" / "last.ckpt", map_location="cpu", mmap=True)
    names = [c["name"] for c in state["categories"]]
    assert len(names) == 6 and names[0] == "disc"


def test_eval_from_checkpoint_rebuilds_the_run_and_reproduces_its_validation(
    cli_run, tiny_synthetic, tmp_path, capsys
):
    trained = json.loads((cli_run / "results" / "val_epoch000" / "results.json").read_text())
    ckpt = next((cli_run / "checkpoints").glob("epoch*.ckpt"))
    main([f"ckpt_path={ckpt}", f"output_dir={tmp_path / 'eval'}"])
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    results_dir = Path(summary["results_dir"])
    assert (results_dir / "results.zip").is_file()
    evaluated = json.loads((results_dir / "results.json").read_text())
    assert evaluated == trained  # same weights, same streamed inference, same RLE
    expected = evaluate_results(tiny_synthetic / "annotations" / "valid.json", evaluated)
    for key, value in summary["metrics"].items():
        assert value == pytest.approx(100.0 * expected[key], abs=1e-9)
    assert "AP_HO" in printed and f"{summary['metrics']['AP']:7.2f}" in printed
    # streamed inference time: every val frame counted once, printed per frame
    frames = sum(
        len(v["file_names"])
        for v in json.loads((tiny_synthetic / "annotations" / "valid.json").read_text())["videos"]
    )
    timing = summary["timing"]
    assert timing["frames"] == frames and timing["seconds"] > 0
    assert timing["ms_per_frame"] == pytest.approx(1000 * timing["seconds"] / frames)
    assert f"inference: {timing['ms_per_frame']:.0f} ms/frame over {frames} frames" in printed


def test_eval_overrides_reach_the_rebuilt_run(cli_run, tmp_path):
    ckpt = cli_run / "checkpoints" / "last.ckpt"
    out = evaluate(ckpt, output_dir=str(tmp_path), overrides=["system.oracle=true"])
    # the oracle tracker is fed the ground truth: every annotated track is found exactly
    assert out["metrics"]["AP"] == pytest.approx(100.0)


def test_eval_overrides_need_a_plus_to_add_a_key():
    cfg = OmegaConf.create({"system": {"oracle": False, "tracker": {"nms_iou": None}}})
    out = apply_overrides(
        cfg, ["system.oracle=true", "+system.tracker.max_age=10", "system.tracker.nms_iou=0.5"]
    )
    assert out.system.oracle is True and out.system.tracker.max_age == 10
    assert out.system.tracker.nms_iou == 0.5
    assert cfg.system.oracle is False  # the input is left as it was
    with pytest.raises(ValueError, match=r"'system.orcale' is not in the run config .* \+system"):
        apply_overrides(cfg, ["system.orcale=true"])


def test_eval_arguments_are_checked(tmp_path):
    with pytest.raises(SystemExit, match="ckpt_path"):
        parse_args(["split=val"])
    with pytest.raises(SystemExit, match="split"):
        parse_args(["ckpt_path=x.ckpt", "split=train"])
    with pytest.raises(SystemExit, match="key=value"):
        parse_args(["ckpt_path=x.ckpt", "oops"])
    assert parse_args(["ckpt_path=a.ckpt", "data.eps_test=5"]) == (
        {"ckpt_path": "a.ckpt", "split": "val"},
        ["data.eps_test=5"],
    )
    with pytest.raises(FileNotFoundError, match="does not exist"):
        evaluate(tmp_path / "missing.ckpt")
    stray = tmp_path / "stray.ckpt"
    stray.write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="no run config"):
        evaluate(stray)


def test_resume_from_a_checkpoint_is_exact(tiny_train_overrides, tmp_path):
    def run(out: Path, epochs: int, ckpt: Path | None = None) -> None:
        overrides = [
            "experiment=cmasktrack_cpu",
            *tiny_train_overrides,
            f"paths.output_dir={out}",
            f"trainer.max_epochs={epochs}",
            "evaluate_after_training=false",
            "system.warmup_steps=3",  # the schedule crosses the resume point
        ]
        if ckpt is not None:
            overrides.append(f"ckpt_path={ckpt}")
        train(_compose(overrides))

    run(tmp_path / "straight", 2)
    run(tmp_path / "first", 1)
    run(tmp_path / "resumed", 2, tmp_path / "first" / "checkpoints" / "last.ckpt")

    def final(out: Path) -> dict:
        return torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)

    straight, resumed = final(tmp_path / "straight"), final(tmp_path / "resumed")
    assert straight["epoch"] == resumed["epoch"] == 1
    assert straight["global_step"] == resumed["global_step"] == 4
    for name, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][name]), name
    optimizer_state = straight["optimizer_states"][0]["state"]
    assert optimizer_state  # e.g. AdamW's step, exp_avg, exp_avg_sq per parameter
    for index, state in optimizer_state.items():
        other = resumed["optimizer_states"][0]["state"][index]
        assert state.keys() == other.keys()
        for key, value in state.items():
            assert torch.equal(value, other[key]), (index, key)


def test_slurm_launcher_config_composes():
    cfg = _compose(
        [
            "hydra/launcher=slurm",
            "trainer=ddp",
            "trainer.devices=2",
            "trainer.num_nodes=3",
            "hydra.launcher.partition=gpu",
        ],
        return_hydra_config=True,
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (2, 2, 3)
    assert launcher.partition == "gpu"
    from hydra.utils import get_class

    assert get_class(launcher._target_).__name__ == "SlurmLauncher"  # the plugin is installed


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["masktrack", "csipmask_cpu", "stemseg_cpu"])
def test_multirun_over_two_seeds_with_the_basic_launcher(
    experiment, tiny_train_overrides, tiny_sipmask_overrides, tiny_stemseg_overrides, tmp_path
):
    sweep = tmp_path / "sweep"
    overrides = {"sipmask": tiny_sipmask_overrides, "stemseg": tiny_stemseg_overrides}.get(
        next((k for k in ("sipmask", "stemseg") if k in experiment), ""), tiny_train_overrides
    )
    _run_module(
        "ovisnet.train",
        [
            "-m",
            f"experiment={experiment}",
            *overrides,
            "seed=0,1",
            f"hydra.sweep.dir={sweep}",
        ],
    )
    for job in ("0", "1"):
        assert (sweep / job / "checkpoints" / "last.ckpt").is_file(), job
        assert (sweep / job / ".hydra" / "overrides.yaml").read_text().count(f"seed={job}") == 1
    weights = [
        torch.load(sweep / j / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
        for j in ("0", "1")
    ]
    name = next(iter(weights[0]["state_dict"]))
    assert not torch.equal(weights[0]["state_dict"][name], weights[1]["state_dict"][name])


def _run_eval_cli(args: list[str]) -> dict:
    _run_module("ovisnet.eval", args, OMP_NUM_THREADS="1")
    out = Path(next(a.split("=", 1)[1] for a in args if a.startswith("output_dir=")))
    summary = json.loads((out / "metrics.json").read_text())
    summary["results"] = json.loads((Path(summary["results_dir"]) / "results.json").read_text())
    return summary


@pytest.mark.slow
def test_ddp_evaluation_on_two_gloo_processes_equals_one_process(cli_run, tmp_path):
    from ovisnet.data.synthetic import generate

    root = tmp_path / "data"  # 3 validation videos: the two ranks get 2 and 1
    generate(root, seed=5, num_videos=5, num_frames=4, size=(96, 64), valid_fraction=0.6)
    common = [
        f"ckpt_path={cli_run / 'checkpoints' / 'last.ckpt'}",
        f"data.root={root}",
        "model.rcnn.score_thresh=0.05",  # a 2-step model scores below the preset's 0.5
    ]
    single = _run_eval_cli([*common, f"output_dir={tmp_path / 'single'}"])
    ddp = _run_eval_cli(
        [
            *common,
            f"output_dir={tmp_path / 'ddp'}",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.strategy=ddp",
        ]
    )
    assert single["results"], "the model must produce detections for the comparison to mean much"
    videos = {r["video_id"] for r in single["results"]}
    assert len(videos) >= 2 and {r["video_id"] for r in ddp["results"]} == videos

    def key(r: dict) -> tuple:
        return (r["video_id"], r["category_id"], round(r["score"], 5))

    assert [key(r) for r in sorted(ddp["results"], key=key)] == [
        key(r) for r in sorted(single["results"], key=key)
    ]
    assert sorted(json.dumps(r["segmentations"]) for r in ddp["results"]) == sorted(
        json.dumps(r["segmentations"]) for r in single["results"]
    )
    for name, value in single["metrics"].items():
        assert ddp["metrics"][name] == pytest.approx(value, abs=1e-6), name


@pytest.mark.slow
def test_ddp_evaluation_with_fewer_videos_than_processes(cli_run, tmp_path):
    # the run's own data (tiny_synthetic) has 1 validation video: rank 1 of 2 gets none and
    # contributes no results; the tracker is fed ground truth so that the AP is not 0
    common = [f"ckpt_path={cli_run / 'checkpoints' / 'last.ckpt'}", "system.oracle=true"]
    single = _run_eval_cli([*common, f"output_dir={tmp_path / 'single'}"])
    ddp = _run_eval_cli(
        [
            *common,
            f"output_dir={tmp_path / 'ddp'}",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.strategy=ddp",
        ]
    )
    assert len({r["video_id"] for r in single["results"]}) == 1
    assert single["metrics"]["AP"] > 0
    assert ddp["results"] == single["results"]
    assert ddp["metrics"] == pytest.approx(single["metrics"], abs=1e-6)


def test_last_checkpoint_is_written_in_epochs_without_validation(tiny_train_overrides, tmp_path):
    cfg = _compose(
        [
            "experiment=cmasktrack_cpu",
            *tiny_train_overrides,
            f"paths.output_dir={tmp_path}",
            "trainer.max_epochs=1",
            "trainer.check_val_every_n_epoch=2",
            "evaluate_after_training=false",
        ]
    )
    train(cfg)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert last.is_file()
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["epoch"] == 0
    assert not list((tmp_path / "checkpoints").glob("epoch*.ckpt"))  # nothing was validated
    # the preset's lr_mult: the calibration's offset branch runs at 0.1x the scheduled lr
    lrs = {g["lr_mult"]: g["lr"] for g in state["optimizer_states"][0]["param_groups"]}
    assert set(lrs) == {1.0, 0.1} and lrs[0.1] == pytest.approx(0.1 * lrs[1.0])
