"""Lazy, cached build of the native correlation extension.

The extension is compiled on first use with ``torch.utils.cpp_extension.load`` (never at import),
into ``$OVISNET_EXT_DIR`` or ``${XDG_CACHE_HOME:-~/.cache}/ovisnet/extensions``, in a folder whose
name hashes the sources, the flags, the torch / Python / CUDA versions and the CUDA targets, so a
rebuild happens only when one of them changes. Without a visible GPU only the C++ CPU kernels are
built (no nvcc step); with a GPU and a CUDA toolkit the CUDA kernels are compiled in as well.
:func:`compile_cuda_extension` compiles the CUDA kernels whenever ``nvcc`` is found, GPU or not.
``OVISNET_DISABLE_NATIVE=1`` makes every build fail, which is how the torch fallback is tested.
The C++ standard is left to ``cpp_extension`` (C++20 for PyTorch >= 2.14); no ``-std`` flag is
passed.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch

ENV_DISABLE = "OVISNET_DISABLE_NATIVE"
ENV_EXT_DIR = "OVISNET_EXT_DIR"

_CSRC = Path(__file__).resolve().parent / "csrc"
_HEADERS = ("correlation.h",)
_CPU_SOURCES = ("correlation.cpp", "correlation_cpu.cpp")
_CUDA_SOURCES = ("correlation_cuda.cu",)
# at::parallel_for runs single-threaded unless the translation unit is compiled with OpenMP.
_OPENMP = ("-fopenmp",) if sys.platform.startswith("linux") else ()
_CFLAGS = ("-O3", *_OPENMP)
_CUDA_DEFINE = "-DOVISNET_WITH_CUDA"
_NVCC_FLAGS = ("-O3", _CUDA_DEFINE)


class NativeBuildError(RuntimeError):
    """The native correlation extension could not be built or loaded."""


_lock = threading.Lock()
_native: ModuleType | None = None
_native_error: NativeBuildError | None = None


def extension_dir() -> Path:
    """Root folder of the extension builds (``$OVISNET_EXT_DIR`` or the user cache)."""
    configured = os.environ.get(ENV_EXT_DIR)
    if configured:
        return Path(configured).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "ovisnet" / "extensions"


def _is_cuda_root(root: Path) -> bool:
    has_nvcc = (root / "bin" / "nvcc").is_file()
    has_runtime = any(any((root / lib).glob("libcudart.so*")) for lib in ("lib64", "lib"))
    return has_nvcc and has_runtime


def find_cuda_home() -> Path | None:
    """Locate the CUDA toolkit root (the folder holding ``bin/nvcc`` and ``lib64/libcudart.so``).

    ``$CUDA_HOME`` / ``$CUDA_PATH`` win when they name a toolkit root; otherwise the ``nvcc`` on
    ``PATH`` (symlinks resolved) and ``/usr/local/cuda`` are tried. A wrapper script such as
    ``/usr/local/bin/nvcc`` is not mistaken for a toolkit at ``/usr/local``.

    Returns:
        The toolkit root, or ``None`` when no complete toolkit is found.
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc is not None:
        candidates.append(str(Path(nvcc).resolve().parent.parent))
    candidates.append("/usr/local/cuda")
    for candidate in candidates:
        if candidate and _is_cuda_root(Path(candidate)):
            return Path(candidate)
    return None


def _cpp_extension() -> ModuleType:
    """Import ``torch.utils.cpp_extension`` without its import-time ``CUDA_HOME`` guess warning.

    The guess is replaced by :func:`find_cuda_home` for CUDA builds and unused for CPU builds.
    """
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        logger.setLevel(level)
    return cpp_extension


@contextlib.contextmanager
def _cuda_environment(cuda_home: Path, arch_list: str | None) -> Iterator[None]:
    """Point ``torch.utils.cpp_extension`` at ``cuda_home`` (and an arch list) while building.

    ``cpp_extension`` resolves ``CUDA_HOME`` once, at its import, from ``nvcc``'s folder; that guess
    is wrong when ``nvcc`` on ``PATH`` is a wrapper outside the toolkit, and linking then fails.
    """
    cpp_extension = _cpp_extension()
    saved_home = cpp_extension.CUDA_HOME
    saved_arch = os.environ.get("TORCH_CUDA_ARCH_LIST")
    cpp_extension.CUDA_HOME = str(cuda_home)
    if arch_list is not None:
        os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list
    try:
        yield
    finally:
        cpp_extension.CUDA_HOME = saved_home
        if arch_list is not None:
            if saved_arch is None:
                os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
            else:
                os.environ["TORCH_CUDA_ARCH_LIST"] = saved_arch


