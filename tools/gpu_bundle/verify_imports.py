"""Checks that the GPU bundle gives everything bench/bench_sam3d_h200.py imports, before a long
run: every carried package and stand-in imports (and from where), upstream's inference
pipeline imports with this project's attention choice, and, where CUDA is present, spconv's
kernels run one submanifold convolution. Prints one JSON report; exits 1 if anything failed.

On the GPU machine, after `. .sam3d/setup.sh`:  python3 .sam3d/verify_imports.py [REPORT.json]
Here (CPU), with the dry-run PYTHONPATH of tools/gpu_bundle/README.md:
    python tools/gpu_bundle/verify_imports.py [REPORT.json]
Copied into .sam3d/ by tools/gpu_bundle/build.sh."""
from __future__ import annotations

import importlib
import json
import os
import sys
import traceback

# Carried as wheels or trees (name imported, distribution for the version).
CARRIED = [("hydra", "hydra-core"), ("omegaconf", "omegaconf"), ("antlr4", "antlr4-python3-runtime"),
           ("loguru", "loguru"), ("astor", "astor"), ("plyfile", "plyfile"), ("easydict", "easydict"),
           ("optree", "optree"), ("pccm", "pccm"), ("ccimport", "ccimport"), ("lark", "lark"),
           ("fire", "fire"), ("termcolor", "termcolor"), ("pydantic", "pydantic"),
           ("pydantic_core", "pydantic-core"), ("annotated_types", "annotated-types"),
           ("typing_inspection", "typing-inspection"), ("typing_extensions", "typing-extensions"),
           ("trimesh", "trimesh"), ("xatlas", "xatlas"), ("meshoptimizer", "meshoptimizer"),
           ("cumm", None), ("spconv.pytorch", None)]
# Upstream sources at pinned commits, and our stand-ins.
SOURCES = ["moge.model.v1", "moge.model.dinov2.hub.backbones", "utils3d", "pytorch3d.transforms",
           "pytorch3d.renderer"]
STANDINS = ["kaolin.utils.testing", "open3d", "pyvista", "pymeshfix._meshfix", "igraph", "gsplat", "ray.serve"]
PROJECT = ["sam3d_common.settings", "deployments.mesh_baker.bake", "deployments.reconstructor.sam3d"]


def where(module) -> str:
    return os.path.dirname(getattr(module, "__file__", None) or "?")


def version(dist: str | None) -> str | None:
    if dist is None:
        return None
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def try_import(name: str, report: dict, dist: str | None = None) -> object | None:
    try:
        module = importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - every failure is reported, not raised
        report[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                        "traceback": traceback.format_exc()[-1500:]}
        return None
    try:  # utils3d's module __getattr__ raises ImportError for unknown names
        version_of = version(dist) or getattr(module, "__version__", None)
    except Exception:  # noqa: BLE001
        version_of = None
    report[name] = {"ok": True, "from": where(module), "version": version_of}
    return module


def upstream_pipeline(report: dict, cuda: bool) -> None:
    """Upstream's pipeline module through the project's import_pipeline (attention choice)."""
    import torch

    real = torch.cuda.is_available, torch.cuda.get_device_name
    if not cuda:  # upstream's import-time set_attention_backend() reads the GPU's name
        torch.cuda.is_available, torch.cuda.get_device_name = (lambda: True), (lambda *a: "no GPU")
    try:
        from deployments.reconstructor.sam3d_upstream import import_pipeline

        report["sam3d_objects pipeline"] = {"ok": True, "attention": import_pipeline(),
                                            "from": where(sys.modules["sam3d_objects"])}
    except Exception as exc:  # noqa: BLE001
        report["sam3d_objects pipeline"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                                            "traceback": traceback.format_exc()[-3000:]}
    finally:
        torch.cuda.is_available, torch.cuda.get_device_name = real


def spconv_on_gpu(report: dict) -> None:
    """One fp16 submanifold convolution on a few voxels: spconv's and cumm's CUDA code loads."""
    import spconv.pytorch as spconv
    import torch

    try:
        coords = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 2], [0, 2, 1, 1], [0, 5, 5, 5]],
                              dtype=torch.int32, device="cuda")
        x = spconv.SparseConvTensor(torch.randn(4, 16, device="cuda", dtype=torch.float16), coords,
                                    [8, 8, 8], 1)
        conv = spconv.SubMConv3d(16, 32, 3, bias=True).cuda().half()
        out = conv(x)
        torch.cuda.synchronize()
        report["spconv cuda"] = {"ok": bool(torch.isfinite(out.features).all()),
                                 "out": list(out.features.shape), "gpu": torch.cuda.get_device_name(0)}
    except Exception as exc:  # noqa: BLE001
        report["spconv cuda"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                                 "traceback": traceback.format_exc()[-2000:]}


def main() -> int:
    import torch

    cuda = torch.cuda.is_available()
    report: dict = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": cuda}
    for name, dist in CARRIED:
        try_import(name, report, dist)
    for name in SOURCES + STANDINS + PROJECT:
        try_import(name, report)
    upstream_pipeline(report, cuda)
    if cuda and report.get("spconv.pytorch", {}).get("ok"):
        spconv_on_gpu(report)
    failed = sorted(k for k, v in report.items() if isinstance(v, dict) and not v.get("ok"))
    report["failed"] = failed
    text = json.dumps(report, indent=1, default=str)
    if len(sys.argv) > 1:  # upstream's imports print to stdout too: the report to its own file
        with open(sys.argv[1], "w") as f:
            f.write(text)
    else:
        print(text)
    print(f"verify_imports: {len(failed)} failed" + (f": {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
