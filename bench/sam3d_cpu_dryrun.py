"""CPU dry run support for bench_sam3d_h200.py (`--cpu`): the same code paths on 1-block
networks, to catch errors before spending GPU time. Upstream hard-codes CUDA in places; this
maps those calls to the CPU. Nothing measured this way is a figure for the README."""
from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

from tests.support.spconv_cpu import submanifold_conv_cpu


def _cpu(v):
    if isinstance(v, str) and v.startswith("cuda"):
        return "cpu"
    if isinstance(v, torch.device) and v.type == "cuda":
        return torch.device("cpu")
    return v


class CudaToCpu(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*[_cpu(a) for a in args], **{k: _cpu(v) for k, v in (kwargs or {}).items()})


def install() -> type:
    """Call before anything upstream runs; returns the mode class for worker threads."""
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self
    torch.cuda.current_device = lambda: -1
    CudaToCpu().__enter__()
    import spconv.pytorch as spc

    spc.SubMConv3d.forward = submanifold_conv_cpu
    from deployments.reconstructor import sam3d_upstream

    sam3d_upstream.cuda_problem = lambda: None
    real_import = sam3d_upstream.import_pipeline

    def import_pipeline():  # upstream's import-time set_attention_backend() needs a GPU's name
        real = torch.cuda.is_available, torch.cuda.get_device_name
        torch.cuda.is_available, torch.cuda.get_device_name = (lambda: True), (lambda *a: "CPU dry run")
        try:
            return real_import()
        finally:
            torch.cuda.is_available, torch.cuda.get_device_name = real

    sam3d_upstream.import_pipeline = import_pipeline
    _shorten_dinov2()
    return CudaToCpu


def _shorten_dinov2(keep: int = 4) -> None:
    """DINOv2-L (the condition embedders' and MoGe's) with its last `keep` blocks only: MoGe
    reads the last 4; at full depth one prepare takes minutes on a CPU."""
    from moge.model.dinov2.hub import backbones

    def shortened(build):
        def wrapper(*args, **kwargs):
            model = build(*args, **kwargs)
            model.blocks = model.blocks[-keep:]
            model.n_blocks = len(model.blocks)
            return model
        return wrapper

    for name in [n for n in dir(backbones) if n.startswith("dinov2_")]:
        setattr(backbones, name, shortened(getattr(backbones, name)))
