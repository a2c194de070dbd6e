"""The SAM 3 click decoder rewritten for few prompt tokens: the same function, far fewer operations.

The tracker's two-way transformer projects all L = 72x72 image tokens (256 wide) to queries, keys
and values in every image attention, although the other side holds only Nt prompt tokens (6 output
tokens + the clicks, typically 8). Matrix products are associative, so each projection of the image
is moved onto the token side instead:

- tokens → image:  softmax(q (X Wk^T + bk)^T) (X Wv^T + bv) = softmax((q Wk) X^T) (X) Wv^T + bv
  (q·bk is the same for every key, so softmax ignores it; softmax rows sum to 1, so bv passes through);
- image → tokens:  softmax((X Wq^T + bq) k^T) v Wo^T = softmax(X (Wq^T k^T) + bq k^T) (v Wo^T).

Per head that is L x 256 x Nt multiply-adds instead of L x 256 x 128 (for Nt = 8: 8 heads x 8 tokens
= 64 columns instead of 128, and the output projection of image → tokens folds into v). The two
stride-2 transposed convolutions of the upscaler are matrix products in a channels-last layout (no
im2col), with the layer norm over the last axis; the high-resolution features are brought to that
layout once per click and the masks back to 1x4xMxM at the end. Inputs and outputs are those of
onnx_decoder's contract; the results equal the tracker's up to float rounding (tests/test_sam3_onnx.py).
"""
from __future__ import annotations


