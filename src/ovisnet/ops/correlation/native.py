"""Autograd wrapper of the native (C++ / CUDA) correlation kernels."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ovisnet.ops.correlation.build import load_native

_CPU_DTYPES = (torch.float32, torch.float64)


class CorrelationFunction(torch.autograd.Function):
    """Native correlation with the hand-written exact backward (not twice differentiable)."""

    @staticmethod
    def forward(
        ctx: Any,
        input1: Tensor,
        input2: Tensor,
        kernel_size: int,
        patch_size: int,
        stride: int,
        padding: int,
        dilation: int,
        dilation_patch: int,
    ) -> Tensor:
        """Compute ``B x P x P x H_out x W_out`` from two ``B x C x H x W`` inputs."""
        params = (kernel_size, patch_size, stride, padding, dilation, dilation_patch)
        ctx.params = params
        ctx.save_for_backward(input1, input2)
        return load_native().forward(input1, input2, *params)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        """Gradients for both inputs from ``grad_output`` (``B x P x P x H_out x W_out``)."""
        input1, input2 = ctx.saved_tensors
        grad1, grad2 = load_native().backward(
            grad_output,
            input1,
            input2,
            *ctx.params,
            ctx.needs_input_grad[0],
            ctx.needs_input_grad[1],
        )
        return (grad1, grad2) + (None,) * len(ctx.params)


def native_supports(input1: Tensor) -> bool:
    """Whether the built extension has kernels for ``input1``'s device (builds it if needed).

    Raises:
        NativeBuildError: The extension cannot be built.
    """
    extension = load_native()
    if input1.device.type == "cpu":
        return True
    return input1.device.type == "cuda" and bool(extension.has_cuda())


def correlation_native(
    input1: Tensor,
    input2: Tensor,
    kernel_size: int,
    patch_size: int,
    stride: int,
    padding: int,
    dilation: int,
    dilation_patch: int,
) -> Tensor:
    """Run the native op; on CPU, float16 / bfloat16 inputs are computed in float32.

    Args:
        input1: ``B x C x H x W``.
        input2: ``B x C x H x W``.
        kernel_size: ``k``.
        patch_size: ``P``.
        stride: ``t``.
        padding: ``p``.
        dilation: ``δ``.
        dilation_patch: ``s``.

    Returns:
        ``B x P x P x H_out x W_out`` in the input dtype.

    Raises:
        NativeBuildError: The extension cannot be built.
    """
    args = (kernel_size, patch_size, stride, padding, dilation, dilation_patch)
    if input1.device.type == "cpu" and input1.dtype not in _CPU_DTYPES:
        out = CorrelationFunction.apply(input1.float(), input2.float(), *args)
        return out.to(input1.dtype)
    return CorrelationFunction.apply(input1, input2, *args)
