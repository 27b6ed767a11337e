"""Deformable convolution (DCN v1) with a fast CPU path.

:class:`DeformConv2d` is torchvision's ``DeformConv2d`` (same parameters, same offset layout,
same state-dict keys) with a choice of kernel:

* ``"torchvision"``: ``torchvision.ops.deform_conv2d`` (its CUDA kernels on GPU).
* ``"sampled"``: :func:`deform_conv2d_sampled`: every kernel tap's displaced positions are
  sampled with ``grid_sample`` (bilinear, zero padding) and a 1x1 convolution sums taps and
  channels. Same values and gradients as torchvision (to float rounding; tested in float64), and
  on CPU several times faster, its backward especially (``make bench`` measures it), at the cost
  of a ``K`` times larger intermediate (``K`` taps).
* ``"auto"``: ``"sampled"`` on CPU, ``"torchvision"`` elsewhere.

Offsets are clamped to the feature map size (see :func:`bounded_offsets`), which changes no value
or gradient and keeps a diverging run's huge or NaN offsets from reading out of bounds.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import DeformConv2d as _TorchvisionDeformConv2d
from torchvision.ops import deform_conv2d

DeformBackend = Literal["auto", "sampled", "torchvision"]
DEFORM_BACKENDS = ("auto", "sampled", "torchvision")


def bounded_offsets(offsets: Tensor) -> Tensor:
    """Offsets clamped to ±(H + W + 2) pixels, non-finite ones sent out of the map.

    A tap displaced that far samples only the zero padding, exactly as it would unclamped, and its
    offset gradient is zero either way, so this changes no value and no gradient for finite
    offsets. It keeps torchvision's CPU kernel from reading out of bounds (a segmentation fault)
    when a diverging run produces huge or NaN offsets; the NaN still reaches the loss through the
    other branches, where the training system reports it.
    """
    bound = float(offsets.shape[-2] + offsets.shape[-1] + 2)
    return torch.where(torch.isfinite(offsets), offsets.clamp(-bound, bound), bound)


def deform_conv2d_sampled(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    *,
    padding: int = 0,
    dilation: int = 1,
) -> Tensor:
    """DCN v1 with stride 1 and one group (any number of offset groups), via ``grid_sample``.

    Tap ``k = i * kw + j`` of output pixel ``(y, x)`` reads the input at
    ``(y - padding + i * dilation + offset[:, 2k], x - padding + j * dilation + offset[:, 2k+1])``
    with bilinear interpolation and zeros outside, the semantics of
    ``torchvision.ops.deform_conv2d``.

    Args:
        input: ``(B, C, H, W)``.
        offset: ``(B, 2 * G * kh * kw, H_out, W_out)`` for ``G`` offset groups (each group
            displaces ``C / G`` consecutive input channels), channel ``2 (g K + k)`` the y and
            ``2 (g K + k) + 1`` the x displacement of tap ``k`` of group ``g``: torchvision's
            layout.
        weight: ``(C_out, C, kh, kw)``.
        bias: optional ``(C_out,)``.
        padding: zero padding on every side.
        dilation: spacing of the kernel taps.

    Returns:
        ``(B, C_out, H_out, W_out)`` with ``H_out = H + 2 * padding - dilation * (kh - 1)``.
    """
    batch, channels, height, width = input.shape
    out_channels, in_channels, kh, kw = weight.shape
    taps = kh * kw
    if in_channels != channels:
        raise ValueError(f"weight expects {in_channels} input channels, input has {channels}")
    out_h = height + 2 * padding - dilation * (kh - 1)
    out_w = width + 2 * padding - dilation * (kw - 1)
    groups = offset.shape[1] // (2 * taps) if offset.ndim == 4 else 0
    if groups < 1 or channels % groups or offset.shape != (batch, 2 * taps * groups, out_h, out_w):
        raise ValueError(
            f"offset must be ({batch}, 2 * {taps} * G, {out_h}, {out_w}) with G dividing "
            f"{channels}, got {tuple(offset.shape)}"
        )
    # offset group g displaces channels [g C/G, (g+1) C/G): one grid_sample "image" per group
    input = input.reshape(batch * groups, channels // groups, height, width)
    offset = offset.reshape(batch * groups, 2 * taps, out_h, out_w)
    kwargs = {"dtype": offset.dtype, "device": offset.device}
    tap_y = (torch.arange(kh, **kwargs) * dilation - padding).repeat_interleave(kw)
    tap_x = (torch.arange(kw, **kwargs) * dilation - padding).repeat(kh)
    pairs = offset.view(batch * groups, taps, 2, out_h, out_w)
    ys = torch.arange(out_h, **kwargs).view(1, 1, out_h, 1) + tap_y.view(1, taps, 1, 1)
    xs = torch.arange(out_w, **kwargs).view(1, 1, 1, out_w) + tap_x.view(1, taps, 1, 1)
    pos_y = ys + pairs[:, :, 0]
    pos_x = xs + pairs[:, :, 1]
    # Pixel centres under align_corners=False: x_norm = (2 x + 1) / W - 1 (also right for W = 1).
    grid = torch.stack(((2 * pos_x + 1) / width - 1, (2 * pos_y + 1) / height - 1), dim=-1)
    sampled = F.grid_sample(
        input,
        grid.view(batch * groups, taps * out_h, out_w, 2).to(input.dtype),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )
    # (B G, C / G, K * H_out, W_out) -> (B, C * K, H_out, W_out): channel c * K + k with
    # c = g C / G + c', the weight's order.
    columns = sampled.view(batch, channels * taps, out_h, out_w)
    return F.conv2d(columns, weight.reshape(out_channels, channels * taps, 1, 1), bias)


class DeformConv2d(_TorchvisionDeformConv2d):
    """torchvision's ``DeformConv2d`` with a kernel choice (see the module docstring).

    Args:
        *args: as torchvision's ``DeformConv2d``.
        backend: ``"auto"``, ``"sampled"`` or ``"torchvision"``. ``"sampled"`` supports stride 1
            and one group (the calibration's 3x3 DCN, SipMask's 4-offset-group alignment); other
            settings fall back to torchvision.
        **kwargs: as torchvision's ``DeformConv2d``.
    """

    def __init__(self, *args, backend: DeformBackend = "auto", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if backend not in DEFORM_BACKENDS:
            raise ValueError(f"backend must be one of {DEFORM_BACKENDS}, got {backend!r}")
        self.backend: DeformBackend = backend

    def _sampled_supported(self, offset: Tensor) -> bool:
        taps = self.weight.shape[-2] * self.weight.shape[-1]
        return (
            offset.shape[1] % (2 * taps) == 0
            and self.stride == (1, 1)
            and self.groups == 1
            and self.padding[0] == self.padding[1]
            and self.dilation[0] == self.dilation[1]
        )

    def forward(self, input: Tensor, offset: Tensor, mask: Tensor | None = None) -> Tensor:
        """Deformable convolution of ``input`` ``(B, C, H, W)`` with ``offset``."""
        offset = bounded_offsets(offset)
        use_sampled = self.backend == "sampled" or (
            self.backend == "auto" and input.device.type == "cpu"
        )
        if use_sampled and mask is None and self._sampled_supported(offset):
            return deform_conv2d_sampled(
                input,
                offset,
                self.weight,
                self.bias,
                padding=self.padding[0],
                dilation=self.dilation[0],
            )
        return deform_conv2d(
            input,
            offset,
            self.weight,
            self.bias,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            mask=mask,
        )

    def __repr__(self) -> str:
        """torchvision's description plus the backend."""
        return f"{super().__repr__()[:-1]}, backend={self.backend!r})"