def fast_decoder_module(tracker):
    """An nn.Module with the contract of onnx_decoder (7 inputs → masks, iou_predictions,
    object_score_logits), computed with the reassociated attention described above."""
    import torch
    from torch import nn

    from .decoder_parts import DecoderParts, two_way_tokens

    def t2i(att, tq, kin, v):
        """Tokens attend to the image: tq (Nt, C) queries, kin (L, C) keys, v (L, C) values."""
        heads, d = att.num_attention_heads, att.head_dim
        nt, c = tq.shape
        q = (tq @ att.q_proj.weight.T + att.q_proj.bias).reshape(nt, heads, d).transpose(0, 1)
        g = q @ att.k_proj.weight.reshape(heads, d, c)  # (H, Nt, C)
        scores = kin @ (g.reshape(heads * nt, c).T * att.scaling)  # (L, H*Nt)
        a = torch.softmax(scores, dim=0)
        av = (a.T @ v).reshape(heads, nt, c)  # (H, Nt, C)
        out = av @ att.v_proj.weight.reshape(heads, d, c).transpose(1, 2) + att.v_proj.bias.reshape(heads, 1, d)
        return att.o_proj(out.transpose(0, 1).reshape(nt, heads * d))

    def i2t(att, qin, kt, vt):
        """The image attends to the tokens: qin (L, C) queries, kt (Nt, C) keys, vt (Nt, C) values."""
        heads, d = att.num_attention_heads, att.head_dim
        nt, c = kt.shape
        k = (kt @ att.k_proj.weight.T + att.k_proj.bias).reshape(nt, heads, d).transpose(0, 1)  # (H, Nt, d)
        v = (vt @ att.v_proj.weight.T + att.v_proj.bias).reshape(nt, heads, d).transpose(0, 1)
        kt_h = k.transpose(1, 2)  # (H, d, Nt)
        m = att.q_proj.weight.reshape(heads, d, c).transpose(1, 2) @ kt_h  # (H, C, Nt)
        bias = att.q_proj.bias.reshape(heads, 1, d) @ kt_h  # (H, 1, Nt)
        m = m.permute(1, 0, 2).reshape(c, heads * nt) * att.scaling
        scores = qin @ m + bias.reshape(1, heads * nt) * att.scaling  # (L, H*Nt)
        a = torch.softmax(scores.reshape(-1, heads, nt), dim=-1).reshape(-1, heads * nt)
        vo = v @ att.o_proj.weight.reshape(c, heads, d).permute(1, 2, 0)  # (H, Nt, C)
        return a @ vo.reshape(heads * nt, c) + att.o_proj.bias

    def transposed_conv_weight(conv):
        """(Cin, Cout, 2, 2) stride-2 ConvTranspose2d → (Cin, 4*Cout) columns in (i, j, cout) order."""
        w = conv.weight
        cin, cout = w.shape[:2]
        return w.permute(0, 2, 3, 1).reshape(cin, 4 * cout), conv.bias.repeat(4)

    class FastClickDecoder(DecoderParts):
        def mask_embed(self, mask_input, h: int, w: int):
            """The prompt encoder's mask embedding (two 2x2 stride-2 convolutions, a 1x1 one) per
            4x4 patch of mask_input, channels last: (L, C)."""
            me = self.prompt_encoder.mask_embed
            patches = mask_input.reshape(h, 2, 2, w, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(h * w, 4, 4)
            c1 = me.conv1.weight.shape[0]
            y = patches @ me.conv1.weight.reshape(c1, 4).T + me.conv1.bias  # (L, 2x2 cells, c1)
            ln = me.layer_norm1
            y = me.activation(nn.functional.layer_norm(y, (c1,), ln.weight, ln.bias, ln.eps))
            c2 = me.conv2.weight.shape[0]
            y = y.reshape(h * w, 4 * c1) @ me.conv2.weight.permute(2, 3, 1, 0).reshape(4 * c1, c2) + me.conv2.bias
            ln = me.layer_norm2
            y = me.activation(nn.functional.layer_norm(y, (c2,), ln.weight, ln.bias, ln.eps))
            return y @ me.conv3.weight.reshape(-1, c2).T + me.conv3.bias

        def forward(self, image_tokens, high_res_tokens_0, high_res_tokens_1, point_coords, point_labels,
                    mask_input, has_mask_input):
            pe, md = self.prompt_encoder, self.mask_decoder
            tf = md.transformer
            h, w = mask_input.shape[2] // 4, mask_input.shape[3] // 4
            has = has_mask_input.reshape(1, 1)
            dense = has * self.mask_embed(mask_input, h, w) + (1.0 - has) * pe.no_mask_embed.weight
            x = image_tokens + dense  # (L, C)
            ipe = self.image_pe(mask_input[0, 0, :h, :w]).reshape(h * w, -1)
            qpe = self.prompt_tokens(point_coords, point_labels)
            image = {"x": x}

            def image_to_tokens(layer, tk, tv):
                x = image["x"]
                image["x"] = layer.layer_norm4(x + i2t(layer.cross_attn_image_to_token, x + ipe, tk, tv))

            t = two_way_tokens(tf, qpe, lambda att, tq: t2i(att, tq, image["x"] + ipe, image["x"]), image_to_tokens)
            x = image["x"]

            # Upscaler, channels last: rows (y, x, i, j) at 2x, then (y, x, i, j, i2, j2) at 4x.
            w1, b1 = transposed_conv_weight(md.upscale_conv1)
            w2, b2 = transposed_conv_weight(md.upscale_conv2)
            c1, c0 = high_res_tokens_1.shape[1], high_res_tokens_0.shape[1]
            up = (x @ w1 + b1).reshape(-1, c1) + high_res_tokens_1
            ln = md.upscale_layer_norm  # channels last here: a plain layer norm over the last axis
            up = md.activation(nn.functional.layer_norm(up, (c1,), ln.weight, ln.bias, ln.eps))
            up = md.activation((up @ w2 + b2).reshape(-1, c0) + high_res_tokens_0)
            n = md.num_mask_tokens
            hyper = torch.stack([md.output_hypernetworks_mlps[i](t[2 + i]) for i in range(n)], dim=0)  # (n, c0)
            masks = (up @ hyper.T).reshape(h, w, 2, 2, 2, 2, n).permute(6, 0, 2, 4, 1, 3, 5)
            masks = masks.reshape(1, n, 4 * h, 4 * w)
            ious = md.iou_prediction_head(t[1])[None]
            obj = md.pred_obj_score_head(t[0])[None]
            return masks, ious, obj

    return FastClickDecoder(tracker).eval()


def token_layout(image_embed, high_res_feats_0, high_res_feats_1) -> dict:
    """The encoder's NCHW features (numpy, batch 1) → the decoder's channels-last inputs, once per
    photo: image_tokens (HW, C) rows y*W + x; high_res_tokens_1 (4HW, C1) rows (y, x, i, j) for pixel
    (2y+i, 2x+j); high_res_tokens_0 (16HW, C0) rows (y, x, i, j, i2, j2) for (4y+2i+i2, 4x+2j+j2).
    serve_app/static/sam3-click.js (tokenLayout) does the same in the browser."""
    import numpy as np

    _, c, h, w = image_embed.shape
    c1, c0 = high_res_feats_1.shape[1], high_res_feats_0.shape[1]
    return {
        "image_tokens": np.ascontiguousarray(image_embed.reshape(c, h * w).T, np.float32),
        "high_res_tokens_1": np.ascontiguousarray(
            high_res_feats_1.reshape(c1, h, 2, w, 2).transpose(1, 3, 2, 4, 0).reshape(-1, c1), np.float32),
        "high_res_tokens_0": np.ascontiguousarray(
            high_res_feats_0.reshape(c0, h, 2, 2, w, 2, 2).transpose(1, 4, 2, 5, 3, 6, 0).reshape(-1, c0),
            np.float32),
    }
