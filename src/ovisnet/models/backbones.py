"""Backbone + FPN feature extractors for the R-CNN family (SPEC §1.3).

Both return an ``OrderedDict`` with levels ``'0'``..``'3'`` (P2–P5, strides 4–32) and ``'pool'``
(P6, a stride-2 max-pool of P5) and expose ``out_channels``; their submodules are named ``body``
and ``fpn`` like torchvision's, so COCO Mask R-CNN checkpoints load without renaming
(:mod:`ovisnet.models.checkpoint`). No pretrained weights are downloaded.
"""

from __future__ import annotations

from collections import OrderedDict

import timm
from torch import Tensor, nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN, resnet_fpn_backbone
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

FPN_STRIDES = (4, 8, 16, 32)
"""Strides of the levels ``'0'``..``'3'``; the Mask R-CNN heads and anchors assume them."""


def resnet_fpn(
    name: str = "resnet50",
    *,
    trainable_layers: int = 3,
    frozen_bn: bool = True,
    out_channels: int = 256,
    fpn_batch_norm: bool = False,
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

    Returns:
        torchvision ``BackboneWithFPN``: ``(B, 3, H, W)`` float → levels ``'0'``..``'3'``,
        ``'pool'`` of ``(B, out_channels, H / s, W / s)``.
    """
    model = resnet_fpn_backbone(
        backbone_name=name,
        weights=None,
        norm_layer=FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d,
        trainable_layers=trainable_layers,
        extra_blocks=LastLevelMaxPool(),
    )
    if out_channels != model.out_channels or fpn_batch_norm:
        in_channels = [block[0].in_channels for block in model.fpn.inner_blocks]
        model.fpn = FeaturePyramidNetwork(
            in_channels,
            out_channels,
            extra_blocks=LastLevelMaxPool(),
            norm_layer=nn.BatchNorm2d if fpn_batch_norm else None,
        )
        model.out_channels = out_channels
    return model


class TimmFPN(nn.Module):
    """A timm ``features_only`` backbone with a torchvision ``FeaturePyramidNetwork`` on top.

    Args:
        name: timm model name whose last four feature maps have strides 4, 8, 16, 32
            (``resnet18``, ``resnet50``, ``convnext_tiny``, ...).
        out_channels: FPN width.
        fpn_batch_norm: batch norm after every FPN convolution (see :func:`resnet_fpn`).

    Raises:
        ValueError: when the model's feature strides are not 4, 8, 16, 32.
    """

    def __init__(
        self, name: str = "resnet18", *, out_channels: int = 256, fpn_batch_norm: bool = False
    ) -> None:
        super().__init__()
        self.body = timm.create_model(name, pretrained=False, features_only=True)
        num_levels = len(self.body.feature_info)
        indices = tuple(range(num_levels - len(FPN_STRIDES), num_levels))
        reductions = tuple(self.body.feature_info.reduction()[i] for i in indices)
        if reductions != FPN_STRIDES:
            raise ValueError(f"{name}: last feature strides {reductions}, need {FPN_STRIDES}")
        self.indices = indices
        channels = self.body.feature_info.channels()
        self.fpn = FeaturePyramidNetwork(
            [channels[i] for i in indices],
            out_channels,
            extra_blocks=LastLevelMaxPool(),
            norm_layer=nn.BatchNorm2d if fpn_batch_norm else None,
        )
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        """Feature pyramid of a normalised batch.

        Args:
            x: ``(B, 3, H, W)`` float images, ``H`` and ``W`` multiples of 32.

        Returns:
            Levels ``'0'``..``'3'`` and ``'pool'``, each ``(B, out_channels, H / s, W / s)``.
        """
        features = self.body(x)
        return self.fpn(OrderedDict((str(k), features[i]) for k, i in enumerate(self.indices)))
