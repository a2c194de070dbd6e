"""The image side of the click decoder's two-way transformer, kept as a per-photo part plus a low-rank
per-click part, so that a click never multiplies the L = 72x72 image tokens by a 256-wide matrix.

The image tokens x0 (L x C) change only through "image attends to tokens" updates U = A V + bo, where A
(L x H*Nt) are the softmax weights of H heads over Nt prompt tokens and the rows of V are the tokens'
values through the output projection, followed by a layer norm. So after k updates the tokens are

    X = w * (x0c . g) + F @ B        x0c = x0 minus its row mean, g a fixed channel scale (LN weights),

with per-click w (L x 1), F (L x K: the A's scaled per row, a few per-row scalars) and B (K x C). Every
product of X with a fixed matrix M is then w * (x0 @ M') + F @ (B @ M), where x0 @ M' (M' = centred
diag(g) M) depends only on the photo: `PhotoTerms` computes those once per photo (the photo graph) and
reads them back per click (the click graph), in the same order. A layer norm needs each row's mean and
variance; they follow from the same products and from weighted sums of squares, expanded through the
previous layer norm (sum e*X^2 = s^2 sum(e g^2) z^2 + 2 s sum(e g b) z + sum e b^2) down to x0, all
on centred quantities. The arithmetic per click is O(L * (K * H*Nt + H*d*Nt)) per product instead of
O(L * C * H*d), and the results equal the plain computation up to float rounding (tests/test_sam3_onnx.py).
"""
from __future__ import annotations

import torch


def centred(m: torch.Tensor) -> torch.Tensor:
    """(I - 11^T/C) m: x @ centred(m) = (x - mean(x)) @ m for rows x of length C."""
    return m - m.mean(dim=0, keepdim=True)


class PhotoTerms:
    """Products of the photo's tokens x0 (L x C) and positional encoding ipe with fixed matrices,
    named photo_0, photo_1, ... in the order asked. With `x0`: computed and kept in `made` (the photo
    graph). With `inputs`: returned from there (the click graph, which asks in the same order)."""

    def __init__(self, heads: int, x0=None, ipe=None, inputs: dict | None = None):
        self.heads, self.x0, self.ipe, self.inputs = heads, x0, ipe, inputs
        self.made: dict[str, torch.Tensor] = {}
        self.count = 0

    def _term(self, make) -> torch.Tensor:
        name = f"photo_{self.count}"
        self.count += 1
        if self.inputs is not None:
            return self.inputs[name]
        self.made[name] = make()
        return self.made[name]

    def by_head(self, m: torch.Tensor, x0: bool = True, pe_bias: torch.Tensor | None = None,
                channels_first: bool = False) -> torch.Tensor:
        """[x0 @ m] [+ ipe @ m + pe_bias] as (H, L, d), or (H, d, L) when channels_first; m: (C, H*d)."""
        def make():
            p = self.x0 @ m if x0 else 0.0
            if pe_bias is not None:
                p = p + self.ipe @ m + pe_bias
            p = p.reshape(p.shape[0], self.heads, -1)
            return (p.permute(1, 2, 0) if channels_first else p.transpose(0, 1)).contiguous()
        return self._term(make)

    def lin(self, m: torch.Tensor) -> torch.Tensor:
        """x0 @ m, (L, k)."""
        return self._term(lambda: self.x0 @ m)

    def centred_sq(self, e: torch.Tensor) -> torch.Tensor:
        """sum over channels of e * (x0 - row mean)^2, (L, 1)."""
        return self._term(lambda: (self.x0 - self.x0.mean(dim=1, keepdim=True)).square() @ e[:, None])


