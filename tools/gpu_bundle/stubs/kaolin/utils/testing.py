"""`check_tensor` as FlexiCubes calls it: a real shape/dtype/device check, since its
results decide whether FlexiCubes accepts its inputs."""
from __future__ import annotations

from typing import Sequence


def check_tensor(tensor, shape: Sequence[int | None] | None = None, dtype=None, device=None,
                 throw: bool = True) -> bool:
    """True when `tensor` has `shape` (None entries match any size), `dtype` and `device`
    (each checked only when given). On a mismatch: raise ValueError if `throw`, else False."""
    problem = None
    if shape is not None:
        if len(tensor.shape) != len(shape) or any(
                want is not None and have != want for have, want in zip(tensor.shape, shape)):
            problem = f"tensor shape is {tuple(tensor.shape)}, should be {tuple(shape)}"
    if problem is None and dtype is not None and tensor.dtype != dtype:
        problem = f"tensor dtype is {tensor.dtype}, should be {dtype}"
    if problem is None and device is not None and tensor.device != device:
        problem = f"tensor device is {tensor.device}, should be {device}"
    if problem is not None and throw:
        raise ValueError(problem)
    return problem is None
