"""The tracker's prompt-encoder and mask-decoder parts that every exported click decoder graph starts from.

The ONNX graphs (onnx_decoder's reference, onnx_decoder_fast, onnx_decoder_photo) compute the same function
in different arrangements; this base holds the copied modules (fp32 on the CPU, as the exports need) and
the two pieces all of them use: the image-wide positional encoding and the prompt tokens. Imports torch,
so it is imported only where a graph is built.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class DecoderParts(nn.Module):
    """prompt_encoder, mask_decoder and the shared positional embedding of a Sam3TrackerModel."""

    def __init__(self, tracker):
        super().__init__()
        cpu32 = {"device": "cpu", "dtype": torch.float32}
        self.prompt_encoder = copy.deepcopy(tracker.prompt_encoder).to(**cpu32)
        self.mask_decoder = copy.deepcopy(tracker.mask_decoder).to(**cpu32)
        self.image_embedding = copy.deepcopy(tracker.shared_image_embedding).to(**cpu32)

    def image_pe(self, like: torch.Tensor) -> torch.Tensor:
        """The tracker's positional encoding of a height x width grid, (height, width, C), computed at
        run time from `like` (any (height, width) tensor; a constant would add megabytes to the file)."""
        height, width = like.shape
        ones = torch.ones_like(like)
        y = (ones.cumsum(dim=0) - 0.5) / height
        x = (ones.cumsum(dim=1) - 0.5) / width
        return self.image_embedding(torch.stack([x, y], dim=-1))

    def prompt_tokens(self, point_coords: torch.Tensor, point_labels: torch.Tensor) -> torch.Tensor:
        """The decoder's tokens before the transformer, (6 + N, C): object-score, IoU and mask tokens,
        then the embedded points (labels rounded to the prompt encoder's classes)."""
        md = self.mask_decoder
        labels = point_labels.round().to(torch.int64)[:, None]
        sparse = self.prompt_encoder._embed_points(point_coords[:, None], labels, pad=False)[0, 0]
        return torch.cat([md.obj_score_token.weight, md.iou_token.weight, md.mask_tokens.weight, sparse], dim=0)


def token_attention(att, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """A Sam3TrackerAttention among the few prompt tokens, (N, C) each → (N, C)."""
    heads, d = att.num_attention_heads, att.head_dim
    n = q.shape[0]
    qh = att.q_proj(q).reshape(n, heads, d).transpose(0, 1)
    kh = att.k_proj(k).reshape(n, heads, d).transpose(0, 1)
    vh = att.v_proj(v).reshape(n, heads, d).transpose(0, 1)
    a = torch.softmax((qh @ kh.transpose(1, 2)) * att.scaling, dim=-1)
    return att.o_proj((a @ vh).transpose(0, 1).reshape(n, heads * d))


def write_onnx(module: nn.Module, example: tuple, path, input_names: list[str], output_names: list[str],
               opset: int, dynamic_axes: dict | None = None):
    """torch.onnx.export (TorchScript exporter, constants folded) to `path`, atomically."""
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with torch.no_grad():
        torch.onnx.export(module, tuple(example), str(tmp), input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes or {}, opset_version=opset, do_constant_folding=True, dynamo=False)
    tmp.replace(path)
    return path


def two_way_tokens(tf, qpe: torch.Tensor, tokens_to_image, image_to_tokens) -> torch.Tensor:
    """The tracker's two-way transformer `tf` on the prompt-token side, (Nt, C) → (Nt, C); the image side
    is the caller's: tokens_to_image(att, queries) gives the attention's output for the tokens, and
    image_to_tokens(layer, keys, values) updates the caller's image tokens (and their layer norm)."""
    t = qpe
    for layer in tf.layers:
        if layer.skip_first_layer_pe:
            t = token_attention(layer.self_attn, t, t, t)
        else:
            q = t + qpe
            t = t + token_attention(layer.self_attn, q, q, t)
        t = layer.layer_norm1(t)
        t = layer.layer_norm2(t + tokens_to_image(layer.cross_attn_token_to_image, t + qpe))
        t = layer.layer_norm3(t + layer.mlp(t))
        image_to_tokens(layer, t + qpe, t)
    return tf.layer_norm_final_attn(t + tokens_to_image(tf.final_attn_token_to_image, t + qpe))
