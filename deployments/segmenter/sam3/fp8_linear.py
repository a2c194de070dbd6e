"""FP8 (e4m3) matrix multiplies for the SAM 3 ViT's linear layers, an opt-in speed lever.

Each `nn.Linear` whose sizes suit the FP8 kernels (multiples of 16) becomes an `Fp8Linear`: the
weight is quantised once to float8_e4m3fn with float32 scales; at each call the activations are
quantised the same way and `torch._scaled_mm` multiplies them, with Hopper's fast accumulation on
CUDA (`use_fast_accum`: partial sums kept in the tensor cores' own precision instead of being
promoted at every k-block, as torchao's float8 inference does). Two scalings:
- "row": one scale per weight row and per activation row (closer to bf16); the bias is added in the
  activations' dtype after the product;
- "tensor": one scale for the weight and one for the whole activation, the cuBLASLt FP8 kernels'
  classic form, with the bias added inside the matrix multiply's epilogue; the activation's scale
  needs a reduction over the whole tensor before it can be cast.
Under torch.compile the activation quantisation fuses into neighbouring kernels. FP8 matrix
multiplies need a GPU of compute capability 8.9 or newer (Ada, Hopper); PyTorch's CPU build runs
the same code (slowly), which is how the tests check it. Agreement with the bf16 model is reported by
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


def _quantise(x: torch.Tensor, scaling: str = "row") -> tuple[torch.Tensor, torch.Tensor]:
    """x (M, K) → (x as e4m3, float32 scale) with x ≈ q * scale; the scale is per row (M, 1) for
    "row", one value (a 0-d tensor) for "tensor"."""
    amax = x.abs().amax(dim=1, keepdim=True) if scaling == "row" else x.abs().amax()
    scale = amax.float().clamp(min=1e-12) / E4M3_MAX
    return (x.float() / scale).to(torch.float8_e4m3fn), scale


class Fp8Linear(nn.Module):
    """A frozen nn.Linear computed in FP8 with per-row or per-tensor scales (inference only)."""

    def __init__(self, linear: nn.Linear, scaling: str = "row"):
        super().__init__()
        if scaling not in ("row", "tensor"):
            raise ValueError(f"FP8 scaling is 'row' or 'tensor', not {scaling!r}")
        self.in_features, self.out_features, self.scaling = linear.in_features, linear.out_features, scaling
        weight, scale = _quantise(linear.weight.detach(), scaling)
        self.register_buffer("weight_fp8", weight)  # (out, in), row-major: its .t() is column-major
        self.register_buffer("weight_scale", scale.t().contiguous() if scaling == "row" else scale)  # (1, out) or ()
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        q, scale = _quantise(rows, self.scaling)
        # FP8 products on CUDA come out in bf16 (the row-wise kernels produce nothing else).
        out_dtype = torch.bfloat16 if x.is_cuda else x.dtype
        in_epilogue = self.scaling == "tensor" and self.bias is not None
        out = torch._scaled_mm(q, self.weight_fp8.t(), scale_a=scale, scale_b=self.weight_scale,
                               bias=self.bias.to(out_dtype) if in_epilogue else None,
                               out_dtype=out_dtype, use_fast_accum=x.is_cuda).to(x.dtype)
        if self.bias is not None and not in_epilogue:
            out = out + self.bias.to(x.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)


def use_fp8_linears(module: nn.Module, scaling: str = "row") -> int:
    """Replace, in place, every nn.Linear inside `module` whose sizes are multiples of 16 by an
    Fp8Linear with `scaling`; returns how many were replaced."""
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear) and child.in_features % 16 == 0 and child.out_features % 16 == 0:
            setattr(module, name, Fp8Linear(child, scaling))
            count += 1
        else:
            count += use_fp8_linears(child, scaling)
    return count
