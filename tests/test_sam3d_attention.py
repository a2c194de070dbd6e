"""varlen_sdpa: block-diagonal attention without an M×M mask, checked against the dense
masked attention it replaces (upstream's `masked_sdpa` semantics, written out here)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from deployments.reconstructor.sam3d_attention import varlen_sdpa


def dense_masked_reference(q, k, v, q_lens, kv_lens):
    """Every query sequence i attends to key sequence i only, via one dense additive mask."""
    mq, mk = sum(q_lens), sum(kv_lens)
    mask = torch.full((mq, mk), float("-inf"))
    qs = ks = 0
    for lq, lk in zip(q_lens, kv_lens):
        mask[qs:qs + lq, ks:ks + lk] = 0
        qs, ks = qs + lq, ks + lk
    out = F.scaled_dot_product_attention(q.permute(0, 2, 1, 3), k.permute(0, 2, 1, 3),
                                         v.permute(0, 2, 1, 3), attn_mask=mask)
    return out.permute(0, 2, 1, 3)[0]


@pytest.mark.parametrize("q_lens,kv_lens", [
    ([37], [37]),                      # one object: a single plain SDPA call
    ([5, 9, 5, 9, 1], [5, 9, 5, 9, 1]),  # swin windows of mixed sizes, some repeated
    ([4, 6, 3], [7, 2, 8]),            # cross attention with different kv lengths
])
def test_matches_dense_masked_attention(q_lens, kv_lens):
    g = torch.Generator().manual_seed(0)
    heads, dim = 3, 8
    q = torch.randn(1, sum(q_lens), heads, dim, generator=g)
    k = torch.randn(1, sum(kv_lens), heads, dim, generator=g)
    v = torch.randn(1, sum(kv_lens), heads, dim, generator=g)
    out = varlen_sdpa(q, k, v, q_lens, kv_lens)
    assert out.shape == (sum(q_lens), heads, dim)
    assert torch.allclose(out, dense_masked_reference(q, k, v, q_lens, kv_lens), atol=1e-5)


def test_sequences_do_not_leak_into_each_other():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 6, 2, 4, generator=g)
    k = torch.randn(1, 6, 2, 4, generator=g)
    v = torch.randn(1, 6, 2, 4, generator=g)
    base = varlen_sdpa(q, k, v, [3, 3], [3, 3])
    v2 = v.clone()
    v2[0, 3:] += 100.0  # change only the second sequence's values
    changed = varlen_sdpa(q, k, v2, [3, 3], [3, 3])
    assert torch.equal(base[:3], changed[:3])
    assert not torch.allclose(base[3:], changed[3:])


@pytest.mark.gpu
def test_cuda_half_path_matches_the_reference():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    g = torch.Generator().manual_seed(2)
    lens = [64, 17, 128, 3]
    q, k, v = (torch.randn(1, sum(lens), 4, 64, generator=g) for _ in range(3))
    ref = dense_masked_reference(q, k, v, lens, lens)
    out = varlen_sdpa(*(t.cuda().half() for t in (q, k, v)), lens, lens).float().cpu()
    assert torch.allclose(out, ref, atol=2e-2)
