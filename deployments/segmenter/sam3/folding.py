"""Exact rewrites of the SAM 3 encoder's linear layers into fewer, cheaper kernels (segmenter.sam3.encoder_folding).

- The ViT's patch embedding is a Conv2d whose kernel equals its stride (14×14 patches, 3 channels in).
  cuDNN has no fast kernel for a 3-channel input: a generic implicit-GEMM kernel took 0.31 ms per 1008²
  image on the H100 (bench/results/sam3_encoder_h100_run11.json) for 6 GFLOP of work. `PatchMatmul`
  computes the same conv as one matrix multiply over the image cut into patches.
- The click decoder's feature neck (encoder.tracker_features): each FPN level is [transposed convs] →
  proj1 (1×1) → proj2 (3×3), and the tracker follows levels 0 and 1 with a 1×1 conv (conv_s0, conv_s1)
  that takes 256 channels down to 32 and 64. Nothing nonlinear sits between these, so
  - a 2×2 stride-2 transposed conv followed by proj1 is one transposed conv (its taps never overlap,
    so every output pixel is one affine map of one input pixel);
  - proj2 followed by conv_s0 / conv_s1 is one 3×3 conv straight to 32 / 64 channels (the zero padding
    sits at proj2's input in both);
  - level 2's no_memory_embedding, a per-channel constant added to proj2's output, is part of its bias.
  With the full model's sizes the three levels take 81 instead of 214 GFLOP per image. `ClickNeck`
  runs in the channels-last layout: the ViT's output is token-major (B × g·g × C), so it enters the
  convolutions without a transpose, and cuDNN runs them NHWC without the layout conversions it otherwise
  adds around each (0.33 ms per image in the same profile).

The folded weights are computed in float32 from the loaded ones and cast to the model's dtype once, so
the outputs equal the unfolded layers' up to rounding (tests/test_sam3_folding.py).
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class PatchMatmul(nn.Conv2d):
    """A Conv2d whose kernel equals its stride (no padding, dilation or groups), computed as one matrix
    multiply: the image cut into patches (B·gh·gw × C·p·p) times the weight (C·p·p × O). Returns the
    conv's B × O × gh × gw, laid out channels-last (the product's own layout, no copy)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        ph, pw = self.kernel_size
        gh, gw = h // ph, w // pw
        patches = x[..., : gh * ph, : gw * pw].reshape(b, c, gh, ph, gw, pw).permute(0, 2, 4, 1, 3, 5)
        out = patches.reshape(b * gh * gw, c * ph * pw) @ self.weight.reshape(self.out_channels, -1).t()
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(b, gh, gw, self.out_channels).permute(0, 3, 1, 2)


def _is_patch_conv(conv: nn.Module) -> bool:
    return (type(conv) in (nn.Conv2d, PatchMatmul) and conv.kernel_size == conv.stride and conv.padding == (0, 0)
            and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros")


def _as(cls: type[nn.Conv2d], conv: nn.Conv2d) -> nn.Conv2d:
    """A `cls` with conv's hyper-parameters, holding conv's own weight and bias (shared, not copied)."""
    new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, bias=conv.bias is not None,
              device="meta")
    new.weight = conv.weight
    if conv.bias is not None:
        new.bias = conv.bias
    return new


def set_patch_matmul(backbone: nn.Module, on: bool) -> bool:
    """Put PatchMatmul in place of the ViT's patch-embedding conv (on), or the plain Conv2d back (off),
    sharing the weight either way. → whether the backbone now computes its patches as a matrix multiply
    (False also where its patch embedding is not such a conv: nothing is changed then)."""
    embed = getattr(getattr(backbone, "embeddings", None), "patch_embeddings", None)
    conv = getattr(embed, "projection", None)
    if conv is None or not _is_patch_conv(conv):
        return False
    want = PatchMatmul if on else nn.Conv2d
    if type(conv) is not want:
        embed.projection = _as(want, conv)
    return on


def _f32(t: torch.Tensor | None, n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.float32, device=like.device) if t is None else t.detach().float()


