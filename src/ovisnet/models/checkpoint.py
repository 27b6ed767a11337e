"""Pretrained initialisation of the models (SPEC §1.3): ``init_from=coco`` or a local file.

The official models start from COCO (MaskTrack R-CNN: a Mask R-CNN R50-FPN; SipMask: a one-stage
R50-FPN detector) or, for STEm-Seg, from an ImageNet ResNet. :func:`init_model` takes the matching
torchvision weights (Mask R-CNN COCO, FCOS COCO, ImageNet ResNet) from torch hub's cache, where
``weights.get_state_dict()`` stores them; nothing is downloaded, a missing file is an error that
names the file and its URL. Our models name their modules like torchvision (``backbone.body``,
``backbone.fpn``, ``rpn.head``, ``roi_heads.box_head``, ...), so keys map onto the model unchanged;
torchvision's own version hooks convert the older key layout (``rpn.head.conv.weight``,
``mask_head.mask_fcn1.weight``, ...) of the published COCO files. Tensors whose shape differs
(class-specific layers for another class count) keep the model's fresh initialisation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor, nn
from torchvision.models import (
    ResNet50_Weights,
    ResNet101_Weights,
    ResNeXt101_32X8D_Weights,
    WeightsEnum,
    resnet50,
    resnet101,
    resnext101_32x8d,
)
from torchvision.models.detection import (
    FCOS_ResNet50_FPN_Weights,
    MaskRCNN_ResNet50_FPN_Weights,
    fcos_resnet50_fpn,
    maskrcnn_resnet50_fpn,
)

from ovisnet.errors import ConfigError, MissingFileError
from ovisnet.models.sipmask import SipMaskVIS
from ovisnet.models.stemseg import STEmSeg

log = logging.getLogger(__name__)

COCO_MODULES = (
    "backbone.body.",
    "backbone.fpn.",
    "rpn.head.",
    "roi_heads.box_head.",
    "roi_heads.box_predictor.",
    "roi_heads.mask_head.",
    "roi_heads.mask_predictor.",
)
"""Key prefixes taken from a torchvision Mask R-CNN checkpoint (identical in our model)."""

BACKBONE_MODULES = ("backbone.body.", "backbone.fpn.")
"""Key prefixes taken from torchvision's FCOS checkpoint into the SipMask family."""

IMAGENET_RESNETS: dict[str, tuple[Callable[..., nn.Module], WeightsEnum]] = {
    "resnet50": (resnet50, ResNet50_Weights.IMAGENET1K_V1),
    "resnet101": (resnet101, ResNet101_Weights.IMAGENET1K_V1),
    "resnext101_32x8d": (resnext101_32x8d, ResNeXt101_32X8D_Weights.IMAGENET1K_V1),
}
"""STEm-Seg backbones with ImageNet weights: builder (to compare shapes) and weights."""


@dataclass
class LoadReport:
    """What :func:`init_model` / :func:`load_coco_maskrcnn` did; ``str()`` is a short summary.

    Attributes:
        loaded: model state keys set from the checkpoint.
        skipped: checkpoint keys not used, with the reason (shape mismatch of a class-specific
            layer, or not part of the modules taken from that checkpoint).
        missing: model state keys the checkpoint did not set; they keep their initialisation
            (track head, calibration, class-specific layers of another class count, ...).
        source: where the weights came from (file, and the weights' name for ``coco``).
    """

    loaded: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    source: str = ""

    def __str__(self) -> str:
        """Counts and the module prefixes (two name levels) that were loaded / left fresh."""
        loaded, fresh = _prefixes(self.loaded), _prefixes(self.missing)
        return (
            f"init from {self.source}: {len(self.loaded)} tensors loaded, "
            f"{len(self.skipped)} checkpoint tensors skipped, {len(self.missing)} left fresh\n"
            f"  loaded: {', '.join(loaded) or '-'}\n"
            f"  fresh:  {', '.join(fresh) or '-'}"
        )


