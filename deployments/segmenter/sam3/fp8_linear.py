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
  needs a reduction over the whole tensor before it can be cast;
- "static": as "tensor", but each layer's activation scale is fixed before serving, from the largest
  input it saw on calibration photos (`record_input_amax`, fp8_calibration.py) times STATIC_HEADROOM.
  No reduction at run time: the cast is a multiply and a clamp that fuse into the kernel producing
  the input (layer norm, GELU). An input beyond the calibrated range saturates at ±448 × scale.
Under torch.compile the activation quantisation fuses into neighbouring kernels. FP8 matrix
multiplies need a GPU of compute capability 8.9 or newer (Ada, Hopper); PyTorch's CPU build runs
the same code (slowly), which is how the tests check it. Agreement with the bf16 model is reported by
bench/bench_sam3_encoder.py; it is a numerical check on random weights, not a quality claim.
"""
from __future__ import annotations

import torch
from torch import nn

E4M3_MAX = 448.0  # largest finite float8_e4m3fn value
SCALINGS = ("row", "tensor", "static")
# "static": the calibrated amax is mapped to 448 / STATIC_HEADROOM, leaving room for inputs up to twice
# the largest seen. e4m3's relative precision is the same across its normal range (2^-6 .. 448), so the
# headroom costs precision only for inputs below 2^-5 of the calibrated amax.
STATIC_HEADROOM = 2.0


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
    """A frozen nn.Linear computed in FP8 with per-row, per-tensor or calibrated static scales
    (inference only). input_amax: for "static", the largest |input| seen in calibration."""

    def __init__(self, linear: nn.Linear, scaling: str = "row", input_amax: float | None = None):
        super().__init__()
        if scaling not in SCALINGS:
            raise ValueError(f"FP8 scaling is one of {SCALINGS}, not {scaling!r}")
        if (scaling == "static") != (input_amax is not None):
            raise ValueError("input_amax is given for the 'static' scaling, and only for it")
        self.in_features, self.out_features, self.scaling = linear.in_features, linear.out_features, scaling
        weight, scale = _quantise(linear.weight.detach(), "row" if scaling == "row" else "tensor")
        self.register_buffer("weight_fp8", weight)  # (out, in), row-major: its .t() is column-major
        self.register_buffer("weight_scale", scale.t().contiguous() if scaling == "row" else scale)  # (1, out) or ()
        if scaling == "static":
            input_scale = max(float(input_amax), 1e-12) * STATIC_HEADROOM / E4M3_MAX
            self.register_buffer("input_scale", torch.tensor(input_scale, device=weight.device))
            self.register_buffer("input_inv_scale", torch.tensor(1.0 / input_scale, device=weight.device))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)

    def _quantise_input(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.scaling != "static":
            return _quantise(rows, self.scaling)
        q = (rows.float() * self.input_inv_scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
        return q, self.input_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        q, scale = self._quantise_input(rows)
        # FP8 products on CUDA come out in bf16 (the row-wise kernels produce nothing else).
        out_dtype = torch.bfloat16 if x.is_cuda else x.dtype
        in_epilogue = self.scaling != "row" and self.bias is not None
        out = torch._scaled_mm(q, self.weight_fp8.t(), scale_a=scale, scale_b=self.weight_scale,
                               bias=self.bias.to(out_dtype) if in_epilogue else None,
                               out_dtype=out_dtype, use_fast_accum=x.is_cuda).to(x.dtype)
        if self.bias is not None and not in_epilogue:
            out = out + self.bias.to(x.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)


def fp8_suits(module: nn.Module) -> bool:
    """Whether `module` is an nn.Linear the FP8 kernels can take (both sizes multiples of 16)."""
    return isinstance(module, nn.Linear) and module.in_features % 16 == 0 and module.out_features % 16 == 0


def record_input_amax(module: nn.Module, run) -> dict[str, float]:
    """The largest |input| of each FP8-suited linear inside `module` (keyed by its name there) while
    `run()` runs: the calibration of the "static" scaling."""
    amax: dict[str, float] = {}

    def hook(name):
        def record(_module, args):
            amax[name] = max(amax.get(name, 0.0), float(args[0].detach().abs().amax()))
        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in module.named_modules() if fp8_suits(m)]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return amax


def use_fp8_linears(module: nn.Module, scaling: str = "row", input_amax: dict[str, float] | None = None,
                    _prefix: str = "") -> int:
    """Replace, in place, every FP8-suited nn.Linear inside `module` by an Fp8Linear with `scaling`
    (for "static", `input_amax` from record_input_amax on the same module); returns how many."""
    if scaling == "static" and input_amax is None:
        raise ValueError("the 'static' FP8 scaling needs the calibrated input_amax")
    count = 0
    for name, child in list(module.named_children()):
        path = _prefix + name
        if fp8_suits(child):
            amax = None
            if scaling == "static":
                if path not in input_amax:
                    raise ValueError(f"no calibrated input range for {path}: calibration never called it")
                amax = input_amax[path]
            setattr(module, name, Fp8Linear(child, scaling, amax))
            count += 1
        else:
            count += use_fp8_linears(child, scaling, input_amax, path + ".")
    return count