def _build(with_cuda: bool, build_root: Path | None, arch_list: str | None) -> ModuleType:
    if os.environ.get(ENV_DISABLE, "") not in ("", "0"):
        raise NativeBuildError(f"the native correlation build is disabled by {ENV_DISABLE}=1")
    cuda_home = find_cuda_home() if with_cuda else None
    if with_cuda and cuda_home is None:
        raise NativeBuildError("nvcc / CUDA toolkit not found (set CUDA_HOME to the toolkit root)")
    if with_cuda and torch.version.cuda is None:
        raise NativeBuildError("this torch build has no CUDA support; cannot link CUDA kernels")
    names = _CPU_SOURCES + (_CUDA_SOURCES if with_cuda else ())
    cflags = list(_CFLAGS) + ([_CUDA_DEFINE] if with_cuda else [])
    # Without an explicit arch list torch compiles for the visible GPUs: they are part of the key.
    targets = arch_list or os.environ.get("TORCH_CUDA_ARCH_LIST")
    if with_cuda and targets is None:
        targets = [torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())]
    digest = hashlib.sha256()
    for name in (*_HEADERS, *names):
        digest.update((_CSRC / name).read_bytes())
    for part in (torch.__version__, torch.version.cuda, sys.version, cflags, _NVCC_FLAGS, targets):
        digest.update(repr(part).encode())
    module_name = f"ovisnet_correlation_{'cuda' if with_cuda else 'cpu'}_{digest.hexdigest()[:16]}"
    build_dir = (build_root or extension_dir()) / module_name
    build_dir.mkdir(parents=True, exist_ok=True)
    cpp_extension = _cpp_extension()
    context = _cuda_environment(cuda_home, arch_list) if cuda_home else contextlib.nullcontext()
    try:
        with context:
            return cpp_extension.load(
                name=module_name,
                sources=[str(_CSRC / name) for name in names],
                extra_cflags=cflags,
                extra_cuda_cflags=list(_NVCC_FLAGS) if with_cuda else None,
                extra_ldflags=list(_OPENMP),
                build_directory=str(build_dir),
                with_cuda=with_cuda,
                verbose=False,
            )
    except Exception as error:
        raise NativeBuildError(f"building {module_name} in {build_dir} failed: {error}") from error


def load_native() -> ModuleType:
    """Return the native extension, building it on first use (once per process).

    CUDA kernels are included when a GPU is visible and a CUDA toolkit is found; otherwise the
    build holds the CPU kernels only. A failure is remembered and raised again on later calls.

    Raises:
        NativeBuildError: The build is disabled, no compiler is available, or compilation failed.
    """
    global _native, _native_error
    with _lock:
        if _native is not None:
            return _native
        if _native_error is not None:
            raise _native_error
        with_cuda = (
            torch.cuda.is_available()
            and torch.version.cuda is not None
            and find_cuda_home() is not None
        )
        try:
            _native = _build(with_cuda=with_cuda, build_root=None, arch_list=None)
        except NativeBuildError as error:
            _native_error = error
            raise
        return _native


def compile_cuda_extension(
    build_root: Path | None = None, arch_list: str | None = "8.0"
) -> ModuleType:
    """Compile (and load) the extension with its CUDA kernels; needs ``nvcc``, not a GPU.

    Args:
        build_root: Folder for the build (default: :func:`extension_dir`).
        arch_list: ``TORCH_CUDA_ARCH_LIST`` for the build; ``None`` keeps torch's choice (the
            visible GPUs), the default ``"8.0"`` compiles a single architecture, which is enough
            to check that the sources compile and link.

    Returns:
        The loaded module; its ``has_cuda()`` is ``True``.

    Raises:
        NativeBuildError: The build is disabled, no CUDA toolkit, a CPU-only torch, or
            compilation failed.
    """
    return _build(with_cuda=True, build_root=build_root, arch_list=arch_list)