class Tokens0:
    """The image tokens as they enter the transformer: X = x0."""

    def __init__(self, terms: PhotoTerms):
        self.terms = terms

    def readout(self, m):
        return self.terms.lin(m)

    def by_head(self, m, q, pe_bias=None):
        """((X [+ ipe]) @ m [+ pe_bias]) per head against q (H, d, Nt) → (H, L, Nt)."""
        return self.terms.by_head(m, pe_bias=pe_bias) @ q

    def token_scores(self, m, q, pe_bias):
        """q (H, Nt, d) per head against ((X + ipe) @ m + pe_bias) → (H, Nt, L)."""
        return q @ self.terms.by_head(m, pe_bias=pe_bias, channels_first=True)

    def values(self, a, m):
        """Per head a_h (X @ m)_h: a (H, Nt, L) → (H, Nt, d)."""
        return a @ self.terms.by_head(m)

    def centred_sq(self, e):
        return self.terms.centred_sq(e)


class NormedTokens:
    """X = layer_norm(prev + A @ V + bo): the image tokens after an "image attends to tokens" block.

    prev: the tokens before (Tokens0 or NormedTokens); a: (H, L, Nt) softmax over the tokens; vh:
    (H, Nt, d) the tokens' values; wo, bo: the attention's output projection (C x H*d, C); ln the norm.

    Each head's softmax weights sum to 1 over its Nt tokens, so the centred update A Vc + boc equals
    Ar Vr + u0 with Ar the weights without each head's last token (L x H*(Nt-1)), Vr the other
    tokens' rows minus the last one's, and u0 = boc plus the last tokens' rows: H columns fewer in F
    and in the quadratic term of the variance, the same values.
    """

    def __init__(self, prev, a, vh, wo, bo, ln):
        self.terms, self.prev = prev.terms, prev
        heads, length, nt = a.shape
        c = wo.shape[0]
        self.vq = vh.transpose(1, 2)  # (H, d, Nt): contracts a per-head readout with the values
        self.wo_heads = wo.reshape(c, heads, -1).permute(1, 2, 0)  # (H, d, C)
        self.a_heads = a
        v_rows = vh @ self.wo_heads  # (H, Nt, C)
        v_rows = v_rows - v_rows.mean(dim=2, keepdim=True)  # centred over channels
        self.boc = bo - bo.mean()
        self.a = a[:, :, :-1].permute(1, 0, 2).reshape(length, heads * (nt - 1))  # Ar, columns (h, n)
        self.vc = (v_rows[:, :-1] - v_rows[:, -1:]).reshape(heads * (nt - 1), c)  # Vr
        self.u0 = self.boc + v_rows[:, -1].sum(dim=0)
        self.wo = wo
        self.gamma, self.beta = ln.weight, ln.bias
        ones = torch.ones_like(self.gamma)
        self.s = torch.rsqrt(self._z_sq(ones) / c + ln.eps)  # (L, 1)
        self._mean = None
        # The linear form X = w * (x0c . g) + F @ B; F's last column is 1 (its row of B: beta).
        g, s = self.gamma, self.s
        if isinstance(prev, Tokens0):
            self.w, self.g = s, g
            self.f = torch.cat([s * self.a, s, torch.ones_like(s)], dim=1)
            self.b = torch.cat([self.vc * g, (self.u0 * g)[None], self.beta[None]], dim=0)
        else:
            # s * prev's column of ones is s: its row takes this block's u0 too.
            self.w, self.g = s * prev.w, prev.g * g
            self.f = torch.cat([s * prev.f, s * self.a, -s * prev.mean(), torch.ones_like(s)], dim=1)
            self.b = torch.cat([prev.b[:-1] * g, ((prev.b[-1] + self.u0) * g)[None], self.vc * g, g[None],
                                self.beta[None]], dim=0)

    def mean(self):
        """Row means of X, (L, 1): sum(gamma z) s / C + mean(beta); asked for only where used, so that
        no photo term goes unused."""
        if self._mean is None:
            self._mean = self.s * self._z_dot(self.gamma[:, None]) / self.gamma.shape[0] + self.beta.mean()
        return self._mean

    # z = prev - mean(prev) + Ar Vr + u0 (the centred input of the norm), its weighted sums.
    def _z_dot(self, f):
        """sum over channels of f * z, f: (C, 1) → (L, 1)."""
        return self.prev.readout(centred(f)) + self.a @ (self.vc @ f) + self.u0 @ f

    def _z_sq(self, e):
        """sum over channels of e * z^2, e: (C,) → (L, 1)."""
        prev, a = self.prev, self.a
        # prev_c . (e * Vc_k) for every value row k, through the fixed matrix centred(e * centred(wo)).
        cross = prev.by_head(centred(e[:, None] * centred(self.wo)), self.vq)  # (H, L, Nt)
        cross = (self.a_heads * cross).sum(dim=(0, 2))[:, None]
        cross = cross + prev.readout(centred((e * self.boc)[:, None]))
        eu = e * self.u0
        quad = ((a @ ((self.vc * e) @ self.vc.T)) * a).sum(dim=1, keepdim=True) + 2 * a @ (self.vc @ eu)[:, None]
        return prev.centred_sq(e) + 2 * cross + quad + (eu * self.u0).sum()

    def weighted_sq(self, e):
        """sum over channels of e * X^2 through X = s z gamma + beta."""
        g, b, s = self.gamma, self.beta, self.s
        return s * s * self._z_sq(e * g * g) + 2 * s * self._z_dot((e * g * b)[:, None]) + (e * b * b).sum()

    def centred_sq(self, e):
        """sum over channels of e * (X - mean X)^2."""
        mean = self.mean()
        return self.weighted_sq(e) - 2 * mean * self.readout(e[:, None]) + mean.square() * e.sum()

    def readout(self, m):
        """X @ m, m: (C, k) → (L, k)."""
        return self.w * self.terms.lin(centred(self.g[:, None] * m)) + self.f @ (self.b @ m)

    def _per_head(self, m):
        """(B @ m) as (H, K, d)."""
        k = self.b.shape[0]
        return (self.b @ m).reshape(k, self.terms.heads, -1).transpose(0, 1)

    def by_head(self, m, q, pe_bias=None):
        """((X [+ ipe]) @ m [+ pe_bias]) per head against q (H, d, Nt) → (H, L, Nt)."""
        heads, _, nt = q.shape
        length, k = self.f.shape
        # The low-rank part as one (L x K) @ (K x H*Nt) product, then to (H, L, Nt).
        z = (self._per_head(m) @ q).transpose(0, 1).reshape(k, heads * nt)
        low = (self.f @ z).reshape(length, heads, nt).transpose(0, 1)
        out = self.w[None] * (self.terms.by_head(centred(self.g[:, None] * m)) @ q) + low
        if pe_bias is not None:
            out = out + self.terms.by_head(m, x0=False, pe_bias=pe_bias) @ q
        return out

    def token_scores(self, m, q, pe_bias):
        """q (H, Nt, d) per head against ((X + ipe) @ m + pe_bias) → (H, Nt, L)."""
        heads, nt, _ = q.shape
        length, k = self.f.shape
        z = (q @ self._per_head(m).transpose(1, 2)).reshape(heads * nt, k)  # (H*Nt, K)
        low = (z @ self.f.T).reshape(heads, nt, length)  # one (H*Nt x K) @ (K x L) product
        x0_part = (q @ self.terms.by_head(centred(self.g[:, None] * m), channels_first=True)) * self.w.T[None]
        return x0_part + low + q @ self.terms.by_head(m, x0=False, pe_bias=pe_bias, channels_first=True)

    def values(self, a, m):
        """Per head a_h (X @ m)_h: a (H, Nt, L) → (H, Nt, d)."""
        heads, nt, length = a.shape
        x0_part = (a * self.w.T[None]) @ self.terms.by_head(centred(self.g[:, None] * m))
        af = (a.reshape(heads * nt, length) @ self.f).reshape(heads, nt, -1)  # a F as one product
        return x0_part + af @ self._per_head(m)
