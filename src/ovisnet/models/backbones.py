"""Backbone + FPN feature extractors (SPEC §1.3).

Two pyramids, chosen by ``pyramid``:

* ``"p2p6"`` (the R-CNN family): levels ``'0'``..``'3'`` (P2–P5, strides 4–32) and ``'pool'``
  (P6, a stride-2 max-pool of P5), torchvision's ``LastLevelMaxPool``;
* ``"p3p7"`` (the one-stage SipMask family): levels ``'0'``..``'2'`` (P3–P5, strides 8–32) from
  C3–C5 and ``'p6'``, ``'p7'`` (strides 64, 128: 3x3 stride-2 convs on P5 and on ReLU(P6)),
  torchvision's ``LastLevelP6P7``.

Both extractors expose ``out_channels`` and ``strides`` (one per returned level, in order); their
submodules are named ``body`` and ``fpn`` like torchvision's, so COCO Mask R-CNN checkpoints load
without renaming (:mod:`ovisnet.models.checkpoint`).

``weights="imagenet"`` initialises the body from ImageNet: torchvision's ``IMAGENET1K_V1`` weights
of that ResNet from torch hub's cache, or timm's default pretrained weights of that model from the
Hugging Face cache. Nothing is downloaded: a missing file is an error naming the file to place
and ``weights=null``. A path loads a local classifier checkpoint into the body instead.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import Literal

import timm
from torch import Tensor, nn
from torchvision.models import get_model_weights
from torchvision.models.detection.backbone_utils import BackboneWithFPN, resnet_fpn_backbone
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import (
    ExtraFPNBlock,
    FeaturePyramidNetwork,
    LastLevelMaxPool,
    LastLevelP6P7,
)

from ovisnet.errors import ConfigError, MissingFileError

log = logging.getLogger(__name__)

FPN_STRIDES = (4, 8, 16, 32)
"""Strides of the levels ``'0'``..``'3'``; the Mask R-CNN heads and anchors assume them."""

Pyramid = Literal["p2p6", "p3p7"]
PYRAMID_STRIDES: dict[str, tuple[int, ...]] = {
    "p2p6": (4, 8, 16, 32, 64),
    "p3p7": (8, 16, 32, 64, 128),
}
"""Stride of every returned level, in order, per pyramid."""


def _pyramid_parts(pyramid: str, out_channels: int) -> tuple[int, ExtraFPNBlock]:
    """Number of backbone stages feeding the FPN, and the extra block of ``pyramid``."""
    if pyramid == "p2p6":
        return 4, LastLevelMaxPool()
    if pyramid == "p3p7":
        # in == out channels: P6 is computed from P5 (SipMask / FCOS), not from C5
        return 3, LastLevelP6P7(out_channels, out_channels)
    raise ValueError(f"pyramid must be one of {tuple(PYRAMID_STRIDES)}, got {pyramid!r}")


def resnet_fpn(
    name: str = "resnet50",
    *,
    trainable_layers: int = 3,
    frozen_bn: bool = True,
    out_channels: int = 256,
    fpn_batch_norm: bool = False,
    pyramid: Pyramid = "p2p6",
    weights: str | None = None,
) -> BackboneWithFPN:
    """A torchvision ResNet with an FPN (``resnet_fpn_backbone``, ``weights=None``).

    The MaskTrack R-CNN setting is ``resnet50`` with ``trainable_layers=3`` (stem and layer1
    frozen), frozen batch norm and a 256-channel FPN (SPEC §1.3).

    Args:
        name: torchvision ResNet name (``resnet18``, ``resnet50``, ``resnet101``, ...).
        trainable_layers: number of trainable stages counted from layer4 (0–5).
        frozen_bn: use ``FrozenBatchNorm2d`` (statistics and affine fixed); False gives plain
            ``BatchNorm2d``, useful when training a small backbone from scratch.
        out_channels: FPN width. 256 is the paper's (and the only one COCO Mask R-CNN weights
            fit); narrower FPNs make the light CPU presets.
        fpn_batch_norm: batch norm after every FPN convolution. Off in the paper's model; a
            network trained from scratch needs it, or its FPN outputs grow to magnitudes (~50
            here) at which the box head's ReLUs die and the track logits explode.
        pyramid: ``"p2p6"`` (MaskTrack family) or ``"p3p7"`` (SipMask family), see the module
            docstring.
        weights: ``None`` (random), ``"imagenet"`` (torchvision's ``IMAGENET1K_V1`` of ``name``
            from torch hub's cache) or the path of a torchvision classifier state dict; loaded
            into the body (the classifier's ``fc`` is dropped), the FPN stays fresh.

    Returns:
        torchvision ``BackboneWithFPN``: ``(B, 3, H, W)`` float → the pyramid's levels, each
        ``(B, out_channels, H / s, W / s)``; ``strides`` lists ``s`` per level.
    """
    num_stages, extra = _pyramid_parts(pyramid, 256)
    model = resnet_fpn_backbone(
        backbone_name=name,
        weights=None,
        norm_layer=FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d,
        trainable_layers=trainable_layers,
        returned_layers=list(range(5 - num_stages, 5)),
        extra_blocks=extra,
    )
    if out_channels != model.out_channels or fpn_batch_norm:
        in_channels = [block[0].in_channels for block in model.fpn.inner_blocks]
        model.fpn = FeaturePyramidNetwork(
            in_channels,
            out_channels,
            extra_blocks=_pyramid_parts(pyramid, out_channels)[1],
            norm_layer=nn.BatchNorm2d if fpn_batch_norm else None,
        )
        model.out_channels = out_channels
    model.strides = PYRAMID_STRIDES[pyramid]
    if weights is not None:
        _load_body(model.body, _torchvision_weights_file(name, weights), weights)
    return model


def _torchvision_weights_file(name: str, weights: str) -> Path:
    if weights != "imagenet":
        return Path(weights)
    from ovisnet.models.checkpoint import cached_weights_file  # imports the models: lazily

    try:
        enum = get_model_weights(name)
    except ValueError as exc:
        raise ConfigError(f"backbone.weights=imagenet: torchvision has no model {name!r}") from exc
    if not hasattr(enum, "IMAGENET1K_V1"):
        raise ConfigError(
            f"backbone.weights=imagenet: torchvision has no ImageNet weights of {name}"
        )
    return cached_weights_file(
        enum.IMAGENET1K_V1, key="backbone.weights=imagenet", fallback="backbone.weights=null"
    )


def _load_body(body: nn.Module, path: Path, weights: str) -> None:
    """Load a classifier state dict into ``body``; every body tensor must be set."""
    from ovisnet.models.checkpoint import read_state

    if not path.is_file():
        raise MissingFileError(f"backbone.weights={weights}: no such file {path}")
    result = body.load_state_dict(read_state(path), strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing:
        raise ConfigError(
            f"backbone.weights={weights}: {path} does not fit this backbone; missing "
            f"{len(missing)} tensors, e.g. {missing[:3]}"
        )
    log.info(
        "backbone body initialised from %s (%d tensors unused)", path, len(result.unexpected_keys)
    )


class TimmFPN(nn.Module):
    """A timm ``features_only`` backbone with a torchvision ``FeaturePyramidNetwork`` on top.

    Args:
        name: timm model name whose last four feature maps have strides 4, 8, 16, 32
            (``resnet18``, ``resnet50``, ``convnext_tiny``, ...).
        out_channels: FPN width.
        fpn_batch_norm: batch norm after every FPN convolution (see :func:`resnet_fpn`).
        pyramid: ``"p2p6"`` or ``"p3p7"`` (module docstring).
        weights: ``None`` (random), ``"imagenet"`` (timm's default pretrained weights of
            ``name``, from the Hugging Face cache) or a local weights file timm can load.

    Raises:
        ValueError: when the model's feature strides are not 4, 8, 16, 32.
        FileNotFoundError: when the weights are not in the cache / the file does not exist.
    """

    def __init__(
        self,
        name: str = "resnet18",
        *,
        out_channels: int = 256,
        fpn_batch_norm: bool = False,
        pyramid: Pyramid = "p2p6",
        weights: str | None = None,
    ) -> None:
        super().__init__()
        if weights is None:
            self.body = timm.create_model(name, pretrained=False, features_only=True)
        else:
            file = _timm_weights_file(name, weights)
            self.body = timm.create_model(
                name,
                pretrained=True,
                features_only=True,
                pretrained_cfg_overlay={"file": str(file)},
            )
        num_levels = len(self.body.feature_info)
        indices = tuple(range(num_levels - len(FPN_STRIDES), num_levels))
        reductions = tuple(self.body.feature_info.reduction()[i] for i in indices)
        if reductions != FPN_STRIDES:
            raise ValueError(f"{name}: last feature strides {reductions}, need {FPN_STRIDES}")
        num_stages, extra = _pyramid_parts(pyramid, out_channels)
        self.indices = indices[len(indices) - num_stages :]
        channels = self.body.feature_info.channels()
        self.fpn = FeaturePyramidNetwork(
            [channels[i] for i in self.indices],
            out_channels,
            extra_blocks=extra,
            norm_layer=nn.BatchNorm2d if fpn_batch_norm else None,
        )
        self.out_channels = out_channels
        self.strides = PYRAMID_STRIDES[pyramid]

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        """Feature pyramid of a normalised batch.

        Args:
            x: ``(B, 3, H, W)`` float images, ``H`` and ``W`` multiples of 32.

        Returns:
            The pyramid's levels, each ``(B, out_channels, H / s, W / s)``.
        """
        features = self.body(x)
        return self.fpn(OrderedDict((str(k), features[i]) for k, i in enumerate(self.indices)))


def _timm_weights_file(name: str, weights: str) -> Path:
    """The local file of timm's default pretrained weights of ``name`` (never downloaded)."""
    if weights != "imagenet":
        path = Path(weights)
        if not path.is_file():
            raise MissingFileError(f"backbone.weights={weights}: no such file")
        return path
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.constants import HF_HUB_CACHE

    cfg = timm.models.get_pretrained_cfg(name)
    repo = getattr(cfg, "hf_hub_id", None)
    if not repo:
        raise ConfigError(f"backbone.weights=imagenet: timm has no hub weights for {name!r}")
    repo, _, revision = repo.partition("@")
    files = ("model.safetensors", "pytorch_model.bin")
    for filename in files:
        found = try_to_load_from_cache(repo, filename, revision=revision or None)
        if isinstance(found, str):
            return Path(found)
    raise MissingFileError(
        f"backbone.weights=imagenet needs timm's {name} weights (Hugging Face repo {repo}), "
        f"which are not in the Hugging Face cache {HF_HUB_CACHE}: on a machine with internet "
        f"run `huggingface-cli download {repo} {files[0]}` (HF_HOME moves the cache) and copy "
        f"the cache here, pass backbone.weights=/path/to/{files[0]}, or train from scratch with "
        f"backbone.weights=null"
    )
