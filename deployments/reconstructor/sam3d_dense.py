"""The appearance stage's transformer blocks on plain feature tensors, for torch.compile.

Upstream's `ModulatedSparseTransformerCrossBlock` works on `SparseTensor`s: every modulation
(`h * (1 + scale) + shift`, `h * gate`) first materialises the per-batch vector at every voxel
(`sparse_batch_broadcast`), its layer norms and q/k RMS norms round-trip through float32, and
q/k/v are re-stacked before attention. The kernel profile of a guided appearance step (run 8,
H100) had 47 of 114 ms in such eager elementwise work. For one object (batch size 1, the only
case the service runs) the block is the same arithmetic on the feature matrix `[N, C]` with
broadcast `[1, C]` vectors; `dense_block_forward` is that arithmetic, step for step in the
dtypes upstream uses, and `install_dense_blocks` compiles it per block with the token count N
marked dynamic (a count per request), so that inductor fuses the elementwise work around the
matrix multiplies and attention. Batches of several objects, or blocks configured otherwise
(windowed attention, RoPE), keep upstream's forward.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


def _layer_norm32(norm: torch.nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """Upstream's LayerNorm32: normalise in float32, back to the input's dtype."""
    return F.layer_norm(x.float(), norm.normalized_shape, norm.weight, norm.bias, norm.eps).to(x.dtype)


def _rms_norm(norm, x: torch.Tensor) -> torch.Tensor:
    """Upstream's SparseMultiHeadRMSNorm on [N, H, D]: unit length per head in float32, times
    gamma·√D, back to the input's dtype."""
    return (F.normalize(x.float(), dim=-1) * norm.gamma * norm.scale).to(x.dtype)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """One sequence: q [N, H, D], k/v [L, H, D] → [N, H, D] (PyTorch SDPA, no mask)."""
    out = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None],
                                         v.transpose(0, 1)[None])
    return out[0].transpose(0, 1)


def _self_attention(attn, x: torch.Tensor) -> torch.Tensor:
    n, heads = x.shape[0], attn.num_heads
    q, k, v = attn.to_qkv(x).reshape(n, 3, heads, -1).unbind(dim=1)
    if attn.qk_rms_norm:
        q, k = _rms_norm(attn.q_rms_norm, q), _rms_norm(attn.k_rms_norm, k)
    return attn.to_out(_attend(q, k, v).reshape(n, -1))


def _cross_attention(attn, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    n, heads = x.shape[0], attn.num_heads
    q = attn.to_q(x).reshape(n, heads, -1)
    k, v = attn.to_kv(context[0]).reshape(context.shape[1], 2, heads, -1).unbind(dim=1)
    return attn.to_out(_attend(q, k, v).reshape(n, -1))


def dense_block_forward(block, feats: torch.Tensor, mod: torch.Tensor,
                        context: torch.Tensor) -> torch.Tensor:
    """`ModulatedSparseTransformerCrossBlock._forward` for one object: feats [N, C] (the
    SparseTensor's features), mod [1, C] (the timestep embedding), context [1, L, C_ctx]."""
    if block.share_mod:
        chunks = mod.chunk(6, dim=1)
    else:
        chunks = block.adaLN_modulation(mod).chunk(6, dim=1)
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = chunks
    h = _layer_norm32(block.norm1, feats) * (1 + scale_msa) + shift_msa
    feats = feats + _self_attention(block.self_attn, h) * gate_msa
    feats = feats + _cross_attention(block.cross_attn, _layer_norm32(block.norm2, feats), context)
    h = _layer_norm32(block.norm3, feats) * (1 + scale_mlp) + shift_mlp
    return feats + _mlp(block.mlp.mlp, h) * gate_mlp


def _mlp(layers, x: torch.Tensor) -> torch.Tensor:
    """Upstream's SparseFeedForwardNet (SparseLinear, SparseGELU, SparseLinear) on a tensor."""
    up, gelu, down = layers
    return F.linear(F.gelu(F.linear(x, up.weight, up.bias), approximate=gelu.approximate),
                    down.weight, down.bias)


def dense_supported(block) -> bool:
    """Blocks whose arithmetic `dense_block_forward` reproduces: full self-attention, no RoPE,
    no q/k RMS norm in the cross-attention (upstream's own cross-attention cannot apply it to a
    dense context), no gradient checkpointing."""
    attn, cross = getattr(block, "self_attn", None), getattr(block, "cross_attn", None)
    return (attn is not None and cross is not None and attn.attn_mode == "full"
            and not attn.use_rope and not cross.qk_rms_norm
            and not getattr(block, "use_checkpoint", False))


def install_dense_blocks(blocks, compile_kwargs: dict | None = None) -> int:
    """Give each supported block a forward that runs `dense_block_forward` (compiled with
    `compile_kwargs`, eager when None) on batch-size-1 inputs and upstream's forward otherwise.
    Returns how many blocks were changed. `remove_dense_blocks` undoes it."""
    count = 0
    for block in blocks:
        if not dense_supported(block):
            continue
        fn = functools.partial(dense_block_forward, block)
        if compile_kwargs is not None:
            fn = torch.compile(fn, dynamic=False, **compile_kwargs)
        block.forward = functools.partial(_forward, block, fn, type(block).forward)
        block.dense_fn = fn  # for sam3d_graphs.DenseTrunk, which calls it on the features
        count += 1
    return count


def remove_dense_blocks(blocks) -> None:
    for block in blocks:
        block.__dict__.pop("forward", None)
        block.__dict__.pop("dense_fn", None)


def _forward(block, fn, upstream_forward, x, mod, context):
    if x.shape[0] != 1 or context.dim() != 3 or context.shape[0] != 1:
        return upstream_forward(block, x, mod, context)
    feats = x.feats
    if feats.shape[0] > 1:
        torch._dynamo.maybe_mark_dynamic(feats, 0)  # one compiled graph for every token count
    return x.replace(fn(feats, mod, context))
