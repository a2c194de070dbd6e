"""Stand-in for pytorch3d's compiled `_C` extension (no pytorch3d wheel exists for the GPU
machine's torch). SAM 3D Objects' inference path imports pytorch3d modules whose module
level does `from pytorch3d import _C`, but calls only pure-PyTorch transforms; any compiled
op that is actually called raises, naming itself."""


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)

    def missing(*args, **kwargs):
        raise NotImplementedError(f"pytorch3d._C.{name}: the bundle carries pytorch3d without its "
                                  "compiled extension")

    return missing
