"""What every ctypes binding of a ``csrc/`` library shares: finding the launcher for a dtype, passing
tensors and the stream, and turning a CUDA error code into an exception.

The launchers follow ``csrc/README.md``: ``seqzoo_<op>_<fwd|bwd>_<f32|f16|bf16>``, raw pointers, int64 sizes,
the stream last, a ``cudaError_t`` returned as int.
"""

from __future__ import annotations

import ctypes

import torch

from . import _csrc

DTYPE_SUFFIX = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}


def nvcc_unavailable_reason() -> str | None:
    """Why a csrc/ library cannot be built here (None when it can): nvcc is needed on first use."""
    try:
        _csrc.find_nvcc()
    except RuntimeError as e:
        return str(e)
    return None


def launcher(library: str, op: str, kind: str, dtype: torch.dtype, argtypes: list):
    """The ctypes function ``seqzoo_<op>_<kind>_<dtype>`` of ``library`` (built for this GPU on first use)."""
    fn = getattr(_csrc.load_library(library), f"seqzoo_{op}_{kind}_{DTYPE_SUFFIX[dtype]}")
    fn.argtypes = argtypes
    fn.restype = ctypes.c_int
    return fn


def check_launch(status: int, op: str, what: str) -> None:
    """Raise a RuntimeError with CUDA's own message when a launcher returned an error."""
    if status != 0:
        abi = _csrc.load_library("seqzoo_abi")
        abi.seqzoo_cuda_error_string.restype = ctypes.c_char_p
        abi.seqzoo_cuda_error_string.argtypes = [ctypes.c_int]
        message = abi.seqzoo_cuda_error_string(status).decode(errors="replace")
        raise RuntimeError(f"{op} (cuda): the {what} kernel failed to launch: {message} (error {status})")


def pointer(t: torch.Tensor | None):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def stream_handle(device: torch.device):
    return ctypes.c_void_p(torch.cuda.current_stream(device).cuda_stream)


def csrc_unavailable(device: torch.device) -> str | None:
    """The ``unavailable`` reason of a ``cuda`` backend: it runs on a CUDA GPU and needs nvcc to build."""
    if device.type != "cuda":
        return f"the csrc/ kernel runs on a CUDA GPU, not on {device.type}"
    return nvcc_unavailable_reason()
