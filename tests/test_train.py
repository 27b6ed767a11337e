"""Config composition of every experiment and a CPU end-to-end run on a tiny synthetic set."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from ovisnet.evaluation import evaluate_results
from ovisnet.train import CONFIG_DIR, build, train

EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=overrides)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_instantiates(experiment, tmp_path):
    cfg = _compose(
        [
            f"experiment={experiment}",
            "data=synthetic",
            "trainer=cpu",
            f"paths.output_dir={tmp_path}",
        ]
    )
    assert cfg.model.num_classes == cfg.data.num_classes == 6
    model = instantiate(cfg.model, _convert_="all")
    system = instantiate(cfg.system, model=model, _convert_="all")
    assert system.model is model
    has_tfc = experiment.startswith(("cmasktrack", "csipmask"))
    assert (getattr(model, "calibration", None) is not None) == has_tfc
    family = {"sipmask": "SipMaskVIS", "stemseg": "STEmSeg"}
    expected = next((v for k, v in family.items() if k in experiment), "MaskTrackRCNN")
    assert type(model).__name__ == expected
    datamodule = instantiate(cfg.data, _convert_="all")
    if expected == "STEmSeg":  # clips in, the clip predictor out, no tracker
        assert datamodule.hparams.mode == "clip" and datamodule.hparams.clip_length == 8
        assert system.tracker_factory is None and system.predictor_factory is not None
        if experiment != "stemseg_cpu":  # the official schedule: SGD Nesterov, decay in steps
            assert cfg.system.optimizer.nesterov and cfg.trainer.max_steps == 160_000
            assert dict(cfg.system.lr_decay) == {"start": 60000, "steps": 100000, "factor": 0.01}
        if experiment == "stemseg_x101":
            assert cfg.data.image_clips.ratio == 0.4
        return
    assert system.paste == model.paste  # each family pastes its own mask format
    assert datamodule.hparams.eps_train == 5


@pytest.mark.parametrize(
    "experiment", ["masktrack", "cmasktrack_cpu", "sipmask", "csipmask_cpu", "stemseg_cpu"]
)
def test_train_and_evaluate_end_to_end(
    experiment,
    tiny_synthetic,
    tiny_train_overrides,
    tiny_sipmask_overrides,
    tiny_stemseg_overrides,
    tmp_path,
):
    overrides = (
        tiny_sipmask_overrides
        if "sipmask" in experiment
        else tiny_stemseg_overrides
        if "stemseg" in experiment
        else tiny_train_overrides
    )
    cfg = _compose([f"experiment={experiment}", *overrides, f"paths.output_dir={tmp_path}"])
    metrics = train(cfg)
    assert set(metrics) >= {"AP", "AP50", "AR1", "AR10", "AP_SO", "AP_MO", "AP_HO"}
    written = sorted((tmp_path / "results").glob("val_epoch*/results.json"))
    assert written and (written[-1].parent / "results.zip").is_file()
    results = json.loads(written[-1].read_text())
    if "sipmask" in experiment or "stemseg" in experiment:
        assert results  # tracks were written: the comparison below is not vacuous
    assert all(len(r["segmentations"]) == 5 for r in results)
    # the printed table is the evaluator's verdict on the written results.json
    recomputed = evaluate_results(tiny_synthetic / "annotations" / "valid.json", results)
    for key, value in metrics.items():
        assert value == pytest.approx(100.0 * recomputed[key], abs=1e-9)
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


def test_lr_mult_param_groups(tmp_path):
    cfg = _compose(["experiment=cmasktrack_cpu", f"paths.output_dir={tmp_path}"])
    assert dict(cfg.system.lr_mult) == {"calibration.offset": 0.1}  # the preset's
    model = instantiate(cfg.model, _convert_="all")
    mults = {"calibration.offset": 0.1, "calibration.offset_head": 0.5}
    system = instantiate(cfg.system, model=model, lr_mult=mults, _convert_="all")
    groups = system.param_groups()
    names = {id(p): n for n, p in model.named_parameters()}
    by_mult = {g["lr_mult"]: sorted(names[id(p)] for p in g["params"]) for g in groups}
    assert set(by_mult) == {1.0, 0.5, 0.1}
    # the longest prefix wins: the offset head at 0.5, the other offset convs at 0.1
    assert by_mult[0.5] == [
        "calibration.offset_head.bias",
        "calibration.offset_head.weight",
    ]
    assert by_mult[0.1] == [
        f"calibration.offset_convs.{i}.{k}" for i in (0, 2, 4) for k in ("bias", "weight")
    ]
    assert sum(len(g["params"]) for g in groups) == sum(1 for _ in model.parameters())
    bad = instantiate(cfg.system, model=model, lr_mult={"calibration.nothing": 0.1})
    with pytest.raises(ValueError, match="match no trainable parameter"):
        bad.param_groups()


def test_sipmask_recipe_puts_biases_at_double_lr_without_weight_decay(tmp_path):
    cfg = _compose(["experiment=csipmask", "data=synthetic", f"paths.output_dir={tmp_path}"])
    assert cfg.system.bias_lr_mult == 2.0 and cfg.system.bias_weight_decay == 0.0
    model = instantiate(cfg.model, _convert_="all")
    system = instantiate(cfg.system, model=model, _convert_="all")
    groups = system.param_groups()
    names = {id(p): n for n, p in model.named_parameters()}
    by_key = {
        (g["lr_mult"], g.get("weight_decay")): [names[id(p)] for p in g["params"]] for g in groups
    }
    assert set(by_key) == {(1.0, None), (2.0, 0.0)}
    assert all(n.endswith(".bias") for n in by_key[(2.0, 0.0)])
    assert not any(n.endswith(".bias") for n in by_key[(1.0, None)])
    assert "head.cls.bias" in by_key[(2.0, 0.0)] and "head.cls.weight" in by_key[(1.0, None)]
    optimizer = system.optimizer_factory(groups)
    assert sorted(g["weight_decay"] for g in optimizer.param_groups) == [0.0, 1e-4]


def test_calibration_health_is_logged_and_a_dead_calibration_warns(
    tiny_synthetic, tiny_train_overrides, tmp_path
):
    cfg = _compose(
        [
            "experiment=cmasktrack_cpu",
            *tiny_train_overrides,
            "trainer.precision=32-true",
            "trainer.log_every_n_steps=1",
            f"paths.output_dir={tmp_path}",
        ]
    )
    datamodule, system = build(cfg)
    with torch.no_grad():  # the dead state: every deformable tap far outside the maps
        system.model.calibration.offset_head.bias.fill_(1e5)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=2,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        log_every_n_steps=1,
    )
    with pytest.warns(UserWarning, match="calibration adds 0.00e"):
        trainer.fit(system, datamodule=datamodule)
    logged = trainer.callback_metrics
    assert float(logged["train/calibration/share"]) == 0.0
    assert float(logged["train/calibration/offset_abs"]) > 1e4


@pytest.mark.parametrize(
    ("mode", "offline"),
    [(None, True), ("offline", True), ("dryrun", True), ("online", False), ("disabled", False)],
)
def test_wandb_logger_is_offline_unless_the_user_sets_a_mode(mode, offline, monkeypatch, tmp_path):
    if mode is None:
        monkeypatch.delenv("WANDB_MODE", raising=False)
    else:
        monkeypatch.setenv("WANDB_MODE", mode)
    cfg = _compose(["logger=wandb", f"paths.output_dir={tmp_path}"])
    assert cfg.logger.wandb.offline is offline


def test_lr_schedule_warmup_steps_and_exponential_decay():
    from ovisnet.lit.system import warmup_multistep

    mmdet = {"warmup_steps": 500, "warmup_ratio": 1 / 3, "milestones": [800, 1100]}
    assert warmup_multistep(0, **mmdet) == pytest.approx(1 / 3)
    assert warmup_multistep(250, **mmdet) == pytest.approx(2 / 3)
    assert warmup_multistep(500, **mmdet) == 1.0
    assert warmup_multistep(800, **mmdet) == pytest.approx(0.1)
    assert warmup_multistep(1100, **mmdet) == pytest.approx(0.01)
    # STEm-Seg: constant until 60k, then exponential down to x0.01 at 160k, then flat
    stemseg = {"warmup_steps": 0, "warmup_ratio": 1.0, "milestones": []}
    decay = {"start": 60_000, "steps": 100_000, "factor": 0.01}
    assert warmup_multistep(60_000, **stemseg, decay=decay) == 1.0
    assert warmup_multistep(110_000, **stemseg, decay=decay) == pytest.approx(0.1)
    assert warmup_multistep(160_000, **stemseg, decay=decay) == pytest.approx(0.01)
    assert warmup_multistep(200_000, **stemseg, decay=decay) == pytest.approx(0.01)


class _Interrupt(RuntimeError):
    """The simulated crash / preemption of the interrupted run."""


class _BatchRecorder(L.Callback):
    """Records what every training step trains on; optionally dies before step ``crash_at``."""

    def __init__(self, seen: list, crash_at: int | None = None) -> None:
        self.seen, self.crash_at = seen, crash_at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.crash_at:
            raise _Interrupt(f"killed before step {self.crash_at + 1}")
        key = (batch.video_ids, batch.frame_indices, int(batch.images.sum()))
        self.seen.append((trainer.current_epoch, batch_idx, key))


def test_resume_from_a_mid_epoch_last_checkpoint_is_exact(
    tiny_train_overrides, monkeypatch, tmp_path
):
    """One epoch of 2 steps, last.ckpt after every step. A run killed before step 2 resumes from
    the last.ckpt of step 1, in the middle of the epoch: it must train on exactly the batch that
    the uninterrupted run trained on at step 2 and end with bitwise the same weights and
    optimiser state (the same ops on the same inputs in the same order on one CPU, and the random
    state of torch, NumPy and Python restored from the checkpoint). Later epochs and loader
    workers: tests/test_datasets.py, with a stand-in model."""
    import ovisnet.train as entry

    original = entry.build_trainer

    def run(out: Path, seen: list, crash_at: int | None = None, ckpt: Path | None = None):
        def build_trainer(cfg):
            trainer = original(cfg)
            trainer.callbacks.append(_BatchRecorder(seen, crash_at))
            return trainer

        overrides = [
            "experiment=cmasktrack_cpu",
            *tiny_train_overrides,
            f"paths.output_dir={out}",
            "trainer.check_val_every_n_epoch=2",  # no validation: training state only
            "checkpoint_every_n_steps=1",
            "evaluate_after_training=false",
            "system.warmup_steps=5",  # the schedule crosses the resume point
        ]
        if ckpt is not None:
            overrides.append(f"ckpt_path={ckpt}")
        with monkeypatch.context() as m:
            m.setattr(entry, "build_trainer", build_trainer)
            train(_compose(overrides))

    straight, interrupted, resumed = [], [], []
    run(tmp_path / "straight", straight)
    with pytest.raises(_Interrupt):
        run(tmp_path / "crashed", interrupted, crash_at=1)
    last = tmp_path / "crashed" / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["global_step"] == 1 and state["epoch"] == 0  # 1 of the 2 batches of epoch 0
    assert state["VISDataModule"] == {"train": {"epoch": 0, "samples": 2}}  # where to go on
    run(tmp_path / "resumed", resumed, ckpt=last)

    assert len(straight) == 2 and interrupted == straight[:1]
    assert resumed == straight[1:]  # nothing repeated, nothing skipped
    assert straight[1][:2] == (0, 1)

    def final(out: Path) -> dict:
        return torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)

    a, b = final(tmp_path / "straight"), final(tmp_path / "resumed")
    assert a["global_step"] == b["global_step"] == 2
    for name, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][name]), name
    for index, opt_state in a["optimizer_states"][0]["state"].items():
        for key, value in opt_state.items():
            assert torch.equal(value, b["optimizer_states"][0]["state"][index][key]), (index, key)
