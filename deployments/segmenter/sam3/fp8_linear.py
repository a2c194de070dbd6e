"""FP8 (e4m3) matrix multiplies for the SAM 3 ViT's linear layers, an opt-in speed lever.

Each `nn.Linear` whose sizes suit the FP8 kernels (multiples of 16) becomes an `Fp8Linear`: the
weight is quantised once, per output row, to float8_e4m3fn with a float32 scale; at each call
the activations are quantised per row the same way and `torch._scaled_mm` multiplies them with
row-wise scales, with Hopper's fast accumulation on CUDA (`use_fast_accum`: partial sums kept in
the tensor cores' own precision instead of being promoted at every k-block, as torchao's float8
inference does); the bias is added in the activations' dtype. Under torch.compile the activation
quantisation fuses into neighbouring kernels. FP8 matrix multiplies need a GPU of compute
capability 8.9 or newer (Ada, Hopper); PyTorch's CPU build runs the same code (slowly), which is
how the tests check it. Agreement with the bf16 model is reported by
bench/bench_sam3_encoder.py; it is a numerical check on random weights, not a quality claim.
"""
from __future__ import annotations

import torch
from torch import nn

E4M3_MAX = 448.0  # largest finite float8_e4m3fn value


def fp8_problem(device: torch.device) -> str | None:
    """Why FP8 matrix multiplies cannot run on `device`, or None."""
    if not hasattr(torch, "float8_e4m3fn") or not hasattr(torch, "_scaled_mm"):
        return f"this PyTorch ({torch.__version__}) has no float8 matrix multiply"
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
        name = torch.cuda.get_device_name(device)
        return f"{name} has no FP8 tensor cores (compute capability 8.9 or newer is needed)"
    return None


def _rowwise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (M, K) → (x as e4m3, per-row float32 scale (M, 1)) with x ≈ q * scale."""
    scale = x.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / E4M3_MAX
    return (x.float() / scale).to(torch.float8_e4m3fn), scale


class Fp8Linear(nn.Module):
    """A frozen nn.Linear computed in FP8 with per-row scales (inference only)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight, scale = _rowwise(linear.weight.detach())
        self.register_buffer("weight_fp8", weight)  # (out, in), row-major: its .t() is column-major
        self.register_buffer("weight_scale", scale.t().contiguous())  # (1, out)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        q, scale = _rowwise(rows)
        # Row-wise scaled FP8 products on CUDA come out in bf16; the bias is added after.
        out_dtype = torch.bfloat16 if x.is_cuda else x.dtype
        out = torch._scaled_mm(q, self.weight_fp8.t(), scale_a=scale, scale_b=self.weight_scale,
                               out_dtype=out_dtype, use_fast_accum=x.is_cuda).to(x.dtype)
        if self.bias is not None:
            out = out + self.bias.to(x.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)


def use_fp8_linears(module: nn.Module) -> int:
    """Replace, in place, every nn.Linear inside `module` whose sizes are multiples of 16 by an
    Fp8Linear; returns how many were replaced."""
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear) and child.in_features % 16 == 0 and child.out_features % 16 == 0:
            setattr(module, name, Fp8Linear(child))
            count += 1
        else:
            count += use_fp8_linears(child)
    return count