def init_model(model: nn.Module, source: str | Path) -> LoadReport:
    """Initialise ``model`` in place from pretrained weights named by ``init_from``.

    ``source == "coco"`` picks the paper's initialisation for the model's family, read from
    torch hub's cache (``$TORCH_HOME/hub/checkpoints/<file of the weights URL>``):

    * MaskTrack family (has ``rpn`` and ``roi_heads``): torchvision's COCO Mask R-CNN R50-FPN,
      every module of it (as :func:`load_coco_maskrcnn`);
    * :class:`~ovisnet.models.sipmask.SipMaskVIS`: torchvision's COCO FCOS R50-FPN, backbone and
      P3-P7 FPN (incl. P6/P7) only; its head differs from SipMask's and is not loaded;
    * :class:`~ovisnet.models.stemseg.STEmSeg`: the ImageNet ResNet of the backbone's depth
      (ResNet-50, ResNet-101 or ResNeXt-101 32x8d) into ``backbone.body``; the FPN stays fresh.

    Any other ``source`` is a local Mask R-CNN checkpoint, see :func:`load_coco_maskrcnn`.

    Args:
        model: the model to update.
        source: ``"coco"`` or the path of a local checkpoint.

    Returns:
        The :class:`LoadReport`.

    Raises:
        TypeError: for a model outside the three families (or not of the MaskTrack family, for
            a path).
        ValueError: for ``coco`` when the backbone is not the one the weights were trained for
            (ResNet-50 with a 256-channel FPN; for STEm-Seg one of :data:`IMAGENET_RESNETS`):
            the shapes would not match and nothing would be loaded.
        FileNotFoundError: when the file is not in the cache (or the path is not a file).
    """
    if str(source) != "coco":
        return load_coco_maskrcnn(model, source)
    from_classifier = False  # an ImageNet classifier's keys go under backbone.body
    if hasattr(model, "rpn") and hasattr(model, "roi_heads"):
        _check_backbone(model, maskrcnn_resnet50_fpn, BACKBONE_MODULES)
        weights: WeightsEnum = MaskRCNN_ResNet50_FPN_Weights.COCO_V1
        prefixes, foreign = COCO_MODULES, "not a Mask R-CNN module"
    elif isinstance(model, SipMaskVIS):
        _check_backbone(model, fcos_resnet50_fpn, BACKBONE_MODULES)
        weights = FCOS_ResNet50_FPN_Weights.COCO_V1
        prefixes, foreign = BACKBONE_MODULES, "FCOS head, not SipMask's: not loaded"
    elif isinstance(model, STEmSeg):
        weights = _imagenet_weights(model)
        prefixes, foreign = ("backbone.body.",), "ImageNet classifier: not used"
        from_classifier = True
    else:
        raise TypeError(
            f"init_from=coco supports MaskTrackRCNN, SipMaskVIS and STEmSeg models, "
            f"not {type(model).__name__}"
        )
    path = cached_weights_file(weights)
    state = read_state(path)
    if from_classifier:  # its fc layer keeps its name, outside the prefix: reported as skipped
        state = {k if k.startswith("fc.") else f"backbone.body.{k}": v for k, v in state.items()}
    report = _load(model, state, prefixes, foreign)
    report.source = f"{path} ({type(weights).__name__}.{weights.name})"
    log.info("%s", report)
    return report


def load_coco_maskrcnn(model: nn.Module, path: str | Path) -> LoadReport:
    """Initialise a :class:`~ovisnet.models.masktrack.MaskTrackRCNN` from COCO Mask R-CNN weights.

    Args:
        model: the model to update in place.
        path: local file with a torchvision ``maskrcnn_resnet50_fpn`` state dict, bare or under
            a ``"model"`` / ``"state_dict"`` key (a ``"module."`` prefix is removed).

    Returns:
        The :class:`LoadReport`. Tensors whose shape differs from the model's (``cls_score``,
        ``bbox_pred``, ``mask_fcn_logits`` for another class count) are skipped, so those layers
        keep the model's fresh initialisation.

    Raises:
        FileNotFoundError: when ``path`` is not a file.
        TypeError: when ``model`` is not of the Mask R-CNN family (a P3-P7 one-stage model
            would receive FPN layers of other levels under the same names).
    """
    if not hasattr(model, "roi_heads") or not hasattr(model, "rpn"):
        raise TypeError(
            f"init_from loads COCO Mask R-CNN weights into the MaskTrack family; "
            f"{type(model).__name__} has no RPN / RoI heads to receive them"
        )
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"COCO Mask R-CNN checkpoint not found: {path}")
    report = _load(model, read_state(path), COCO_MODULES, "not a Mask R-CNN module")
    report.source = str(path)
    log.info("%s", report)
    return report


