"""spconv's SubMConv3d on the CPU, where spconv's own CPU path refuses a bias: for dry runs and
tests of upstream's sparse networks on machines without a GPU."""
from __future__ import annotations

import torch


def submanifold_conv_cpu(self, x):
    """spconv's CPU path refuses a bias: a plain 27-neighbour gather instead."""
    f, c = x.features, x.indices.long()
    grid = torch.full((x.batch_size, *x.spatial_shape), -1, dtype=torch.long)
    grid[c[:, 0], c[:, 1], c[:, 2], c[:, 3]] = torch.arange(len(c))
    out = torch.zeros(len(c), self.out_channels, dtype=f.dtype)
    k = self.kernel_size[0] // 2
    shape = torch.tensor(x.spatial_shape)
    for dx in range(-k, k + 1):
        for dy in range(-k, k + 1):
            for dz in range(-k, k + 1):
                n = c[:, 1:] + torch.tensor([dx, dy, dz])
                ok = ((n >= 0) & (n < shape)).all(1)
                idx = torch.full((len(c),), -1, dtype=torch.long)
                idx[ok] = grid[c[ok, 0], n[ok, 0], n[ok, 1], n[ok, 2]]
                m = idx >= 0
                out[m] += f[idx[m]] @ self.weight[:, dx + k, dy + k, dz + k, :].t().to(f.dtype)
    if self.bias is not None:
        out += self.bias.to(f.dtype)
    return x.replace_feature(out)
