"""The noise of bench_sam3d_h200.py's comparison with upstream: every noise tensor our run
draws is recorded, in order, and replayed into upstream's generators, so that upstream's
`run()` starts from the same noise as ours."""
from __future__ import annotations


def clone(x):
    return {k: clone(v) for k, v in x.items()} if isinstance(x, dict) else x.clone()


def record_noise(upstream_run_cls) -> list:
    """Patches `upstream_run_cls._noise` (deployments.reconstructor.sam3d_run.UpstreamRun) to
    append a copy of each noise it draws to the returned list (clear it between runs)."""
    drawn: list = []
    real_noise = upstream_run_cls._noise

    depth = [0]

    def record(self, shape):  # _noise recurses into dicts: keep the outermost calls only
        depth[0] += 1
        try:
            out = real_noise(self, shape)
        finally:
            depth[0] -= 1
        if depth[0] == 0:
            drawn.append(clone(out))
        return out

    upstream_run_cls._noise = record
    return drawn


def same_shape(noise, shape) -> bool:
    if isinstance(shape, dict):
        return isinstance(noise, dict) and set(noise) == set(shape) and all(
            same_shape(noise[k], shape[k]) for k in shape)
    return not isinstance(noise, dict) and tuple(noise.shape) == tuple(shape)


def replay_noise(generator, queue, redrawn, shape, device):
    """The noise our run drew, in order, for upstream's generators; where upstream asks for
    another shape (its stage 1 kept a different number of voxels than ours), fresh noise from
    the generator's own method, and the shape is recorded."""
    noise = queue.pop(0) if queue else None
    if noise is not None and same_shape(noise, shape):
        return noise
    redrawn.append(str(shape))
    return type(generator)._generate_noise(generator, shape, device)
