"""Hydra entry point: ``python -m ovisnet.train experiment=cmasktrack [overrides]``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ovisnet.data.annotations import count_categories
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


def format_table(metrics: dict[str, float], title: str = "") -> str:
    """The AP table (percent) as aligned text."""
    keys = [k for k in METRIC_KEYS if k in metrics]
    head = " ".join(f"{k:>7}" for k in keys)
    row = " ".join(f"{metrics[k]:7.2f}" for k in keys)
    return f"{title}\n{head}\n{row}" if title else f"{head}\n{row}"


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train (and by default evaluate the best checkpoint); returns the final metrics."""
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
            print(format_table(metrics, title))
            if system.last_results_dir is not None:
                print(f"results: {system.last_results_dir}/results.json (+ results.zip)")
    return metrics


def _checkpoint_epoch(path: str) -> int | None:
    """The epoch stored in a Lightning checkpoint (memory-mapped: the weights are not read)."""
    state = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    return state.get("epoch")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Run :func:`train`; returns val/AP for Hydra sweepers."""
    OmegaConf.resolve(cfg)
    metrics = train(cfg)
    return metrics.get("AP")


if __name__ == "__main__":
    main()
