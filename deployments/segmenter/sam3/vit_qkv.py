"""One matrix multiply for the SAM 3 ViT's query, key and value projections, an opt-in speed lever.

transformers' `Sam3ViTRoPEAttention` projects the tokens three times (q_proj, k_proj, v_proj, each
1024 → 1024 at full size). `fuse_qkv` gives every such module one 1024 → 3072 linear layer holding
the three weights stacked, and a forward that splits its output, applies the same 2D rotary
embedding and calls PyTorch's scaled_dot_product_attention directly. The arithmetic is the same
(each output element is the same dot product); only the matrix-multiply kernel differs, so
results agree within the dtype's rounding. bench/bench_sam3_encoder.py measures the gain.
"""
from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn


def _forward(self, hidden_states: torch.Tensor, position_embeddings, **kwargs):
    from transformers.models.sam3.modeling_sam3 import apply_rotary_pos_emb_2d

    batch, height, width, _ = hidden_states.shape
    qkv = self.qkv(hidden_states).view(batch, height * width, 3, self.num_attention_heads, self.head_dim)
    query, key, value = (t.transpose(1, 2) for t in qkv.unbind(2))  # B x heads x N x d each
    cos, sin = position_embeddings
    query, key = apply_rotary_pos_emb_2d(query, key, cos=cos, sin=sin)
    out = F.scaled_dot_product_attention(query, key, value, scale=self.scaling)
    out = out.transpose(1, 2).reshape(batch, height, width, -1)
    return self.o_proj(out), None


def fuse_qkv(backbone: nn.Module) -> int:
    """Give every ViT attention module in `backbone` one stacked q/k/v projection, in place; the three
    separate layers are dropped. → how many modules were changed."""
    count = 0
    for module in backbone.modules():
        if type(module).__name__ != "Sam3ViTRoPEAttention" or hasattr(module, "qkv"):
            continue
        parts = (module.q_proj, module.k_proj, module.v_proj)
        qkv = nn.Linear(parts[0].in_features, 3 * parts[0].out_features, bias=parts[0].bias is not None,
                        device=parts[0].weight.device, dtype=parts[0].weight.dtype)
        with torch.no_grad():
            qkv.weight.copy_(torch.cat([p.weight for p in parts]))
            if qkv.bias is not None:
                qkv.bias.copy_(torch.cat([p.bias for p in parts]))
        qkv.requires_grad_(False)
        module.qkv = qkv
        del module.q_proj, module.k_proj, module.v_proj
        module.forward = types.MethodType(_forward, module)
        count += 1
    return count
