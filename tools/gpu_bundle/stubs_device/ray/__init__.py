"""Stand-in for Ray on the GPU machine, which has no Ray and no network to install it.

The benches there drive the stages' backends directly, in one process; the deployment modules
they import only decorate classes with `serve.deployment`/`serve.batch`, and
`sam3d_common.metrics` asks `ray.is_initialized()` to choose its sink (False here: the
in-process Recorder). Only on the GPU machine's PYTHONPATH (.sam3d/setup.sh), never here."""
from . import serve  # noqa: F401


def is_initialized() -> bool:
    return False
