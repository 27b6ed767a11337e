"""Evaluate a trained checkpoint: ``python -m ovisnet.eval ckpt_path=RUN/checkpoints/x.ckpt``.

The model, data and system are rebuilt from the training run's saved Hydra config
(``RUN/.hydra/config.yaml``, found next to the checkpoint's ``checkpoints/`` folder, or given with
``config=PATH``); the weights come from the checkpoint. The split is streamed video by video,
``results.json`` and ``results.zip`` are written, and the AP table is printed when the split has
ground truth.

Arguments are ``key=value`` pairs. The evaluation's own keys:

* ``ckpt_path`` (required): the Lightning checkpoint.
* ``split``: ``val`` (default) or ``test`` (the data config's ``test_ann``, e.g. OVIS test).
* ``config``: the run config, when it is not at ``<run>/.hydra/config.yaml``.
* ``output_dir``: where results go (default ``<run>/eval/<split>_<checkpoint name>``).

Every other ``key=value`` overrides the run config with OmegaConf dot-list syntax, e.g.
``data.root=/data/ovis data.eps_test=5 system.oracle=true trainer.devices=2``. As in Hydra, a key
the run config lacks is an error (a typo must not be silently ignored) unless prefixed with ``+``
(``+system.tracker.max_age=10``: a tracker argument the config does not list).

``tracker=NAME`` (``masktrack``, ``iou``, ``deepsort``, ``seq``: the train command line's config
group ``conf/tracker/``) replaces the run's ``system.tracker`` with ``conf/tracker/NAME.yaml``
before the other overrides, so ``tracker=iou system.tracker.min_iou=0.5`` works in any order.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any, cast

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ovisnet.errors import ConfigError, MissingFileError, report_user_errors
from ovisnet.evaluation.table import format_metrics_table
from ovisnet.lit.system import METRIC_KEYS
from ovisnet.train import CONFIG_DIR, build, check_accelerator, check_data

EVAL_KEYS = ("ckpt_path", "split", "config", "output_dir")
USAGE = __doc__


def split_arguments(
    argv: list[str], keys: tuple[str, ...], required: tuple[str, ...], prog: str, usage: str
) -> tuple[dict[str, str], list[str]]:
    """Split ``key=value`` arguments into a command's own ``keys`` and run-config overrides.

    Raises:
        SystemExit: with the usage, for an argument without ``=`` or a missing required key.
    """
    own: dict[str, str] = {}
    overrides: list[str] = []
    for arg in argv:
        if "=" not in arg:
            raise SystemExit(f"{prog}: expected key=value, got {arg!r}\n\n{usage}")
        key, value = arg.split("=", 1)
        if key in keys:
            own[key] = value
        else:
            overrides.append(arg)
    for key in required:
        if key not in own:
            raise SystemExit(f"{prog}: {key}=... is required\n\n{usage}")
    return own, overrides


def parse_args(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """Split ``key=value`` arguments into the evaluation's keys and run-config overrides."""
    own, overrides = split_arguments(argv, EVAL_KEYS, ("ckpt_path",), "ovisnet.eval", USAGE)
    split = own.setdefault("split", "val")
    if split not in ("val", "test"):
        raise SystemExit(f"ovisnet.eval: split must be val or test, got {split!r}")
    return own, overrides


def run_config(ckpt_path: Path, config: str | None = None) -> Path:
    """The saved Hydra config of the run that wrote ``ckpt_path``."""
    if config is not None:
        path = Path(config)
    else:
        path = ckpt_path.resolve().parent.parent / ".hydra" / "config.yaml"
    if not path.is_file():
        raise MissingFileError(
            f"no run config at {path}: checkpoints written by `python -m ovisnet.train` live in "
            "<run>/checkpoints/ next to <run>/.hydra/config.yaml; pass config=PATH otherwise"
        )
    return path


# -- config groups on a saved run config (Hydra's `group=option` outside Hydra) ---------------
# group name -> the run-config key its option fills (the option files carry `@package` headers)
CONFIG_GROUPS = {"tracker": "system.tracker"}


def group_config(group: str, option: str, config_dir: str | Path = CONFIG_DIR) -> DictConfig:
    """``conf/<group>/<option>.yaml`` as a node (the ``# @package`` header is a comment)."""
    folder = Path(config_dir) / group
    path = folder / f"{option}.yaml"
    if not path.is_file():
        options = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
        raise ConfigError(f"{group}={option}: no such option (available: {options})")
    node = OmegaConf.load(path)
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{path} is not a mapping")
    return node


def apply_group_overrides(
    cfg: DictConfig, overrides: list[str], config_dir: str | Path = CONFIG_DIR
) -> tuple[DictConfig, list[str]]:
    """Apply the ``group=option`` overrides (``tracker=iou``) to a saved run config.

    The option replaces the whole node (``system.tracker``), so keys of the run's former choice
    (e.g. MaskTrack's ``weights`` under DeepSORT) do not leak into it.

    Returns:
        The new config and the remaining (dot-list) overrides, in their order.

    Raises:
        ConfigError: for an unknown option, or ``tracker=`` on a run without a tracker (STEm-Seg
            links clusters with its own ``system.predictor``).
    """
    rest = []
    for item in overrides:
        key, _, value = item.partition("=")
        if key not in CONFIG_GROUPS:
            rest.append(item)
            continue
        target = CONFIG_GROUPS[key]
        if key == "tracker" and OmegaConf.select(cfg, "system.predictor") is not None:
            raise ConfigError(
                f"{item}: this run infers with its own system.predictor (STEm-Seg), which has "
                "no tracker; tracker= applies to the box families (MaskTrack, SipMask)"
            )
        cfg = copy.deepcopy(cfg)  # the caller's config stays as it was
        OmegaConf.update(cfg, target, group_config(key, value, config_dir), merge=False)
    return cfg, rest


