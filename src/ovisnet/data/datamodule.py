"""The one LightningDataModule for every model: pair mode, clip mode and streamed evaluation."""

from __future__ import annotations

import warnings
from dataclasses import fields
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader

from ovisnet.data.annotations import VISAnnotations, load_annotations
from ovisnet.data.datasets import (
    BadFrameError,
    ResumableLoader,
    SeededSampler,
    SkipBadSamples,
    VideoSequentialSampler,
    VISFrameDataset,
    VISTrainDataset,
    bad_frames_report,
    collate_skipping,
    find_bad_frames,
)
from ovisnet.data.image_clips import (
    ClipMotion,
    CocoImageSource,
    ImageClipDataset,
    ImageSource,
    MixedClipDataset,
    VideoFrameSource,
)
from ovisnet.structures import collate_clips

_MOTION_KEYS = {f.name for f in fields(ClipMotion)}
_IMAGE_CLIP_KEYS = {"source", "ratio", "image_root", "category_map"} | _MOTION_KEYS
# data.check_files values, and what each means: no check, one stat per frame, a full decode
_CHECK_FILES = {True: "exists", "true": "exists", "exists": "exists", False: "none"}
_CHECK_FILES |= {None: "none", "false": "none", "none": "none", "decode": "decode"}


class VISDataModule(L.LightningDataModule):
    """OVIS / YouTube-VIS data for training (pairs or clips) and whole-video evaluation.

    Args:
        root: dataset root holding ``JPEGImages/`` (frame paths are relative to it).
        train_ann: training annotation JSON (absolute, or relative to ``root``).
        val_ann: validation annotation JSON (with annotations for local AP, or ``null`` ones).
        test_ann: optional test / inference-only split.
        num_classes: expected number of categories (checked against the files).
        mode: ``"pair"`` (query + reference, MaskTrack family) or ``"clip"`` (STEm-Seg).
        max_size: ``(long, short)`` resize bound, default ``(640, 360)``.
        eps_train: training reference distance (None: whole video).
        eps_test: test reference distance, exposed for the models' inference engines.
        clip_length: frames per training clip (clip mode).
        batch_size: training samples per batch.
        num_workers: data-loader workers.
        flip_prob: clip-consistent horizontal flip probability (training only).
        size_divisor: padded batch sizes are multiples of it.
        seed: seed of the training order and of every sample's random draws.
        check_files: frame check of every split at setup, all bad frames reported at once:
            ``true`` / ``"exists"`` (one ``stat`` per frame), ``"decode"`` (every frame decoded
            and its size compared with the annotation, in a thread pool, with a progress bar),
            ``false`` / ``"none"`` (no check).
        bad_frames: ``"error"`` (default): a frame that cannot be read stops training with a
            :class:`~ovisnet.data.datasets.BadFrameError` naming the video and the file;
            ``"skip"``: training replaces such samples (:class:`SkipBadSamples`), warns once per
            file and logs ``train/bad_samples``, and bad training frames found by
            ``check_files`` are a warning. Evaluation always stops at a bad frame.
        synthetic: when given, ``prepare_data`` generates the synthetic OVIS-format set into
            ``root`` with these keyword arguments of :func:`ovisnet.data.synthetic.generate`
            unless it is already there.
        image_clips: when given (clip mode only), training mixes image pseudo-clips
            (:mod:`ovisnet.data.image_clips`) into the video clips. Keys: ``source``
            (``"frames"``: the single valid frames of the train split; otherwise a COCO-format
            instance JSON, absolute or relative to ``root``), ``ratio`` (fraction of pseudo-clips
            in ``[0, 1)``, e.g. 0.4 for the paper's 0.6 video / 0.4 image mix), ``image_root``
            (the COCO images' folder, absolute or relative to ``root``), optional
            ``category_map`` (``{coco_category_id: dataset_category_id}``; default: match names)
            and optional motion bounds (the fields of :class:`ClipMotion`).
    """

    def __init__(
        self,
        root: str,
        train_ann: str | None = "annotations/train.json",
        val_ann: str | None = "annotations/valid.json",
        test_ann: str | None = None,
        *,
        num_classes: int | None = None,
        mode: str = "pair",
        max_size: tuple[int, int] = (640, 360),
        eps_train: int | None = 5,
        eps_test: int = 3,
        clip_length: int = 8,
        batch_size: int = 2,
        num_workers: int = 2,
        flip_prob: float = 0.5,
        size_divisor: int = 32,
        seed: int = 0,
        check_files: bool | str = True,
        bad_frames: str = "error",
        synthetic: dict[str, Any] | None = None,
        image_clips: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if image_clips is not None:
            _check_image_clips(image_clips, mode)
        key = check_files.lower() if isinstance(check_files, str) else check_files
        if key not in _CHECK_FILES:
            raise ValueError(
                "data.check_files must be true / exists, false / none or decode, "
                f"got {check_files!r}"
            )
        if bad_frames not in ("error", "skip"):
            raise ValueError(f"data.bad_frames must be 'error' or 'skip', got {bad_frames!r}")
        self.check_mode = _CHECK_FILES[key]
        self.save_hyperparameters()
        self.root = Path(root)
        self.splits: dict[str, VISAnnotations] = {}
        self._train_loader: ResumableLoader | None = None
        self._train_position: dict[str, int] | None = None  # from a checkpoint, not yet applied

    def _path(self, name: str) -> Path:
        p = Path(name)
        return p if p.is_absolute() else self.root / p

    def prepare_data(self) -> None:
        """Generate the synthetic set once (rank 0 only), if configured and missing."""
        hp = self.hparams
        if hp.synthetic is None:
            return
        anns = [hp.train_ann, hp.val_ann, hp.test_ann]
        if all(self._path(a).is_file() for a in anns if a is not None):
            return
        from ovisnet.data.synthetic import generate

        generate(self.root, **hp.synthetic)

    def annotation_path(self, name: str) -> Path:
        """Path of the annotation file of split ``train`` / ``val`` / ``test``."""
        rel = getattr(self.hparams, f"{name}_ann")
        if rel is None:
            raise ValueError(f"no annotation file configured for the {name} split")
        return self._path(rel)

    def load_split(self, name: str) -> VISAnnotations:
        """Parse (once) and validate the split ``train`` / ``val`` / ``test``."""
        if name not in self.splits:
            path = self.annotation_path(name)
            ann = load_annotations(path, image_root=self.root / "JPEGImages")
            expected = self.hparams.num_classes
            if expected is not None and ann.num_classes != expected:
                raise ValueError(
                    f"{path} has {ann.num_classes} categories, the config says "
                    f"num_classes={expected}"
                )
            self.check_frames(ann, name, path)
            self.splits[name] = ann
        return self.splits[name]

    def check_frames(self, ann: VISAnnotations, split: str, source: Path) -> None:
        """Apply ``check_files`` to a split: raise (or, for training frames under
        ``bad_frames=skip``, warn) listing every bad frame found."""
        if self.check_mode == "none":
            return
        bad = find_bad_frames(
            ann,
            decode=self.check_mode == "decode",
            progress=rank_zero_only.rank == 0,
            desc=f"{self.check_mode} check of {source.name}",
        )
        if not bad:
            return
        report = bad_frames_report(bad, f"{source} (data.check_files={self.check_mode})")
        if split == "train" and self.hparams.bad_frames == "skip":
            skip = "data.bad_frames=skip: training skips the samples using them"
            warnings.warn(f"{report}\n{skip}", stacklevel=2)
        else:
            raise BadFrameError(report)

    def setup(self, stage: str | None = None) -> None:
        """Load the splits that ``stage`` needs."""
        hp = self.hparams
        if stage in ("fit", None):
            self.load_split("train")
        if stage in ("fit", "validate", None) and hp.val_ann is not None:
            self.load_split("val")
        if stage in ("test", "predict") and hp.test_ann is not None:
            self.load_split("test")

    def image_clip_dataset(self) -> ImageClipDataset:
        """The image pseudo-clips that ``image_clips`` configures, shaped like the video clips."""
        hp = self.hparams
        config = dict(hp.image_clips)
        source_name = config.pop("source")
        image_root = config.pop("image_root", None)
        category_map = config.pop("category_map", None)
        config.pop("ratio")
        train = self.load_split("train")
        source: ImageSource
        if source_name == "frames":
            source = VideoFrameSource(train)
        else:
            source = CocoImageSource(
                self._path(source_name), self._path(image_root), train, category_map=category_map
            )
        return ImageClipDataset(
            source,
            clip_length=hp.clip_length,
            max_size=tuple(hp.max_size),
            flip_prob=hp.flip_prob,
            motion=ClipMotion(**config),
        )

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        dataset = VISTrainDataset(
            self.load_split("train"),
            mode=hp.mode,
            max_size=tuple(hp.max_size),
            eps_train=hp.eps_train,
            clip_length=hp.clip_length,
            flip_prob=hp.flip_prob,
        )
        if hp.image_clips is not None:
            dataset = MixedClipDataset(dataset, self.image_clip_dataset(), hp.image_clips["ratio"])
        collate = collate_clips
        if hp.bad_frames == "skip":
            dataset, collate = SkipBadSamples(dataset), collate_skipping
        self._train_loader = ResumableLoader(
            dataset,
            batch_size=hp.batch_size,
            sampler=SeededSampler(len(dataset), shuffle=True, seed=hp.seed),
            num_workers=hp.num_workers,
            collate_fn=partial(collate, size_divisor=hp.size_divisor),
            persistent_workers=hp.num_workers > 0,
            drop_last=True,
            # its own generator: starting workers leaves torch's global random state alone
            generator=torch.Generator().manual_seed(hp.seed),
        )
        if self._train_position is not None:
            self._train_loader.load_state_dict(self._train_position)
            self._train_position = None
        return self._train_loader

    # Lightning also checkpoints the loader itself, but restores it only when nothing built the
    # loader before the checkpoint was loaded, and the system's configure_optimizers does (it
    # reads trainer.estimated_stepping_batches); the DataModule's own state is always restored.
    def state_dict(self) -> dict[str, Any]:
        """The training loader's position (epoch, samples used) for an exact mid-epoch resume."""
        return {} if self._train_loader is None else {"train": self._train_loader.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume the training loader (built now or later) where the checkpointed run was."""
        position = state.get("train")
        if position is not None and self._train_loader is not None:
            self._train_loader.load_state_dict(position)
        else:
            self._train_position = position

    def eval_dataloader(self, split: str) -> DataLoader:
        """Frames of whole videos of ``split`` in temporal order, one frame per batch.

        Under DDP each rank streams whole videos (:class:`VideoSequentialSampler`). A rank left
        without videos (fewer videos than ranks) gets a single ``None`` batch, which the system
        skips: Lightning refuses a rank with an empty loader, and every rank has to reach the
        epoch end, where the results of all ranks are gathered.
        """
        dataset = VISFrameDataset(self.load_split(split), max_size=tuple(self.hparams.max_size))
        sampler = VideoSequentialSampler(dataset)
        if len(sampler) == 0 and len(dataset) > 0:
            return DataLoader([None], batch_size=1, collate_fn=_no_frames)
        return DataLoader(
            dataset,
            batch_size=1,
            sampler=sampler,
            num_workers=self.hparams.num_workers,
            collate_fn=partial(collate_clips, size_divisor=self.hparams.size_divisor),
        )

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader("test" if self.hparams.test_ann is not None else "val")

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()


def _no_frames(items: list[None]) -> None:
    """The batch of a rank without videos (see :meth:`VISDataModule.eval_dataloader`)."""
    return None


def _check_image_clips(config: dict[str, Any], mode: str) -> None:
    """Reject an ``image_clips`` config that cannot work, before any data is read."""
    if mode != "clip":
        raise ValueError(f"image_clips (image pseudo-clips) needs mode='clip', got mode={mode!r}")
    unknown = sorted(set(config) - _IMAGE_CLIP_KEYS)
    if unknown:
        raise ValueError(f"image_clips: unknown keys {unknown}; known: {sorted(_IMAGE_CLIP_KEYS)}")
    missing = sorted({"source", "ratio"} - set(config))
    if missing:
        raise ValueError(f"image_clips: missing keys {missing}")
    if not 0.0 <= config["ratio"] < 1.0:
        raise ValueError(f"image_clips: ratio must be in [0, 1), got {config['ratio']}")
    ClipMotion(**{k: v for k, v in config.items() if k in _MOTION_KEYS})  # checks the bounds
    if config["source"] == "frames":
        if config.get("image_root") is not None or config.get("category_map") is not None:
            raise ValueError("image_clips: image_root and category_map apply to a COCO source only")
    elif config.get("image_root") is None:
        raise ValueError(f"image_clips: the COCO source {config['source']} needs image_root")
