"""Block-diagonal ("varlen") attention through PyTorch, for SAM 3D's sparse transformers.

Upstream's sparse attention packs many variable-length sequences (one per object, or one per
window of the decoders' swin attention) into one [1, M, H, C] tensor. Without `flash_attn`
it falls back to `masked_sdpa`, which builds a dense M×M additive mask: about 3.5 GB at
42,000 voxels and 20 GB at 100,000. `varlen_sdpa` computes the same attention without any
mask: one SDPA call for a single sequence, PyTorch's flash-attention varlen kernel on CUDA in
half precision, and otherwise equal-length sequences batched into one SDPA call each.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import torch
import torch.nn.functional as F


def _varlen_kernel():
    """torch.nn.attention.varlen.varlen_attn where this torch has it, else None."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def _cumulative(lengths: Sequence[int], device) -> torch.Tensor:
    out = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    out[1:] = torch.cumsum(torch.as_tensor(list(lengths), dtype=torch.int32), 0)
    return out.to(device)


def _grouped_sdpa(q, k, v, q_lens: Sequence[int], kv_lens: Sequence[int]) -> torch.Tensor:
    """Sequences of equal (q, kv) length share one batched SDPA call; no mask anywhere."""
    q_starts = [0]
    for n in q_lens:
        q_starts.append(q_starts[-1] + n)
    kv_starts = [0]
    for n in kv_lens:
        kv_starts.append(kv_starts[-1] + n)
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, key in enumerate(zip(q_lens, kv_lens)):
        groups[key].append(i)
    out = q.new_empty(q.shape[0], q.shape[1], v.shape[2])
    for (lq, lk), members in groups.items():
        qi = torch.stack([q[q_starts[i]:q_starts[i] + lq] for i in members])  # [B, Lq, H, C]
        ki = torch.stack([k[kv_starts[i]:kv_starts[i] + lk] for i in members])
        vi = torch.stack([v[kv_starts[i]:kv_starts[i] + lk] for i in members])
        o = F.scaled_dot_product_attention(qi.transpose(1, 2), ki.transpose(1, 2),
                                           vi.transpose(1, 2)).transpose(1, 2)
        for j, i in enumerate(members):
            out[q_starts[i]:q_starts[i] + lq] = o[j]
    return out


def varlen_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                q_seqlen: Sequence[int], kv_seqlen: Sequence[int]) -> torch.Tensor:
    """Drop-in for upstream's `masked_sdpa(q, k, v, q_seqlen, kv_seqlen)`.

    q: [1, sum(q_seqlen), H, C]; k, v: [1, sum(kv_seqlen), H, C]. Returns [sum(q_seqlen), H, C].
    Sequence i of q attends to sequence i of k/v only.
    """
    q_lens, kv_lens = [int(n) for n in q_seqlen], [int(n) for n in kv_seqlen]
    q, k, v = q[0], k[0], v[0]
    if len(q_lens) == 1:
        return F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None],
                                              v.transpose(0, 1)[None])[0].transpose(0, 1)
    kernel = _varlen_kernel()
    if (kernel is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)
            and k.dtype == q.dtype and v.dtype == q.dtype):
        return kernel(q.contiguous(), k.contiguous(), v.contiguous(),
                      _cumulative(q_lens, q.device), _cumulative(kv_lens, q.device),
                      max(q_lens), max(kv_lens))
    return _grouped_sdpa(q, k, v, q_lens, kv_lens)


# Upstream modules that bind `masked_sdpa` at import when the sparse attention backend is sdpa.
SPARSE_ATTENTION_MODULES = (
    "sam3d_objects.model.backbone.tdfy_dit.modules.sparse.attention.full_attn",
    "sam3d_objects.model.backbone.tdfy_dit.modules.sparse.attention.serialized_attn",
    "sam3d_objects.model.backbone.tdfy_dit.modules.sparse.attention.windowed_attn",
)


def install_varlen_sdpa() -> list[str]:
    """Point upstream's sparse attention at `varlen_sdpa`; returns the modules patched."""
    import importlib

    patched = []
    for name in SPARSE_ATTENTION_MODULES:
        module = importlib.import_module(name)
        if hasattr(module, "masked_sdpa"):
            module.masked_sdpa = varlen_sdpa
            patched.append(name)
    return patched
