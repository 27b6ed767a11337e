"""Pure-PyTorch spatial correlation (reference path, differentiable by autograd).

Shift-and-multiply over a zero-padded ``input2`` (SPEC-models.md §4.4): for each vertical
displacement ``d_i`` the ``P`` horizontal displacements are taken at once as strided windows
(``Tensor.unfold``, a view), multiplied with ``input1`` and summed over channels. Autograd keeps
only views of the padded tensor, so memory stays at one ``B x C x H x P x W`` temporary per row of
displacements. A kernel window larger than one pixel, dilation, stride and padding (§4.1) are
applied afterwards as a dilated box filter with stride over the zero-padded per-pixel correlation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def displacements(patch_size: int, dilation_patch: int) -> list[int]:
    """Displacements ``d_i = s*i - floor(s*(P-1)/2)`` for ``i = 0..P-1`` (SPEC §4.2).

    Args:
        patch_size: Number of displacements per axis ``P``.
        dilation_patch: Step ``s`` between displacements.

    Returns:
        The ``P`` displacements in increasing order (``[-15, -13, ..., 15]`` for ``P=16, s=2``).
    """
    radius = dilation_patch * (patch_size - 1) // 2
    return [dilation_patch * i - radius for i in range(patch_size)]


def output_size(size: int, kernel_size: int, stride: int, padding: int, dilation: int) -> int:
    """Output extent along one axis: ``floor((size + 2p - (δ(k-1)+1)) / t) + 1`` (SPEC §4.1)."""
    return (size + 2 * padding - (dilation * (kernel_size - 1) + 1)) // stride + 1


def _pixel_correlation(input1: Tensor, input2: Tensor, patch_size: int, step: int) -> Tensor:
    """Per-pixel correlation (kernel 1, stride 1, no padding).

    Args:
        input1: ``B x C x H x W``.
        input2: ``B x C x H x W``.
        patch_size: ``P``.
        step: ``dilation_patch`` ``s``.

    Returns:
        ``B x P x P x H x W``, ``out[b,i,j,y,x] = sum_c in1[b,c,y,x] * in2[b,c,y+d_i,x+d_j]``.
    """
    _, _, height, width = input1.shape
    before = step * (patch_size - 1) // 2
    after = step * (patch_size - 1) - before
    padded = F.pad(input2, (before, after, before, after))
    query = input1.unsqueeze(3)  # B x C x H x 1 x W
    rows = []
    for i in range(patch_size):
        band = padded[:, :, i * step : i * step + height]  # B x C x H x (W + s(P-1))
        windows = band.unfold(3, width, step)  # B x C x H x P x W, window j starts at d_j
        rows.append((query * windows).sum(dim=1))  # B x H x P x W
    return torch.stack(rows, dim=1).permute(0, 1, 3, 2, 4)


def correlation_torch(
    input1: Tensor,
    input2: Tensor,
    kernel_size: int = 1,
    patch_size: int = 16,
    stride: int = 1,
    padding: int = 0,
    dilation_patch: int = 2,
    *,
    dilation: int = 1,
) -> Tensor:
    """Spatial correlation in plain PyTorch (same semantics as the native op).

    Args:
        input1: Query features, ``B x C x H x W``.
        input2: Reference features, ``B x C x H x W``, same dtype and device.
        kernel_size: Window ``k`` summed around each position.
        patch_size: Number of displacements ``P`` per axis.
        stride: Stride ``t`` of the output grid.
        padding: Zero padding ``p`` of the output grid.
        dilation_patch: Step ``s`` between displacements.
        dilation: Dilation ``δ`` of the summed window.

    Returns:
        ``B x P x P x H_out x W_out`` raw (un-normalised) correlation.
    """
    batch, _, height, width = input1.shape
    if kernel_size == 1 and stride == 1 and padding == 0:
        return _pixel_correlation(input1, input2, patch_size, dilation_patch)
    pad = (padding, padding, padding, padding)
    pixel = _pixel_correlation(F.pad(input1, pad), F.pad(input2, pad), patch_size, dilation_patch)
    # Padded positions read zero in both inputs, exactly the zero padding of the op, so the padded
    # per-pixel map only needs the dilated window sum and the output stride.
    planes = pixel.reshape(batch * patch_size * patch_size, 1, *pixel.shape[-2:])
    box = planes.new_ones(1, 1, kernel_size, kernel_size)
    summed = F.conv2d(planes, box, stride=stride, dilation=dilation)
    out_h = output_size(height, kernel_size, stride, padding, dilation)
    out_w = output_size(width, kernel_size, stride, padding, dilation)
    return summed.reshape(batch, patch_size, patch_size, out_h, out_w)
