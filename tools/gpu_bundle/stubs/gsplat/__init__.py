"""Stand-in for gsplat (see _bundle_stub): imported by tdfy_dit.renderers.gaussian_render,
used only to render Gaussians (texture baking, previews from renders)."""
from _bundle_stub import module_getattr

__getattr__ = module_getattr(__name__)
