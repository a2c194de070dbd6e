"""Copies of a preview's GPU tensors to the host that the GPU worker does not wait for.

A preview ends in `.cpu()`: the GPU worker thread waits for the copy, and so for every kernel
queued before it, and only then launches the next denoising step, so the GPU idles while that
step is being launched. With `Sam3dSettings.async_previews` the worker instead queues the copy
into pinned host memory, records a CUDA event and goes on to the next step; the frame thread
(which builds the voxel frame from the preview anyway) waits on the event. The copy is queued on
the same stream after the preview's kernels, so it reads what they wrote, and before the next
step's kernels, so nothing overwrites its source first; the pinned buffers stay referenced until
`wait()` returns. Tensors already on the host are kept as they are.
"""
from __future__ import annotations

import numpy as np


class HostCopy:
    def __init__(self, torch, tensors: dict):
        self._event = None
        self._host = {}
        for name, t in tensors.items():
            t = t.detach()
            if t.is_cuda:
                host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                host.copy_(t, non_blocking=True)
                t = host
                self._event = self._event or torch.cuda.Event()
            self._host[name] = t
        if self._event is not None:
            self._event.record()

    def wait(self) -> dict[str, np.ndarray]:
        """The tensors as numpy arrays, once the copies have landed (on any thread)."""
        if self._event is not None:
            self._event.synchronize()
        return {name: t.numpy() for name, t in self._host.items()}


def settle(preview):
    """A preview as numpy arrays: a pending one (sam3d_run.PendingGeometry/PendingAppearance)
    waits for its host copy; a settled one (GeometryPreview, AppearancePreview, or any object
    without `settle()`) is returned as it is."""
    settle_fn = getattr(preview, "settle", None)
    return preview if settle_fn is None else settle_fn()
