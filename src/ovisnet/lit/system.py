"""The Lightning "system" around a plain video instance segmentation model.

It owns the optimiser, the schedule, the logging and the streamed whole-video evaluation; the
model (an ``nn.Module`` with ``loss`` / ``extract_features`` / ``detect`` / ``embed``) knows
nothing of Lightning.
"""

from __future__ import annotations

import math
import random
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from ovisnet.errors import ConfigError
from ovisnet.evaluation import GroundTruth, evaluate_results
from ovisnet.evaluation.formatting import write_results
from ovisnet.structures import ClipBatch
from ovisnet.tracking.predictor import (
    FrameTracker,
    OfflineTracker,
    StreamPredictor,
    VideoPredictor,
)

# Below this share (calibration output / query magnitude) the calibration counts as dead.
DEAD_CALIBRATION_SHARE = 1e-3

# Logged validation metrics (percent), in the order of the printed table.
METRIC_KEYS = ("AP", "AP50", "AP75", "AR1", "AR10", "AP_SO", "AP_MO", "AP_HO")


def warmup_multistep(
    step: int,
    *,
    warmup_steps: int,
    warmup_ratio: float,
    milestones: list[int],
    gamma: float = 0.1,
    decay: dict[str, float] | None = None,
) -> float:
    """LR factor: linear warm-up from ``warmup_ratio`` over ``warmup_steps``, then ×gamma steps.

    ``milestones`` are optimiser steps (the mmdet recipe: warm-up 500 iterations from 1/3,
    ×0.1 at epochs 8 and 11). ``decay = {start, steps, factor}`` adds an exponential decay that
    begins at step ``start`` and reaches ``factor`` after ``steps`` more steps, then stays there
    (STEm-Seg: constant until 60k, ×0.01 at 160k).
    """
    factor = gamma ** sum(step >= m for m in milestones)
    if decay is not None:
        progress = min(max(step - decay["start"], 0) / decay["steps"], 1.0)
        factor *= decay["factor"] ** progress
    if step < warmup_steps:
        factor *= warmup_ratio + (1.0 - warmup_ratio) * step / warmup_steps
    return factor


def check_tracker_factory(tracker: Callable[[], Any]) -> None:
    """Build one tracker from the factory; a wrong argument becomes a message naming the fix."""
    try:
        tracker()
    except TypeError as error:
        raise ConfigError(
            f"system.tracker cannot be built: {error}. A preset's system.tracker.* settings "
            "apply to its own tracker (e.g. `weights` to masktrack / iou / seq, not deepsort): "
            "drop them with ~system.tracker.weights (train) or pick the tracker's own keys"
        ) from error


