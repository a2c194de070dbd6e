"""Stand-in for python-igraph (see _bundle_stub): imported by tdfy_dit.utils.postprocessing_utils,
used only by its hole filling (mesh post-processing)."""
from _bundle_stub import module_getattr

__getattr__ = module_getattr(__name__)
