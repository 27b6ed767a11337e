"""Spatial correlation op: native C++ / CUDA kernels with exact gradients and a pure-torch path.

Semantics (SPEC-models.md §4): arguments of spatial-correlation-sampler, displacement set
``d_i = s*i - floor(s*(P-1)/2)`` for every ``P`` and ``s`` (the set of its CUDA forward), zero
padding outside the image, no normalisation, and the exact gradient of that forward for both
inputs. Importing this package compiles nothing; the extension is built on first native call.

Example::

    corr = correlation(query, reference, patch_size=16, dilation_patch=2)  # B x 16 x 16 x H x W
"""

from __future__ import annotations

from ovisnet.ops.correlation.build import (
    NativeBuildError,
    compile_cuda_extension,
    extension_dir,
    find_cuda_home,
    load_native,
)
from ovisnet.ops.correlation.op import BACKENDS, Backend, SpatialCorrelation, correlation
from ovisnet.ops.correlation.torch_impl import correlation_torch, displacements, output_size

__all__ = [
    "BACKENDS",
    "Backend",
    "NativeBuildError",
    "SpatialCorrelation",
    "compile_cuda_extension",
    "correlation",
    "correlation_torch",
    "displacements",
    "extension_dir",
    "find_cuda_home",
    "load_native",
    "output_size",
]
