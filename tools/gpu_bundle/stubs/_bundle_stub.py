"""Shared by the bundle's stand-in packages (open3d, pyvista, pymeshfix, igraph, gsplat):
SAM 3D Objects imports them at module level, but its inference path without mesh
post-processing, texture baking or layout optimisation never calls them. Any name taken
from a stand-in is a `Missing` that raises NotImplementedError, naming itself, when used."""
from __future__ import annotations


class Missing:
    """A placeholder for `name` in a package the bundle does not carry."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str) -> "Missing":
        if attr.startswith("__"):
            raise AttributeError(attr)
        return Missing(f"{self._name}.{attr}")

    def __call__(self, *args, **kwargs):
        raise NotImplementedError(f"{self._name}: a stand-in of the GPU bundle (tools/gpu_bundle); "
                                  "this code path needs the real package")

    def __repr__(self) -> str:
        return f"<missing {self._name}>"


def module_getattr(module: str):
    """A module-level __getattr__ giving a Missing for every public name of `module`."""

    def __getattr__(attr: str) -> Missing:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return Missing(f"{module}.{attr}")

    return __getattr__
