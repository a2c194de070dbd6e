"""The SAM 3 click decoder as two graphs: one per photo, one per click (export version 5).

The photo graph takes the encoder's NCHW features once per photo and returns everything a click needs
that depends only on the photo: the products of the image tokens with the decoder's fixed matrices
(image_state.PhotoTerms: photo_0, photo_1, ...) and the high-resolution features laid out as the
upscaler's transposed convolutions output their pixels, plus those convolutions' biases (HIGH_RES_NAMES).
The click graph takes those plus the prompts
and runs the tracker's prompt encoder and mask decoder with the image side in image_state's low-rank
form, so no per-click product touches the 72x72x256 image tokens with a 256-wide matrix; the first
transposed convolution of the upscaler is such a product too (x2 @ W1), read out the same way. Outputs
are onnx_decoder's (masks 1x4xMxM, iou_predictions, object_score_logits).

Version 5 computes the same function as version 4 with fewer operations: the low-rank part has H columns
fewer per layer (image_state.NormedTokens: each head's softmax sums to 1), and the upscaler's layer norm
takes its input already centred (w1 and the per-photo 2x term centred over each 2x pixel's channels,
both linear), leaving only the scale by the root mean square. That term is named high_res_centred_1
(version 4: high_res_bias_1, not centred), so a photo graph and a click graph of different versions
refuse each other instead of giving a wrong mask.

The click graph has no mask_input: the previous-mask prompt would add a full-rank per-click term to
the image tokens (the page never sends one; the reference export keeps it).
"""
from __future__ import annotations

import torch
from torch import nn

from .decoder_parts import DecoderParts, two_way_tokens, write_onnx
from .image_state import NormedTokens, PhotoTerms, Tokens0

FEATURE_NAMES = ["image_embed", "high_res_feats_0", "high_res_feats_1"]
HIGH_RES_NAMES = ["high_res_bias_0", "high_res_centred_1"]
PROMPT_NAMES = ["point_coords", "point_labels"]


def _heads_of(att, x):
    """(N, H*d) → (H, d, N): per-head columns to contract a readout with."""
    n = x.shape[0]
    return x.reshape(n, att.num_attention_heads, att.head_dim).permute(1, 2, 0)


def _tokens_to_image(att, state, tq):
    """Tokens (Nt, C) attend to the image tokens in `state` (keys with the positional encoding)."""
    q = _heads_of(att, att.q_proj(tq)).transpose(1, 2)  # (H, Nt, d)
    scores = state.token_scores(att.k_proj.weight.T, q, att.k_proj.bias) * att.scaling  # (H, Nt, L)
    a = torch.softmax(scores, dim=2)
    out = state.values(a, att.v_proj.weight.T) + att.v_proj.bias.reshape(att.num_attention_heads, 1, -1)
    return att.o_proj(out.transpose(0, 1).reshape(tq.shape[0], -1))


def _image_to_tokens(att, state, tk, tv, ln):
    """The image tokens attend to the tokens (keys tk, values tv; queries with the positional
    encoding), then the layer norm: the next NormedTokens."""
    k = _heads_of(att, att.k_proj(tk))
    scores = state.by_head(att.q_proj.weight.T, k, pe_bias=att.q_proj.bias) * att.scaling
    a = torch.softmax(scores, dim=2)
    vh = _heads_of(att, att.v_proj(tv)).transpose(1, 2)  # (H, Nt, d)
    return NormedTokens(state, a, vh, att.o_proj.weight, att.o_proj.bias, ln)


def _transposed_conv(conv):
    """(Cin, Cout, 2, 2) stride-2 ConvTranspose2d → (Cin, 4*Cout) columns in (i, j, cout) order."""
    cin, cout = conv.weight.shape[:2]
    return conv.weight.permute(0, 2, 3, 1).reshape(cin, 4 * cout), conv.bias.repeat(4)


def _pixel_centred(m, channels: int):
    """(R, 4*channels) columns (i, j, c) → each 2x pixel's `channels` columns minus their mean: the
    first transposed convolution's output centred as its layer norm centres it (linear, so exact)."""
    blocks = m.reshape(m.shape[0], -1, channels)
    return (blocks - blocks.mean(dim=2, keepdim=True)).reshape(m.shape)


