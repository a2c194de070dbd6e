"""The SAM 3 ViT's MLP with its first matrix multiply, bias and GELU in one call, an opt-in speed lever.

The ViT's MLP is fc1 → GELU → fc2 with a 4736-wide hidden layer. Compiled, inductor keeps fc1 a cuBLAS
call (bias in its epilogue) and runs GELU as a separate kernel that reads and writes the whole hidden
activation once more: 1.6 of the 14.9 ms of kernels at batch 1 in the H100 profile (docs/sam3.md).
`torch._addmm_activation(..., use_gelu=True)` computes fc1's product, its bias and GELU in one cuBLASLt
call (GELU in the epilogue), and inductor passes it through as it is. cuBLASLt's epilogue is GELU's tanh
form (PyTorch's fallback on CUDA matches it); the trained model uses the exact form, a difference of
at most 5e-4 per activation, well inside bf16's own rounding. On the CPU the same call computes the
exact form, which is how the tests check the wiring. Agreement with the plain MLP at full size is
reported by bench/bench_sam3_encoder.py.
"""
from __future__ import annotations

import torch
from torch import nn


def _exact_gelu(module: nn.Module) -> bool:
    """Whether `module` is GELU in its exact (erf) form: torch's nn.GELU or transformers' GELUActivation."""
    if isinstance(module, nn.GELU):
        return module.approximate == "none"
    return type(module).__name__ == "GELUActivation" and getattr(module, "act", None) is nn.functional.gelu


class FusedGeluMlp(nn.Module):
    """fc2(GELU(fc1(x))) with fc1 and GELU as one call (inference only; fc1 needs a bias)."""

    def __init__(self, fc1: nn.Linear, fc2: nn.Module):
        super().__init__()
        self.fc1, self.fc2 = fc1, fc2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.fc1.in_features)
        hidden = torch._addmm_activation(self.fc1.bias, rows, self.fc1.weight.t(), use_gelu=True)
        return self.fc2(hidden).reshape(*x.shape[:-1], -1)


def use_fused_gelu(module: nn.Module) -> int:
    """Replace, in place, every MLP inside `module` shaped fc1 → exact GELU → fc2 (fc1 an nn.Linear
    with a bias, dropout off) by a FusedGeluMlp; returns how many were replaced."""
    count = 0
    for name, child in list(module.named_children()):
        fc1, fc2, act = (getattr(child, a, None) for a in ("fc1", "fc2", "activation_fn"))
        dropout = getattr(child, "dropout", None)
        if (type(fc1) is nn.Linear and fc1.bias is not None and fc2 is not None and act is not None
                and _exact_gelu(act) and (dropout is None or not dropout.training or dropout.p == 0)):
            setattr(module, name, FusedGeluMlp(fc1, fc2))
            count += 1
        else:
            count += use_fused_gelu(child)
    return count
