"""Loading upstream SAM 3D Objects (`sam3d_objects`): the one module that imports it and builds
its pipeline; a request's work on the loaded pipeline is `sam3d_run.UpstreamRun`.

The pipeline is built the way upstream's `notebook/inference.py` builds it (OmegaConf + hydra
`instantiate` of the checkpoint folder's `pipeline.yaml`), with these differences, each for a
reason measured or read in upstream's source (docs/sam3d.md has the details):
- Every YAML the pipeline instantiates (pipeline.yaml and the generator/decoder YAMLs it
  names) is checked against an allow-list of class roots before anything is built.
- Attention runs through PyTorch unless `flash_attn` is installed. Upstream's import-time
  `set_attention_backend()` switches to `flash_attn` on A100/H100/H200 whatever the
  environment says, so its attention modules are imported first, with the backend set, and
  its mask-building sparse fallback is replaced by `sam3d_attention.varlen_sdpa`.
- DINOv2 is built from the copy of its code that the MoGe package carries, never fetched from
  GitHub by `torch.hub` (its weights come from the SAM 3D checkpoint either way); any other
  `torch.hub.load` during the build is refused. MoGe's weights come from the Hugging Face hub
  id in pipeline.yaml or from `depth_model_dir`.
- Upstream's own compile path is off (its warm-up calls a method that does not exist); the
  unused 4-Gaussian decoder is not built.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from pathlib import Path

import yaml

from sam3d_common.errors import ModelUnavailable
from sam3d_common.settings import Sam3dSettings

# Class roots a checkpoint folder's YAML may instantiate; anything else is refused at start.
ALLOWED_TARGET_ROOTS = ("sam3d_objects.", "torchvision.transforms.", "moge.model.")
# Keys of pipeline.yaml for parts this service does not build.
UNUSED_KEYS = ("slat_decoder_gs_4_config_path", "slat_decoder_gs_4_ckpt_path")
ATTENTION_ENV = ("ATTN_BACKEND", "SPARSE_ATTN_BACKEND")
# The speed levers that compile or capture (Sam3dSettings), switched off if the warm-up fails.
LEVERS_OFF = ("compile_geometry", "geometry_cuda_graph", "compile_appearance", "dense_appearance",
              "appearance_cuda_graph", "compile_occupancy_decoder")


def vendored_root() -> Path | None:
    """Where PyPI `sam3d` keeps its copy of `sam3d_objects`, without importing `sam3d`."""
    spec = importlib.util.find_spec("sam3d")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0]) / "third_party" / "meta"
    return root if (root / "sam3d_objects").is_dir() else None


def package_problem() -> str | None:
    missing = []
    if importlib.util.find_spec("sam3d_objects") is None and vendored_root() is None:
        missing.append("`sam3d_objects` (install SAM 3D Objects from "
                       "github.com/facebookresearch/sam-3d-objects with its inference extras, or "
                       "PyPI `sam3d`, which vendors a copy)")
    for name, why in (("moge", "the depth model and the DINOv2 architecture"),
                      ("hydra", "hydra-core, to build the pipeline"),
                      ("spconv", "sparse convolutions of the structured-latent models")):
        if importlib.util.find_spec(name) is None:
            missing.append(f"`{name}` ({why})")
    if not missing:
        return None
    return ("missing Python packages: " + "; ".join(missing)
            + ". See cluster/README.md for the GPU image's pinned install")


def cuda_problem() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA device is visible (SAM 3D Objects runs on CUDA only)"
    return None


def unsafe_targets(config: object, path: str = "") -> list[str]:
    """Every `_target_` in a loaded yaml (nested dicts/lists) outside ALLOWED_TARGET_ROOTS."""
    bad: list[str] = []
    if isinstance(config, dict):
        for key, value in config.items():
            here = f"{path}.{key}" if path else str(key)
            if key == "_target_" and not (isinstance(value, str)
                                          and value.startswith(ALLOWED_TARGET_ROOTS)):
                bad.append(f"{here}: {value}")
            else:
                bad.extend(unsafe_targets(value, here))
    elif isinstance(config, list):
        for i, value in enumerate(config):
            bad.extend(unsafe_targets(value, f"{path}[{i}]"))
    return bad


def config_files(pipeline: dict) -> list[str]:
    """pipeline.yaml and every YAML it names (the ones upstream instantiates), used parts only."""
    return ["pipeline.yaml"] + [v for k, v in pipeline.items()
                                if isinstance(v, str) and k.endswith("_config_path")
                                and k not in UNUSED_KEYS]


def unsafe_configs(folder: Path) -> list[str]:
    """Allow-list violations in every YAML the pipeline would instantiate, as 'file: key: target'."""
    pipeline = yaml.safe_load((folder / "pipeline.yaml").read_text())
    if not isinstance(pipeline, dict):
        return ["pipeline.yaml: not a mapping"]
    bad = []
    for name in config_files(pipeline):
        path = (folder / name).resolve()
        if folder.resolve() not in path.parents:
            bad.append(f"{name}: outside the checkpoint folder")
            continue
        bad += [f"{name}: {b}" for b in unsafe_targets(yaml.safe_load(path.read_text()))]
    return bad


def import_pipeline() -> str:
    """Import upstream's inference pipeline with our attention choice; returns the backend."""
    root = vendored_root()
    if importlib.util.find_spec("sam3d_objects") is None and root is not None:
        sys.path.insert(0, str(root))
    os.environ.setdefault("LIDRA_SKIP_INIT", "true")  # as upstream's notebook sets it
    backend = "flash_attn" if importlib.util.find_spec("flash_attn") is not None else "sdpa"
    saved = {k: os.environ.get(k) for k in ATTENTION_ENV}
    os.environ.update({k: backend for k in ATTENTION_ENV})
    try:
        from sam3d_objects.model.backbone.tdfy_dit.modules import attention as dense
        from sam3d_objects.model.backbone.tdfy_dit.modules import sparse

        if backend == "sdpa":
            from .sam3d_attention import install_varlen_sdpa

            install_varlen_sdpa()
        import sam3d_objects.pipeline.inference_pipeline_pointmap  # noqa: F401
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if (dense.BACKEND, sparse.ATTN) != (backend, backend):
        raise ModelUnavailable(
            f"SAM 3D Objects' attention modules were imported before this service chose the "
            f"backend ({dense.BACKEND}/{sparse.ATTN}, wanted {backend}); start a fresh process")
    return backend