def fold_transpose_then_1x1(up: nn.ConvTranspose2d, proj: nn.Conv2d) -> nn.ConvTranspose2d:
    """proj(up(x)) as one transposed conv, for an `up` whose kernel equals its stride (taps don't overlap)."""
    if up.kernel_size != up.stride or up.padding != (0, 0) or up.output_padding != (0, 0) or up.groups != 1 \
            or up.dilation != (1, 1) or proj.kernel_size != (1, 1) or proj.groups != 1:
        raise ValueError("only a non-overlapping transposed conv followed by a 1x1 conv folds")
    w_proj = proj.weight.detach().float()[:, :, 0, 0]  # (P, O)
    weight = torch.einsum("po,coab->cpab", w_proj, up.weight.detach().float())  # up's weight is (C, O, kh, kw)
    bias = w_proj @ _f32(up.bias, up.out_channels, w_proj) + _f32(proj.bias, proj.out_channels, w_proj)
    out = nn.ConvTranspose2d(up.in_channels, proj.out_channels, up.kernel_size, up.stride, device=weight.device)
    out.weight, out.bias = nn.Parameter(weight, requires_grad=False), nn.Parameter(bias, requires_grad=False)
    return out


def fold_conv_then_1x1(conv: nn.Conv2d, proj: nn.Conv2d, extra_bias: torch.Tensor | None = None) -> nn.Conv2d:
    """proj(conv(x)) (+ extra_bias per channel, proj may be None) as one conv with conv's kernel and padding."""
    if conv.groups != 1 or conv.padding_mode != "zeros" or (proj is not None and (proj.kernel_size != (1, 1)
                                                                                 or proj.groups != 1)):
        raise ValueError("only a conv followed by a 1x1 conv folds")
    weight, bias = conv.weight.detach().float(), _f32(conv.bias, conv.out_channels, conv.weight)
    if proj is not None:
        w_proj = proj.weight.detach().float()[:, :, 0, 0]  # (P, O)
        weight = torch.einsum("po,oikl->pikl", w_proj, weight)
        bias = w_proj @ bias + _f32(proj.bias, proj.out_channels, w_proj)
    if extra_bias is not None:
        bias = bias + extra_bias.detach().float().reshape(-1)
    out = nn.Conv2d(conv.in_channels, weight.shape[0], conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, device=weight.device)
    out.weight, out.bias = nn.Parameter(weight, requires_grad=False), nn.Parameter(bias, requires_grad=False)
    return out


class ClickNeck(nn.Module):
    """The tracker's first three FPN levels and its conv_s0 / conv_s1, folded: ViT output B × C × g × g
    (channels-last strides preferred) → (high_res_feats_0, high_res_feats_1, image_embed), contiguous
    NCHW as encoder.tracker_features returns them."""

    def __init__(self, tracker, dtype: torch.dtype):
        super().__init__()
        levels = tracker.vision_encoder.neck.fpn_layers
        if [float(lv.scale_factor) for lv in levels[:3]] != [4.0, 2.0, 1.0] or len(levels[0].scale_layers) != 3:
            raise ValueError("the tracker neck's first levels are not the 4x, 2x, 1x FPN this folding knows")
        l0, l1, l2 = levels[0], levels[1], levels[2]
        dec = tracker.mask_decoder
        with torch.no_grad():
            # Level 0's first transposed conv and its GELU, and level 2's proj1, are kept (copies: the
            # unfolded neck keeps its own, in its own layout).
            self.up0 = nn.Sequential(copy.deepcopy(l0.scale_layers[0]), copy.deepcopy(l0.scale_layers[1]),
                                     fold_transpose_then_1x1(l0.scale_layers[2], l0.proj1))
            self.out0 = fold_conv_then_1x1(l0.proj2, dec.conv_s0)
            self.up1 = fold_transpose_then_1x1(l1.scale_layers[0], l1.proj1)
            self.out1 = fold_conv_then_1x1(l1.proj2, dec.conv_s1)
            self.proj2 = copy.deepcopy(l2.proj1)
            self.out2 = fold_conv_then_1x1(l2.proj2, None, extra_bias=tracker.no_memory_embedding)
        self.to(dtype=dtype, memory_format=torch.channels_last).eval()

    def forward(self, spatial: torch.Tensor):
        x = spatial.to(self.out2.weight.dtype)
        feats_0 = self.out0(self.up0(x))
        feats_1 = self.out1(self.up1(x))
        embed = self.out2(self.proj2(x))
        return tuple(t.contiguous() for t in (feats_0, feats_1, embed))

