"""Public correlation function and module with backend selection."""

from __future__ import annotations

import warnings
from typing import Literal

from torch import Tensor, nn

from ovisnet.ops.correlation.build import NativeBuildError
from ovisnet.ops.correlation.native import correlation_native, native_supports
from ovisnet.ops.correlation.torch_impl import correlation_torch, output_size

Backend = Literal["auto", "native", "torch"]
BACKENDS: tuple[str, ...] = ("auto", "native", "torch")

_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)  # the caller of correlation()


def _check(
    input1: Tensor,
    input2: Tensor,
    kernel_size: int,
    patch_size: int,
    stride: int,
    padding: int,
    dilation: int,
    dilation_patch: int,
) -> None:
    if input1.dim() != 4 or input1.shape != input2.shape:
        raise ValueError(
            "correlation expects two B x C x H x W tensors of the same shape, got "
            f"{tuple(input1.shape)} and {tuple(input2.shape)}"
        )
    if input1.dtype != input2.dtype or input1.device != input2.device:
        raise ValueError("correlation inputs must share dtype and device")
    if min(kernel_size, patch_size, stride, dilation, dilation_patch) < 1 or padding < 0:
        raise ValueError(
            "kernel_size, patch_size, stride, dilation and dilation_patch must be >= 1 and "
            "padding >= 0"
        )
    height, width = input1.shape[-2:]
    if min(output_size(n, kernel_size, stride, padding, dilation) for n in (height, width)) < 1:
        raise ValueError("the dilated kernel does not fit in the padded input")


def correlation(
    input1: Tensor,
    input2: Tensor,
    kernel_size: int = 1,
    patch_size: int = 16,
    stride: int = 1,
    padding: int = 0,
    dilation_patch: int = 2,
    backend: Backend = "auto",
    *,
    dilation: int = 1,
) -> Tensor:
    """Spatial correlation of ``input1`` against displaced ``input2`` (SPEC-models.md §4).

    ``out[b, i, j, yo, xo] = sum_{ky,kx} sum_c in1[b, c, y, x] * in2[b, c, y + d_i, x + d_j]`` with
    ``y = yo*t - p + ky*δ``, ``x = xo*t - p + kx*δ``, ``d_i = s*i - floor(s*(P-1)/2)``, zero outside
    the image, and no normalisation. Arguments follow spatial-correlation-sampler; the displacement
    set is the one of its CUDA forward for every ``P`` and ``s`` and the gradients are exact.

    Args:
        input1: Query features, ``B x C x H x W``.
        input2: Reference features, ``B x C x H x W`` (same dtype and device).
        kernel_size: Window ``k`` summed around each position.
        patch_size: Number of displacements ``P`` per axis (not a radius).
        stride: Stride ``t`` of the output grid.
        padding: Zero padding ``p`` of the output grid.
        dilation_patch: Step ``s`` between displacements.
        backend: ``"native"`` (compiled kernels; raises :class:`NativeBuildError` if they cannot
            be built), ``"torch"`` (pure PyTorch, autograd) or ``"auto"`` (native when it builds and
            supports the device, otherwise torch, with one warning).
        dilation: Dilation ``δ`` of the summed window (keyword only; the positional order is the
            one of the project's API, which has no kernel dilation).

    Returns:
        ``B x P x P x H_out x W_out``, ``H_out = floor((H + 2p - (δ(k-1)+1)) / t) + 1``; axis 1 is
        the vertical displacement, axis 2 the horizontal one.

    Raises:
        ValueError: Bad shapes, mismatched inputs, invalid hyper-parameters or backend.
        NativeBuildError: ``backend="native"`` and the extension cannot be built.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    _check(input1, input2, kernel_size, patch_size, stride, padding, dilation, dilation_patch)
    if backend == "auto":
        backend = _auto_backend(input1)
    if backend == "torch":
        return correlation_torch(
            input1,
            input2,
            kernel_size,
            patch_size,
            stride,
            padding,
            dilation_patch,
            dilation=dilation,
        )
    if not native_supports(input1):
        raise NativeBuildError(
            f"the native correlation extension has no kernels for device {input1.device}"
        )
    return correlation_native(
        input1, input2, kernel_size, patch_size, stride, padding, dilation, dilation_patch
    )


def _auto_backend(input1: Tensor) -> Backend:
    """``"native"`` when the extension builds and has kernels for the device, else ``"torch"``."""
    try:
        supported = native_supports(input1)
    except NativeBuildError as error:
        _warn_once("build", f"native correlation unavailable, using the torch path: {error}")
        return "torch"
    if not supported:
        _warn_once(
            f"device:{input1.device.type}",
            f"native correlation has no {input1.device.type} kernels, using the torch path",
        )
        return "torch"
    return "native"


class SpatialCorrelation(nn.Module):
    """Parameter-free module around :func:`correlation`.

    Args:
        kernel_size: Window ``k`` summed around each position.
        patch_size: Number of displacements ``P`` per axis.
        stride: Stride ``t`` of the output grid.
        padding: Zero padding ``p`` of the output grid.
        dilation_patch: Step ``s`` between displacements.
        backend: ``"auto"``, ``"native"`` or ``"torch"``.
        dilation: Dilation ``δ`` of the summed window (keyword only).
    """

    def __init__(
        self,
        kernel_size: int = 1,
        patch_size: int = 16,
        stride: int = 1,
        padding: int = 0,
        dilation_patch: int = 2,
        backend: Backend = "auto",
        *,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.kernel_size = kernel_size
        self.patch_size = patch_size
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.dilation_patch = dilation_patch
        self.backend: Backend = backend

    def forward(self, input1: Tensor, input2: Tensor) -> Tensor:
        """Correlate ``B x C x H x W`` inputs into ``B x P x P x H_out x W_out``."""
        return correlation(
            input1,
            input2,
            kernel_size=self.kernel_size,
            patch_size=self.patch_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            dilation_patch=self.dilation_patch,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        """Hyper-parameters for ``repr``."""
        return (
            f"kernel_size={self.kernel_size}, patch_size={self.patch_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, "
            f"dilation_patch={self.dilation_patch}, backend={self.backend!r}"
        )