class PhotoClickDecoder(DecoderParts):
    """The decoder's function on (photo terms, prompts); also computes the photo terms (`photo`)."""

    def _run(self, terms: PhotoTerms, high_res_bias_0, high_res_bias_1, point_coords, point_labels, grid):
        md = self.mask_decoder
        tf = md.transformer
        h, w = grid
        qpe = self.prompt_tokens(point_coords, point_labels)
        image = {"state": Tokens0(terms)}

        def image_to_tokens(layer, tk, tv):
            image["state"] = _image_to_tokens(layer.cross_attn_image_to_token, image["state"], tk, tv, layer.layer_norm4)

        t = two_way_tokens(tf, qpe, lambda att, tq: _tokens_to_image(att, image["state"], tq), image_to_tokens)
        state = image["state"]

        # Upscaler, channels last: rows (y, x, i, j) at 2x, then (y, x, i, j, i2, j2) at 4x; each transposed
        # convolution's bias and high-resolution features are one per-photo term (_high_res_bias).
        c1, c0 = md.upscale_conv1.weight.shape[1], md.upscale_conv2.weight.shape[1]
        w1 = _pixel_centred(_transposed_conv(md.upscale_conv1)[0], c1)
        w2, _ = _transposed_conv(md.upscale_conv2)
        # The layer norm over each 2x pixel's c1 channels: its input comes out centred (w1 and the
        # per-photo high_res_bias_1 are), so what is left is the scale by the root mean square.
        up = (state.readout(w1) + high_res_bias_1).reshape(-1, c1)
        ln = md.upscale_layer_norm
        up = up * torch.rsqrt(up.square().mean(dim=1, keepdim=True) + ln.eps)
        up = md.activation(up * ln.weight + ln.bias)
        up = md.activation((up @ w2 + high_res_bias_0).reshape(-1, c0))
        n = md.num_mask_tokens
        hyper = torch.stack([md.output_hypernetworks_mlps[i](t[2 + i]) for i in range(n)], dim=0)  # (n, c0)
        masks = (up @ hyper.T).reshape(h, w, 2, 2, 2, 2, n).permute(6, 0, 2, 4, 1, 3, 5).reshape(1, n, 4 * h, 4 * w)
        ious = md.iou_prediction_head(t[1])[None]
        obj = md.pred_obj_score_head(t[0])[None]
        return masks, ious, obj

    def heads(self) -> int:
        return self.mask_decoder.transformer.layers[0].cross_attn_image_to_token.num_attention_heads

    def _high_res_bias(self, high_res_feats_0, high_res_feats_1):
        """The encoder's high-resolution features (NCHW) plus the transposed convolutions' biases, laid out
        as the convolutions' outputs: (HW, 4*C1) rows (y, x), columns (i, j, c) for pixel (2y+i, 2x+j);
        (4HW, 4*C0) rows (y, x, i, j), columns (i2, j2, c) for pixel (4y+2i+i2, 4x+2j+j2)."""
        md = self.mask_decoder
        (_, c0, h4, w4), c1 = high_res_feats_0.shape, high_res_feats_1.shape[1]
        h, w = h4 // 4, w4 // 4
        hr1 = high_res_feats_1.reshape(c1, h, 2, w, 2).permute(1, 3, 2, 4, 0).reshape(h * w, 4 * c1)
        hr0 = high_res_feats_0.reshape(c0, h, 2, 2, w, 2, 2).permute(1, 4, 2, 5, 3, 6, 0).reshape(4 * h * w, 4 * c0)
        return hr0 + _transposed_conv(md.upscale_conv2)[1], _pixel_centred(hr1 + _transposed_conv(md.upscale_conv1)[1], c1)

    def photo(self, image_embed, high_res_feats_0, high_res_feats_1) -> dict:
        """NCHW features (batch 1) → {photo_i: ..., high_res_bias_0: ..., high_res_centred_1: ...}."""
        _, c, h, w = image_embed.shape
        x0 = image_embed.reshape(c, h * w).T + self.prompt_encoder.no_mask_embed.weight
        ipe = self.image_pe(image_embed[0, 0]).reshape(h * w, c)
        terms = PhotoTerms(self.heads(), x0=x0, ipe=ipe)
        hb0, hb1 = self._high_res_bias(high_res_feats_0, high_res_feats_1)
        # The click side with a placeholder click asks for the terms; only they are kept.
        self._run(terms, hb0, hb1, torch.zeros(1, 1, 2), -torch.ones(1, 1), (h, w))
        return {**terms.made, **dict(zip(HIGH_RES_NAMES, (hb0, hb1)))}

    def click(self, inputs: dict, grid: tuple[int, int]):
        terms = PhotoTerms(self.heads(), inputs=inputs)
        return self._run(terms, *(inputs[n] for n in HIGH_RES_NAMES),
                         inputs["point_coords"], inputs["point_labels"], grid)


class PhotoGraph(nn.Module):
    def __init__(self, decoder: PhotoClickDecoder, names: list[str]):
        super().__init__()
        self.decoder, self.names = decoder, names

    def forward(self, image_embed, high_res_feats_0, high_res_feats_1):
        out = self.decoder.photo(image_embed, high_res_feats_0, high_res_feats_1)
        return tuple(out[n] for n in self.names)


class ClickGraph(nn.Module):
    def __init__(self, decoder: PhotoClickDecoder, names: list[str], grid: tuple[int, int]):
        super().__init__()
        self.decoder, self.names, self.grid = decoder, names, grid

    def forward(self, *inputs):
        return self.decoder.click(dict(zip(self.names, inputs)), self.grid)


def photo_and_click_graphs(tracker, example_features):
    """(photo module, its output names, click module, its input names) for export or direct use;
    example_features: the three NCHW feature tensors (their sizes fix the grid)."""
    decoder = PhotoClickDecoder(tracker).eval()
    with torch.no_grad():
        made = decoder.photo(*example_features)
    photo_names = list(made)
    grid = tuple(example_features[0].shape[2:])
    click_names = [*photo_names, *PROMPT_NAMES]
    return PhotoGraph(decoder, photo_names), photo_names, ClickGraph(decoder, click_names, grid), click_names


def export_photo_click(tracker, click_path, photo_path, example_features, output_names, opset: int) -> None:
    """Write the click graph and the photo graph of `tracker` (fp32) to the two paths."""
    photo, photo_names, click, click_names = photo_and_click_graphs(tracker, example_features)
    with torch.no_grad():
        terms = photo(*example_features)
    prompts = (torch.tensor([[[10.0, 20.0], [0.0, 0.0]]]), torch.tensor([[1.0, -1.0]]))
    write_onnx(photo, example_features, photo_path, FEATURE_NAMES, photo_names, opset)
    write_onnx(click, (*terms, *prompts), click_path, click_names, output_names, opset,
               {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}})
