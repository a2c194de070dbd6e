"""Upstream SAM 3D Objects' sparse modules for tests of the levers around them (skips where
`sam3d_objects` is not importable: CI has no copy; tools/gpu_bundle's `--cpu-site` builds one)."""
from __future__ import annotations

import os

import pytest
import torch


def upstream_sparse():
    """Upstream's sparse modules with PyTorch attention (the service's choice without
    flash_attn), or a skip."""
    for key in ("ATTN_BACKEND", "SPARSE_ATTN_BACKEND"):
        os.environ.setdefault(key, "sdpa")
    os.environ.setdefault("LIDRA_SKIP_INIT", "true")
    try:
        sp = pytest.importorskip("sam3d_objects.model.backbone.tdfy_dit.modules.sparse",
                                 reason="upstream sam3d_objects is not installed")
        from sam3d_objects.model.backbone.tdfy_dit.models.structured_latent_flow import SLatFlowModel
        from sam3d_objects.model.backbone.tdfy_dit.modules.sparse.transformer.modulated import (
            ModulatedSparseTransformerCrossBlock)
    except ImportError as exc:  # installed, but a dependency (spconv) is missing
        pytest.skip(f"upstream sam3d_objects does not import here: {exc}")
    if sp.ATTN != "sdpa":
        pytest.skip(f"upstream's sparse attention was imported with {sp.ATTN}")
    from deployments.reconstructor.sam3d_attention import install_varlen_sdpa

    install_varlen_sdpa()
    return sp, ModulatedSparseTransformerCrossBlock, SLatFlowModel


def randomise(module, std=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():  # upstream zero-inits the modulation and output layers
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


def sparse_coords(n, side, batches=1, seed=0):
    """SparseTensor coords (batch, x, y, z), int32: up to n distinct voxels per batch."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for b in range(batches):
        xyz = torch.unique(torch.randint(0, side, (n, 3), generator=g), dim=0)
        rows.append(torch.cat([torch.full((len(xyz), 1), b), xyz], 1))
    return torch.cat(rows).int()
