"""`check_tensor` with kaolin's contract: shape (None = any size), dtype and device checks."""
from __future__ import annotations


def check_tensor(tensor, shape=None, dtype=None, device=None, throw=True) -> bool:
    problem = None
    if shape is not None and (tensor.dim() != len(shape) or any(
            want is not None and got != want for got, want in zip(tensor.shape, shape))):
        problem = f"tensor shape is {tuple(tensor.shape)}, should be {tuple(shape)}"
    elif dtype is not None and tensor.dtype != dtype:
        problem = f"tensor dtype is {tensor.dtype}, should be {dtype}"
    elif device is not None and tensor.device != device:
        problem = f"tensor device is {tensor.device}, should be {device}"
    if problem and throw:
        raise ValueError(problem)
    return problem is None
