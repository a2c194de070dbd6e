"""The GPU bundle's own stand-ins (tools/gpu_bundle): kaolin's check_tensor decides whether
upstream's FlexiCubes accepts its inputs, so it must check for real; the other stand-ins must
raise, naming themselves, the moment a code path uses them; the device `ray` must leave the
classes it decorates usable. Loaded from their files, so nothing shadows real packages here."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BUNDLE = Path(__file__).resolve().parents[1] / "tools" / "gpu_bundle"


def load(relative: str, name: str):
    spec = importlib.util.spec_from_file_location(name, BUNDLE / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_check_tensor_checks_shape_dtype_and_device():
    torch = pytest.importorskip("torch")
    check_tensor = load("stubs/kaolin/utils/testing.py", "bundle_kaolin_testing").check_tensor
    x = torch.zeros(5, 3)
    assert check_tensor(x, (None, 3), throw=False)
    assert check_tensor(x, (5, 3), dtype=torch.float32, device=torch.device("cpu"))
    assert not check_tensor(x, (None, 8), throw=False)
    assert not check_tensor(x, (5,), throw=False)  # rank differs
    assert not check_tensor(x, dtype=torch.float16, throw=False)
    with pytest.raises(ValueError, match="shape"):
        check_tensor(x, (4, 3))


def test_missing_names_raise_when_used_not_when_imported():
    stub = load("stubs/_bundle_stub.py", "bundle_stub")
    getattr_ = stub.module_getattr("open3d")
    vector = getattr_("utility").Vector3dVector  # what `o3d.utility.Vector3dVector` reaches
    with pytest.raises(NotImplementedError, match="open3d.utility.Vector3dVector"):
        vector([[0, 0, 0]])
    with pytest.raises(AttributeError):
        getattr_("__path__")  # import machinery probes dunders: no fake package


def test_pytorch3d_c_stand_in_names_the_op():
    c = load("pytorch3d_C.py", "bundle_pytorch3d_c")
    with pytest.raises(NotImplementedError, match="pytorch3d._C.rasterize_meshes"):
        c.rasterize_meshes()


def test_device_ray_serve_decorators_return_the_class():
    serve = load("stubs_device/ray/serve.py", "bundle_ray_serve")

    @serve.deployment(name="X", max_ongoing_requests=1)
    class Stage:
        @serve.batch(max_batch_size=8)
        async def go(self, items):
            return items

    @serve.deployment
    class Bare:
        pass

    assert Stage.__name__ == "Stage" and Bare.__name__ == "Bare"
    with pytest.raises(RuntimeError, match="not inside a Serve replica"):
        serve.get_replica_context()
