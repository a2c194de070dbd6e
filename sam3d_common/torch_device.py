"""Device and dtype for a model-backed stage: `auto` means CUDA when the replica sees one;
bf16 on CUDA (fp16 where bf16 is unsupported), fp32 on CPU."""
from __future__ import annotations

from sam3d_common.errors import ModelUnavailable


def resolve_device_dtype(device: str, dtype: str, key: str, cuda_hint: str = ""):
    """(torch.device, torch.dtype). `key` is the settings prefix named in errors
    (e.g. "segmenter.sam3"); `cuda_hint` is added when CUDA is asked for and absent."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelUnavailable(f"{key}.device is 'cuda' but this replica sees no CUDA device{cuda_hint}")
    if dtype == "auto":
        if device == "cuda":
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        else:
            dtype = "float32"
    if device == "cpu" and dtype == "float16":
        raise ModelUnavailable(f"{key}.dtype float16 is not supported on CPU; use float32 or bfloat16.")
    return torch.device(device), getattr(torch, dtype)
