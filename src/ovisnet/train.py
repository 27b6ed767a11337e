"""Hydra entry point: ``python -m ovisnet.train experiment=cmasktrack [overrides]``."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ovisnet.data.annotations import count_categories
from ovisnet.errors import ConfigError, MissingFileError, report_user_errors
from ovisnet.evaluation.table import format_metrics_table
from ovisnet.lit.system import METRIC_KEYS

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def wandb_offline() -> bool:
    """W&B runs offline unless the user chose a mode with ``WANDB_MODE`` (e.g. ``online``).

    Lightning's ``WandbLogger(offline=True)`` overwrites ``WANDB_MODE``, so the choice has to be
    made here (the ``${ovisnet.wandb_offline:}`` resolver of ``conf/logger/wandb.yaml``).
    """
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    return mode in ("", "offline", "dryrun")


OmegaConf.register_new_resolver("ovisnet.wandb_offline", wandb_offline, replace=True)


def num_categories(root: str, ann: str) -> int:
    """Category count of the annotation file ``ann`` (absolute, or relative to ``root``).

    The ``${ovisnet.num_categories:${data.root},${data.train_ann}}`` resolver of
    ``conf/data/custom.yaml``: ``num_classes`` follows the user's file instead of being typed.
    """
    path = Path(ann)
    return count_categories(path if path.is_absolute() else Path(root) / path)


# cached: the file is read once per config, not at every access of data / model num_classes
OmegaConf.register_new_resolver(
    "ovisnet.num_categories", num_categories, replace=True, use_cache=True
)


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, L.LightningModule]:
    """Instantiate the DataModule, the plain model and the system around it.

    ``init_from`` (``coco``, a checkpoint path, or null) initialises the model before the
    system wraps it; the load summary is printed.
    """
    datamodule = instantiate(cfg.data, _convert_="all")
    model = instantiate(cfg.model, _convert_="all")
    if cfg.get("init_from"):
        from ovisnet.models.checkpoint import init_model

        print(init_model(model, cfg.init_from))
    system = instantiate(cfg.system, model=model, _convert_="all")
    return datamodule, system


def build_trainer(cfg: DictConfig) -> L.Trainer:
    """The Lightning Trainer with the configured callbacks and loggers."""
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()]
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)


TRAIN_GPU_FIX = (
    "Add trainer=cpu to train on the CPU, or run `make train` for the CPU preset on the "
    "synthetic set."
)


def gpus_available(accelerator: str) -> int:
    """How many devices of Lightning's ``accelerator`` (``gpu``: CUDA, else Apple MPS) exist."""
    from lightning.pytorch.accelerators import CUDAAccelerator, MPSAccelerator

    cuda = CUDAAccelerator.auto_device_count() if CUDAAccelerator.is_available() else 0
    if cuda or accelerator == "cuda":
        return cuda
    return MPSAccelerator.auto_device_count() if MPSAccelerator.is_available() else 0


def check_accelerator(trainer: DictConfig, fix: str) -> None:
    """Raise :class:`ConfigError` naming ``fix`` if the trainer asks for GPUs this machine lacks.

    Lightning would stop later with "No supported gpu backend found!" or a device list, with a
    traceback; the check runs before anything is built.
    """
    accelerator = str(trainer.get("accelerator", "auto"))
    if accelerator not in ("gpu", "cuda"):
        return
    found = gpus_available(accelerator)
    if found == 0:
        raise ConfigError(
            f"no GPU found, but this run uses one (trainer.accelerator={accelerator}). {fix}"
        )
    devices = trainer.get("devices", 1)
    if isinstance(devices, int) and devices > found:
        raise ConfigError(
            f"trainer.devices={devices}, but this machine has {found} GPU(s). "
            f"Add trainer.devices={found}."
        )


# README sections that explain where the data of a data config goes, by the root's variable
_README_SECTION = {"VIS_ROOT": "Train on your own videos"}


def check_data(cfg: DictConfig, splits: Sequence[str]) -> None:
    """Raise :class:`MissingFileError` naming the fix if an annotation file of a split is missing.

    A synthetic data config is skipped (``prepare_data`` generates it). Called before ``cfg``
    is resolved, the message names the environment variable that ``data.root`` reads.
    """
    if cfg.data.get("synthetic") is not None:
        return
    raw_root = OmegaConf.to_container(cfg.data, resolve=False).get("root")  # type: ignore[union-attr]
    match = re.fullmatch(r"\$\{oc\.env:(\w+)\b.*\}", str(raw_root))
    env = match.group(1) if match else None
    root = Path(str(cfg.data.root))
    for split in splits:
        ann = cfg.data.get(f"{split}_ann")
        if ann is None:
            continue
        path = Path(ann) if Path(ann).is_absolute() else root / ann
        if not path.is_file():
            via = f" (or {env})" if env else ""
            section = _README_SECTION.get(env or "", "Using a real OVIS download")
            raise MissingFileError(
                f"annotation file not found: {path.absolute()}. Point data.root=...{via} at the "
                f'dataset folder; see the README section "{section}".'
            )


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train (and by default evaluate the best checkpoint); returns the final metrics.

    ``cfg`` is checked, then resolved in place.

    Raises:
        ovisnet.errors.UserError: before anything is built, when the machine has no GPU for a
            GPU trainer or an annotation file is missing (the message names the fix).
    """
    # checked before resolution: the message can name the variable that data.root reads
    check_accelerator(cfg.trainer, TRAIN_GPU_FIX)
    check_data(cfg, ["train", "val"])
    OmegaConf.resolve(cfg)
    L.seed_everything(cfg.seed, workers=True)
    datamodule, system = build(cfg)
    trainer = build_trainer(cfg)
    trainer.fit(system, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics: dict[str, Any] = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if cfg.get("evaluate_after_training") and datamodule.hparams.val_ann is not None:
        checkpoint = trainer.checkpoint_callback
        best = checkpoint.best_model_path if checkpoint is not None else ""
        if best and _checkpoint_epoch(best) == system.last_eval_epoch and system.last_metrics:
            title = f"validation (best checkpoint {Path(best).name}, its own validation), percent:"
        else:
            trainer.validate(system, datamodule=datamodule, ckpt_path="best" if best else None)
            title = f"validation ({Path(best).name if best else 'last weights'}), percent:"
        metrics = dict(system.last_metrics)
        if trainer.is_global_zero and metrics:
            print(
                format_metrics_table(metrics, METRIC_KEYS, title=title, percent=True, one_row=True)
            )
            if system.last_results_dir is not None:
                print(f"results: {system.last_results_dir}/results.json (+ results.zip)")
    return metrics


def _checkpoint_epoch(path: str) -> int | None:
    """The epoch stored in a Lightning checkpoint (memory-mapped: the weights are not read)."""
    state = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    return state.get("epoch")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Run :func:`train`; returns val/AP for Hydra sweepers.

    An expected user error (:class:`ovisnet.errors.UserError`: no GPU, no data, ...) prints one
    line naming the fix and exits with status 2; anything else keeps its traceback.
    """
    with report_user_errors("ovisnet.train"):
        metrics = train(cfg)
    return metrics.get("AP")


if __name__ == "__main__":
    main()
