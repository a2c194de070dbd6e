"""Stand-in for pyvista (see _bundle_stub): imported by tdfy_dit.utils.postprocessing_utils,
used only by mesh post-processing."""
from _bundle_stub import module_getattr

__getattr__ = module_getattr(__name__)
