"""Stand-in for pymeshfix's compiled `_meshfix` (see _bundle_stub)."""
from _bundle_stub import module_getattr

__getattr__ = module_getattr(__name__)