def _load(
    model: nn.Module, state: Mapping[str, Tensor], prefixes: tuple[str, ...], foreign: str
) -> LoadReport:
    """Load the tensors of ``state`` under ``prefixes`` whose shape fits; report the rest.

    ``foreign`` is the skip reason of keys outside ``prefixes``.
    """
    own = model.state_dict()
    report = LoadReport()
    selected: dict[str, Tensor] = {}
    for key, value in state.items():
        if not key.startswith(prefixes):
            report.skipped[key] = foreign
        elif key in own and own[key].shape != value.shape:
            report.skipped[key] = f"shape {tuple(value.shape)} != {tuple(own[key].shape)}"
        else:
            selected[key] = value
    # Without version metadata, torchvision's hooks rename old-layout keys where present.
    result = model.load_state_dict(selected, strict=False)
    for key in result.unexpected_keys:
        report.skipped[key] = "no such key in the model"
    missing = set(result.missing_keys)
    report.loaded = [k for k in own if k not in missing]
    report.missing = [k for k in own if k in missing]
    return report


def cached_weights_file(
    weights: WeightsEnum, key: str = "init_from=coco", fallback: str = "init_from=null"
) -> Path:
    """The file of ``weights`` in torch hub's cache, where ``weights.get_state_dict()`` puts it.

    Args:
        weights: torchvision weights.
        key: the setting that asked for them, named in the error.
        fallback: the setting that trains without them, named in the error.

    Raises:
        FileNotFoundError: when it is not there (nothing is downloaded).
    """
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
    if not path.is_file():
        raise MissingFileError(
            f"{key} needs {type(weights).__name__}.{weights.name}, which is not in "
            f"torch hub's cache: place the file {weights.url} at {path} (download it on a "
            f"machine with internet; TORCH_HOME moves the cache), or train from scratch with "
            f"{fallback}"
        )
    return path


def _check_backbone(
    model: nn.Module, builder: Callable[..., nn.Module], prefixes: tuple[str, ...]
) -> None:
    """Check that the model's tensors under ``prefixes`` have the names and shapes of the
    torchvision detector ``builder`` (ResNet-50 + 256-channel FPN), built on the meta device.

    Raises:
        ValueError: otherwise (e.g. the CPU presets' ResNet-18 with a 64-channel FPN).
    """
    with torch.device("meta"):
        reference = builder(weights=None, weights_backbone=None).state_dict()
    if not _fits(model.state_dict(), reference, prefixes):
        raise ConfigError(
            f"init_from=coco: the COCO weights fit a ResNet-50 backbone with a 256-channel FPN "
            f"only; this {type(model).__name__} has another backbone (use "
            f"model/backbone=r50_fpn, or init_from=null to train from scratch)"
        )


def _imagenet_weights(model: nn.Module) -> WeightsEnum:
    """The ImageNet weights of the ResNet in ``model.backbone.body`` (STEm-Seg).

    Raises:
        ValueError: when the body is none of :data:`IMAGENET_RESNETS`.
    """
    own = {f"backbone.body.{k}": v for k, v in model.backbone.body.state_dict().items()}
    for builder, weights in IMAGENET_RESNETS.values():
        with torch.device("meta"):
            reference = builder(weights=None).state_dict()
        reference = {f"backbone.body.{k}": v for k, v in reference.items()}
        if _fits(own, reference, ("backbone.body.",)):
            return weights
    raise ConfigError(
        f"init_from=coco: STEm-Seg takes ImageNet weights for a "
        f"{' / '.join(IMAGENET_RESNETS)} backbone only (the COCO detectors' backbone is a "
        f"ResNet-50 with a 256-channel FPN); use model/backbone=r50_fpn, or init_from=null"
    )


def _fits(
    own: Mapping[str, Tensor], reference: Mapping[str, Tensor], prefixes: tuple[str, ...]
) -> bool:
    """Whether every tensor of ``own`` under ``prefixes`` is in ``reference`` with its shape."""
    keys = [k for k in own if k.startswith(prefixes) and not k.endswith("num_batches_tracked")]
    return bool(keys) and all(k in reference and reference[k].shape == own[k].shape for k in keys)


def _prefixes(keys: list[str]) -> list[str]:
    """The distinct first two name levels of ``keys``, in order (``backbone.body``, ...)."""
    return list(dict.fromkeys(".".join(k.split(".")[:2]) for k in keys))


def read_state(path: Path) -> dict[str, Tensor]:
    """The state dict of a checkpoint file (tensors only, on the CPU)."""
    return _unwrap(torch.load(path, map_location="cpu", weights_only=True))


def _unwrap(checkpoint: Mapping[str, object]) -> dict[str, Tensor]:
    """The state dict inside a checkpoint, without a DDP ``module.`` prefix."""
    for key in ("model", "state_dict"):
        inner = checkpoint.get(key)
        if isinstance(inner, Mapping):
            checkpoint = inner
            break
    return {k.removeprefix("module."): v for k, v in checkpoint.items()}  # type: ignore[misc]