@contextlib.contextmanager
def dinov2_without_network():
    """During the build, `torch.hub.load("facebookresearch/dinov2", name, ...)` builds the
    architecture from MoGe's copy of the DINOv2 code, without pretrained weights (the SAM 3D
    checkpoint holds them); every other hub load is refused."""
    import torch

    real = torch.hub.load

    def load(repo_or_dir, model, *args, **kwargs):
        if str(repo_or_dir) != "facebookresearch/dinov2" or args:
            raise ModelUnavailable(
                f"refused torch.hub.load({repo_or_dir!r}, {model!r}): SAM 3D Objects loads no "
                "code from the network at run time")
        from moge.model.dinov2.hub import backbones

        builder = getattr(backbones, str(model), None)
        if builder is None or not str(model).startswith("dinov2_"):
            raise ModelUnavailable(f"unknown DINOv2 model {model!r} in the checkpoint's YAML")
        for key in ("source", "verbose", "pretrained", "force_reload", "trust_repo", "skip_validation"):
            kwargs.pop(key, None)
        return builder(pretrained=False, **kwargs)

    torch.hub.load = load
    try:
        yield
    finally:
        torch.hub.load = real


def build_pipeline(checkpoint_dir: Path, settings: Sam3dSettings, instantiate_fn=None):
    """The upstream pipeline object, built from `checkpoint_dir` under the rules above.

    `instantiate_fn(config)` replaces hydra's instantiate (benchmarks build at random init)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    folder = Path(checkpoint_dir)
    bad = unsafe_configs(folder)
    if bad:
        raise ModelUnavailable(
            f"{folder} instantiates classes outside {', '.join(ALLOWED_TARGET_ROOTS)}: "
            + "; ".join(bad))
    config = OmegaConf.load(folder / "pipeline.yaml")
    config.rendering_engine = "pytorch3d"
    config.compile_model = False
    config.workspace_dir = str(folder.resolve())
    for key in UNUSED_KEYS:
        config[key] = None
    if settings.depth_model_dir:
        config.depth_model.model.pretrained_model_name_or_path = settings.depth_model_dir
    with dinov2_without_network():
        return (instantiate_fn or instantiate)(config)


class UpstreamModel:
    """The loaded upstream pipeline; `begin` makes one request's run."""

    name = "sam3d"

    def __init__(self, checkpoint_dir: Path, settings: Sam3dSettings, instantiate_fn=None):
        problems = [p for p in (package_problem(), cuda_problem()) if p]
        if problems:
            raise ModelUnavailable("SAM 3D Objects cannot start: " + "; ".join(problems))
        self.attention = import_pipeline()
        import torch

        self.torch = torch
        self.settings = settings
        try:
            self.pipeline = build_pipeline(checkpoint_dir, settings, instantiate_fn)
        except ModelUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - report any load failure as a clear startup error
            raise ModelUnavailable(
                f"SAM 3D Objects failed to load from {checkpoint_dir}: {type(exc).__name__}: "
                f"{exc} (the depth model MoGe also needs the hub id in pipeline.yaml reachable, "
                "a warm HF_HOME cache, or reconstructor.sam3d.depth_model_dir)") from exc
        from .sam3d_levers import apply_speed_settings

        self.compiled_blocks = apply_speed_settings(self.pipeline.models, settings,
                                                    torch.cuda.is_available())

    def warm_up(self) -> float:
        """One tiny synthetic request through every call a real one makes, so that the first
        user does not pay for compilation, graph capture, CUDA kernel selection and the mesh
        decoder's first call (about 8 s cold on the H200). If it fails with speed levers on
        (say inductor cannot build a kernel on this node), the levers are switched off and it
        runs again, so that requests do not meet the same failure. Returns the seconds it took;
        failures are logged, not raised."""
        import logging
        import time

        log = logging.getLogger(__name__)
        started = time.perf_counter()
        error = self._warm_up_request()
        if error is not None and any(getattr(self.settings, k) for k in LEVERS_OFF):
            log.warning("SAM 3D warm-up failed with its speed levers on (%s); switching %s off",
                        error, ", ".join(LEVERS_OFF))
            from .sam3d_levers import apply_speed_settings

            self.settings = self.settings.model_copy(update=dict.fromkeys(LEVERS_OFF, False))
            self.compiled_blocks = apply_speed_settings(self.pipeline.models, self.settings,
                                                        self.torch.cuda.is_available())
            error = self._warm_up_request()
        if error is not None:
            log.warning("SAM 3D warm-up incomplete: %s", error)
        return time.perf_counter() - started

    def _warm_up_request(self) -> Exception | None:
        import numpy as np

        from .sam3d_host import settle

        yy, xx = np.mgrid[0:256, 0:256]
        image = np.stack([yy, xx, np.full_like(yy, 128)], -1).astype(np.uint8)
        mask = (yy - 128) ** 2 + (xx - 128) ** 2 < 80 ** 2
        run = self.begin(image, mask, 0, 1, 1)
        try:
            run.prepare()
            run.geometry_step()
            # settle(): with async_previews the previews come back as pending host copies.
            occupancy = settle(run.geometry_preview()).occupancy
            if occupancy.any():
                run.start_appearance(occupancy)
                run.appearance_step()
                settle(run.appearance_preview())
                run.finish()
        except Exception as exc:  # noqa: BLE001 - a warm-up must not stop the replica
            return exc
        finally:
            run.release()
        return None

    def begin(self, image, mask, seed: int | None, geometry_steps: int, appearance_steps: int,
              fast: bool = False):
        from .sam3d_run import UpstreamRun

        return UpstreamRun(self, image, mask, seed, geometry_steps, appearance_steps, fast)
