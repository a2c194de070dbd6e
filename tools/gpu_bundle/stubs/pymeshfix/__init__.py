"""Stand-in for pymeshfix (see _bundle_stub): postprocessing_utils does
`from pymeshfix import _meshfix`, used only by mesh post-processing."""
from _bundle_stub import module_getattr

__getattr__ = module_getattr(__name__)
