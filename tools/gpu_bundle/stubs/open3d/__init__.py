"""Stand-in for open3d (see _bundle_stub): imported by sam3d_objects.pipeline.inference_utils
and layout_post_optimization_utils, used only by mesh/layout post-processing."""
from _bundle_stub import module_getattr

__getattr__ = module_getattr(__name__)