class VISSystem(L.LightningModule):
    """Train with the model's losses; validate by streaming whole videos through a predictor.

    The per-family inference loop is the seam: by default each video gets a
    :class:`~ovisnet.tracking.predictor.VideoPredictor` (frame by frame + the online tracker, the
    box families); ``predictor`` replaces it with another
    :class:`~ovisnet.tracking.predictor.StreamPredictor`, e.g. STEm-Seg's clip predictor.

    Args:
        model: the plain model.
        optimizer: factory ``params -> torch.optim.Optimizer`` (Hydra ``_partial_``).
        tracker: factory ``() -> tracker`` (Hydra ``_partial_``, config group ``tracker=``:
            ``OnlineTracker``, ``IoUTracker``, ``DeepSORTTracker`` or the offline
            ``SeqTracker``), one call per video, for the default predictor (None with a
            ``predictor`` that needs none). Called once here, so that a wrong argument fails
            before training.
        paste: mask pasting function (``instances, image_size=, original_size= ->
            instances``); None (the default) uses the model's own ``paste`` method, so a model
            swap never meets the other family's mask format.
        predictor: factory ``(batch, model, category_ids) -> StreamPredictor`` building a
            video's predictor from its first evaluation batch (Hydra ``_partial_``, e.g.
            ``ClipPredictor.for_video``); None: the default predictor.
        warmup_steps: linear warm-up length in optimiser steps.
        warmup_ratio: LR factor at step 0.
        lr_steps: epochs after which the LR is multiplied by ``lr_gamma``.
        lr_gamma: the step factor.
        lr_decay: optional exponential decay in optimiser steps, ``{start, steps, factor}``
            (see :func:`warmup_multistep`).
        eps_test: test reference distance of calibrated models.
        lr_mult: learning-rate multipliers by parameter-name prefix inside the model, e.g.
            ``{"calibration.offset_head": 0.1}`` (the longest matching prefix wins; every
            prefix must match a trainable parameter).
        oracle: feed ground truth to the tracker instead of detections (OVIS oracle study).
        results_dir: where each validation's ``results.json`` / ``results.zip`` go (default:
            ``<trainer.default_root_dir>/results``).
        bias_lr_mult: extra learning-rate factor of every parameter named ``*.bias`` (the
            SipMask recipe: 2), on top of ``lr_mult``.
        bias_weight_decay: weight decay of the ``*.bias`` parameters (the SipMask recipe: 0);
            None keeps the optimiser's.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        tracker: Callable[[], FrameTracker | OfflineTracker] | None = None,
        paste: Callable[..., Any] | None = None,
        *,
        predictor: Callable[..., StreamPredictor] | None = None,
        warmup_steps: int = 500,
        warmup_ratio: float = 1.0 / 3.0,
        lr_steps: tuple[int, ...] = (8, 11),
        lr_gamma: float = 0.1,
        lr_decay: dict[str, float] | None = None,
        eps_test: int = 3,
        oracle: bool = False,
        results_dir: str | None = None,
        lr_mult: dict[str, float] | None = None,
        bias_lr_mult: float = 1.0,
        bias_weight_decay: float | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model", "optimizer", "tracker", "paste", "predictor"])
        if predictor is None and tracker is None:
            raise ValueError("the default (frame by frame) predictor needs a tracker factory")
        if predictor is not None and oracle:
            raise ValueError(
                "oracle mode feeds ground truth to the online tracker; it is not available "
                "with a custom predictor (STEm-Seg has no tracker)"
            )
        self.model = model
        self.optimizer_factory = optimizer
        if tracker is not None:
            check_tracker_factory(tracker)
        self.tracker_factory = tracker
        self.predictor_factory = predictor
        self.paste = paste if paste is not None else getattr(model, "paste", None)
        self._predictors: dict[int, StreamPredictor] = {}
        self._results: list[dict[str, Any]] = []
        self._ground_truth: dict[str, GroundTruth] = {}  # parsed once per split
        self.last_metrics: dict[str, float] = {}
        # the last evaluation's results (RLE entries) and where they were written, for callbacks
        self.last_results: list[dict[str, Any]] = []
        self.last_results_dir: Path | None = None
        self.last_eval_epoch: int | None = None
        # streamed inference of the last evaluation on this rank: frames and seconds spent in the
        # predictors (model, tracker, mask pasting, RLE), data loading and scoring excluded
        self.last_timing: dict[str, float] = {}
        self._timing = [0, 0.0]
        self._warned_dead_calibration = False
        self._warned_bad_frames: set[str] = set()

    # -- training -----------------------------------------------------------------------------
    def training_step(self, batch: ClipBatch, batch_idx: int) -> torch.Tensor:
        losses = self.model.loss(batch)
        total = sum(losses.values())
        if not torch.isfinite(total):
            bad = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items())
            raise FloatingPointError(
                f"non-finite training loss at step {self.global_step} ({bad}): the run diverged; "
                "lower system.optimizer.lr or lengthen system.warmup_steps"
            )
        bs = len(batch)
        for key, value in losses.items():
            self.log(f"train/{key}", value, batch_size=bs)
        self.log("train/loss", total, prog_bar=True, batch_size=bs)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=bs)
        self._log_calibration_health(bs)
        self._log_bad_samples(batch, bs)
        return total

    def _log_bad_samples(self, batch: ClipBatch, batch_size: int) -> None:
        """``data.bad_frames=skip``: warn once per bad frame, log ``train/bad_samples`` (the
        samples replaced in the epoch, summed over ranks)."""
        skipped = getattr(batch, "skipped", None)
        if skipped is None:  # bad_frames=error: the batch has no such field
            return
        for message in dict.fromkeys(skipped):
            if message not in self._warned_bad_frames:
                self._warned_bad_frames.add(message)
                warnings.warn(f"skipped a training sample: {message}", stacklevel=2)
        self.log(
            "train/bad_samples",
            float(len(skipped)),
            on_step=False,
            on_epoch=True,
            reduce_fx="sum",
            sync_dist=True,
            batch_size=batch_size,
        )

    def _log_calibration_health(self, batch_size: int) -> None:
        """Log ``train/calibration/{offset_abs,share}`` and warn once if the calibration died."""
        calibration = getattr(self.model, "calibration", None)
        stats = calibration.pop_stats() if hasattr(calibration, "pop_stats") else {}
        for key, value in stats.items():
            self.log(f"train/calibration/{key}", value, batch_size=batch_size)
        every = self.trainer.log_every_n_steps  # one host sync per logging interval, not per step
        if "share" in stats and not self._warned_dead_calibration and self.global_step % every == 0:
            share = float(stats["share"])
            if share < DEAD_CALIBRATION_SHARE:
                self._warned_dead_calibration = True
                rank_zero_warn(
                    f"step {self.global_step}: the temporal feature calibration adds "
                    f"{share:.2e} of the query features' magnitude (mean |offset| "
                    f"{float(stats['offset_abs']):.3g} px): its deformable taps sample outside "
                    "the feature maps and it receives no gradient. Lower the offset branch's lr "
                    "(system.lr_mult: {calibration.offset: 0.1}) or the learning rate."
                )

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer_factory(self.param_groups())
        for group in optimizer.param_groups:  # before the scheduler records the base lrs
            group["lr"] *= group["lr_mult"]
        steps_per_epoch = max(1, math.ceil(self.trainer.estimated_stepping_batches))
        if self.trainer.max_epochs and self.trainer.max_epochs > 0:
            steps_per_epoch = max(1, steps_per_epoch // self.trainer.max_epochs)
        hp = self.hparams
        milestones = [e * steps_per_epoch for e in hp.lr_steps]

        def schedule(step: int) -> float:
            return warmup_multistep(
                step,
                warmup_steps=hp.warmup_steps,
                warmup_ratio=hp.warmup_ratio,
                milestones=milestones,
                gamma=hp.lr_gamma,
                decay=hp.get("lr_decay"),
            )

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        lr_scheduler = {"scheduler": scheduler, "interval": "step"}
        return {"optimizer": optimizer, "lr_scheduler": lr_scheduler}

    def param_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters grouped by learning-rate multiplier and bias treatment.

        Returns:
            One ``{"params": [...], "lr_mult": m}`` group per multiplier in use (``lr_mult``
            prefixes, times ``bias_lr_mult`` for biases), biases in their own groups with
            ``weight_decay`` set when ``bias_weight_decay`` is given; the optimiser keeps the
            extra key and :meth:`configure_optimizers` scales each group's ``lr``.
        """
        hp = self.hparams
        mults = dict(hp.get("lr_mult") or {})
        bias_mult = float(hp.get("bias_lr_mult", 1.0))
        bias_decay = hp.get("bias_weight_decay")
        split_biases = bias_mult != 1.0 or bias_decay is not None
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        unused = [k for k in mults if not any(n.startswith(k) for n, _ in named)]
        if unused:
            raise ValueError(
                f"lr_mult prefixes match no trainable parameter: {unused} (a typo, or a part "
                "this model does not have: model.calibration.fusion=add has no offset branch "
                "and calibration=null no calibration; drop them with system.lr_mult=null)"
            )
        groups: dict[tuple[float, bool], list[torch.nn.Parameter]] = {}
        for name, param in named:
            matches = [k for k in mults if name.startswith(k)]
            mult = float(mults[max(matches, key=len)]) if matches else 1.0
            is_bias = split_biases and name.endswith(".bias")
            groups.setdefault((mult * bias_mult if is_bias else mult, is_bias), []).append(param)
        out = []
        for (mult, is_bias), params in groups.items():
            group: dict[str, Any] = {"params": params, "lr_mult": mult}
            if is_bias and bias_decay is not None:
                group["weight_decay"] = float(bias_decay)
            out.append(group)
        return out

    # -- exact resume ---------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the random generators (RPN / R-CNN sampling draw from torch's global RNG)."""
        # plain containers and tensors only: Lightning loads checkpoints with weights_only=True
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        version, internal, gauss_next = random.getstate()
        states: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
            "python": [version, list(internal), gauss_next],
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            states["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint["rng_states"] = states
        categories = self._categories()
        if categories is not None:  # for inference without the dataset (python -m ovisnet.demo)
            checkpoint["categories"] = categories

    def _categories(self) -> list[dict[str, Any]] | None:
        """``[{"id", "name"}]`` of the categories, in label order, from a loaded split."""
        trainer = self._trainer  # None outside a Trainer (self.trainer would raise)
        splits = getattr(getattr(trainer, "datamodule", None), "splits", None) or {}
        for name in ("train", "val", "test"):
            if name in splits:
                return [{"id": c.id, "name": c.name} for c in splits[name].categories]
        return None

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the random generators saved by :meth:`on_save_checkpoint` (if any)."""
        states = checkpoint.get("rng_states")
        if not states:
            return
        torch.set_rng_state(states["torch"])
        kind, keys, pos, has_gauss, gauss = states["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        version, internal, gauss_next = states["python"]
        random.setstate((version, tuple(internal), gauss_next))
        if "cuda" in states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["cuda"])

    # -- streamed evaluation ------------------------------------------------------------------
    def _split(self, prefix: str) -> str:
        if prefix == "test" and self.trainer.datamodule.hparams.test_ann is not None:
            return "test"
        return "val"

    def _eval_step(self, batch: ClipBatch | None, prefix: str) -> None:
        if batch is None:  # a rank without videos: it only joins the gathering at the epoch end
            return
        if len(batch) != 1 or batch.images.shape[1] != 1:
            raise ValueError("evaluation streams one frame per batch")
        video_id, t = batch.video_ids[0], batch.frame_indices[0][0]
        if t == 0:
            ann = self.trainer.datamodule.load_split(self._split(prefix))
            self._predictors[video_id] = self.make_predictor(batch, [c.id for c in ann.categories])
        predictor = self._predictors[video_id]
        target = batch.targets[0][0] if batch.targets is not None else None
        started = time.perf_counter()
        predictor.push(batch.images[0, 0], target)
        if predictor.done:
            self._results.extend(predictor.finalize())
            del self._predictors[video_id]
        self._timing[0] += 1
        self._timing[1] += time.perf_counter() - started

    def make_predictor(self, batch: ClipBatch, category_ids: list[int]) -> StreamPredictor:
        """The predictor of the video of ``batch`` (its first evaluation batch)."""
        if self.predictor_factory is not None:
            return self.predictor_factory(batch, self.model, category_ids)
        assert self.tracker_factory is not None
        return VideoPredictor.for_video(
            batch,
            self.model,
            self.tracker_factory(),
            self.paste,
            category_ids,
            eps_test=self.hparams.eps_test,
            oracle=self.hparams.oracle,
        )

    def validation_step(self, batch: ClipBatch | None, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: ClipBatch | None, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _gather_results(self) -> list[dict[str, Any]]:
        results, self._results = self._results, []
        self._predictors.clear()  # videos cut short (sanity check, limit_val_batches)
        frames, seconds = self._timing
        self._timing = [0, 0.0]
        if frames and not self.trainer.sanity_checking:
            self.last_timing = {
                "frames": frames,
                "seconds": seconds,
                "ms_per_frame": 1000.0 * seconds / frames,
            }
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, results)
            results = [r for part in gathered for r in part]
        return sorted(results, key=lambda r: (r["video_id"], -r["score"]))

    def _finish_evaluation(self, prefix: str) -> None:
        results = self._gather_results()
        if self.trainer.sanity_checking:
            return
        dm = self.trainer.datamodule
        split = self._split(prefix)
        self.last_results = results
        self.last_eval_epoch = self.current_epoch
        if self.trainer.is_global_zero:
            out = Path(self.hparams.results_dir or Path(self.trainer.default_root_dir) / "results")
            self.last_results_dir = out / f"{prefix}_epoch{self.current_epoch:03d}"
            write_results(results, self.last_results_dir)
        ann = dm.load_split(split)
        if not ann.has_annotations:
            return
        if split not in self._ground_truth:
            self._ground_truth[split] = GroundTruth.from_source(str(dm.annotation_path(split)))
        metrics = evaluate_results(self._ground_truth[split], results)
        self.last_metrics = {k: 100.0 * v for k, v in metrics.items()}
        for key in METRIC_KEYS:
            if key in self.last_metrics:
                self.log(f"{prefix}/{key}", self.last_metrics[key], sync_dist=False)

    def on_validation_epoch_end(self) -> None:
        self._finish_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self._finish_evaluation("test")