def apply_overrides(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """``key=value`` overrides on ``cfg``; ``+key=value`` may add a key, plain ones may not."""
    missing = object()
    for item in overrides:
        key, _, value = item.partition("=")
        add = key.startswith("+")
        key = key.lstrip("+")
        if not key:
            raise ConfigError(f"override {item!r} has no key")
        if not add and OmegaConf.select(cfg, key, default=missing) is missing:
            raise ConfigError(
                f"override {item!r}: {key!r} is not in the run config (a typo?); "
                f"write +{key}={value} to add it"
            )
        cfg = cast(DictConfig, OmegaConf.merge(cfg, OmegaConf.from_dotlist([f"{key}={value}"])))
    return cfg


def load_config(
    config_path: Path, overrides: list[str], output_dir: Path, *, resolve: bool = True
) -> DictConfig:
    """The run config with the overrides applied and ``paths.output_dir`` set to ``output_dir``.

    ``resolve=False`` leaves the interpolations (``${oc.env:OVIS_ROOT,...}``) in place.
    """
    cfg = OmegaConf.load(config_path)
    if not isinstance(cfg, DictConfig):
        raise ValueError(f"{config_path} is not a mapping")
    cfg, overrides = apply_group_overrides(cfg, overrides)
    cfg = apply_overrides(cfg, overrides)
    # the saved config still holds ${hydra:...}; outside Hydra the output dir is set explicitly
    cfg.paths.output_dir = str(output_dir)
    cfg.init_from = None  # the checkpoint holds every weight
    if resolve:
        OmegaConf.resolve(cfg)
    return cfg


def evaluate(
    ckpt_path: str | Path,
    *,
    split: str = "val",
    config: str | None = None,
    output_dir: str | None = None,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Rebuild the run's model, load ``ckpt_path``, stream ``split`` and write its results.

    Returns:
        ``{"metrics": {key: percent}, "results_dir": path}``; metrics are empty for a split
        without ground truth.

    Raises:
        ovisnet.errors.UserError: before anything is built, for a missing checkpoint, run
            config or annotation file, an unknown override, or a GPU trainer without a GPU
            (the message names the fix).
    """
    ckpt = Path(ckpt_path)
    if not ckpt.is_file():
        raise MissingFileError(f"checkpoint {ckpt} does not exist")
    config_path = run_config(ckpt, config)
    out = (
        Path(output_dir)
        if output_dir
        else config_path.parent.parent / "eval" / (f"{split}_{ckpt.stem}")
    )
    cfg = load_config(config_path, overrides or [], out, resolve=False)
    one_device = "" if cfg.trainer.get("devices", 1) == 1 else " trainer.devices=1"
    check_accelerator(cfg.trainer, f"Add trainer.accelerator=cpu{one_device}.")
    if split == "test" and cfg.data.get("test_ann") is None:
        raise ConfigError(
            "split=test needs data.test_ann (e.g. data.test_ann=annotations/test.json)"
        )
    check_data(cfg, [split])  # before resolution: the message names the root's variable
    OmegaConf.resolve(cfg)
    datamodule, system = build(cfg)
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    system.load_state_dict(state["state_dict"])
    system.hparams.results_dir = str(out)
    trainer = instantiate(
        cfg.trainer,
        logger=False,
        callbacks=[],
        enable_checkpointing=False,
        default_root_dir=str(out),
    )
    if split == "val":
        trainer.validate(system, datamodule=datamodule)
    else:
        trainer.test(system, datamodule=datamodule)
    metrics = dict(system.last_metrics)
    results_dir = system.last_results_dir
    if trainer.is_global_zero:
        out.mkdir(parents=True, exist_ok=True)
        summary = {
            "ckpt_path": str(ckpt),
            "split": split,
            "epoch": state.get("epoch"),
            "results_dir": str(results_dir),
            "metrics": metrics,
            "timing": system.last_timing,
        }
        (out / "metrics.json").write_text(json.dumps(summary, indent=2))
        print(f"results: {results_dir}/results.json (+ results.zip)")
        if system.last_timing:
            t = system.last_timing
            print(
                f"inference: {t['ms_per_frame']:.0f} ms/frame over {t['frames']} frames "
                "(model, tracker, masks; data loading and scoring excluded)"
            )
        if metrics:
            title = f"{split} split, {ckpt.name}, percent:"
            print(
                format_metrics_table(metrics, METRIC_KEYS, title=title, percent=True, one_row=True)
            )
        else:
            print(f"the {split} split has no ground truth: no metrics")
    return {"metrics": metrics, "results_dir": results_dir}


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    args = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in args):
        print(USAGE)
        return
    own, overrides = parse_args(args)
    with report_user_errors("ovisnet.eval"):
        evaluate(
            own["ckpt_path"],
            split=own["split"],
            config=own.get("config"),
            output_dir=own.get("output_dir"),
            overrides=overrides,
        )


if __name__ == "__main__":
    main()
