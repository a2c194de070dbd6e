"""`ray.serve` as the deployment modules use it at import time: decorators that return what
they decorate. Anything that needs a running Serve raises."""
from __future__ import annotations


def _decorator(*args, **kwargs):
    if len(args) == 1 and not kwargs and callable(args[0]):
        return args[0]
    return lambda target: target


deployment = _decorator
batch = _decorator
multiplexed = _decorator


def get_replica_context():
    raise RuntimeError("ray.serve stand-in (tools/gpu_bundle/stubs_device): not inside a Serve replica")
