"""The only module that talks to the upstream `sam3d_objects` package (SAM 3D Objects).

NOT RUN END TO END: upstream needs CUDA, pytorch3d, spconv, kaolin, gsplat, MoGe and the
gated weights, none of which the development and CI machines have. This was written against
upstream's source (facebookresearch/sam-3d-objects, and the copy vendored in PyPI `sam3d`
0.1.2). Checked on CPU with that vendored copy, at toy sizes and random weights, outside CI:
`EulerRun` reproduces upstream's `generate_iter` exactly for both ShortCut and FlowMatching
(given the same noise; tests/test_sam3d_backend.py repeats this wherever `sam3d_objects`
imports); `geometry_preview` through a real SparseStructureDecoder gives (64, 64, 64) bool;
`start_appearance` + `appearance_step` + `appearance_preview` through a real FlowMatching and a
real SLatGaussianDecoder (with its hard-coded `.cuda()` patched out) give one colour per
surface voxel, the decoder keeping each voxel's Gaussians together in the input coords' order.
Never run: loading `pipeline.yaml` and the checkpoints, `prepare` (MoGe, preprocessing, DINOv2
condition embedders), the pose decoder, the CFG wrappers, full-size models, CUDA and autocast.
`Sam3dReconstructor`'s logic around this adapter is tested on CPU with a fake.

What it uses of upstream, and why it does not call `InferencePipeline.run()`: `run()` samples
each stage in one call and seeds torch's global RNG. Streaming needs one denoising step per
call and a preview per step, so this adapter
- builds the pipeline the way upstream's `notebook/inference.py` does (OmegaConf + hydra
  `instantiate` of `pipeline.yaml`, rendering engine "pytorch3d", workspace = the yaml's folder),
  after checking every `_target_` in the yaml against a short allow-list;
- reuses the pipeline's preprocessing (`compute_pointmap` with MoGe, `preprocess_image`),
  condition embedders (`get_condition_input`), pose decoder, decoders and the generators'
  own dynamics (`_generate_dynamics`, which applies CFG) and time grids (`_prepare_t_and_d` /
  `_prepare_t`, which apply `rescale_t`);
- integrates with Euler steps itself, as upstream's default solver does, from noise drawn
  with a per-request seeded `torch.Generator` instead of the global RNG;
- previews each step with the predicted clean sample, x̂ = x_t + (1 - t) · v (upstream's
  flow runs from noise at t = 0 to data at t = 1): geometry through the sparse-structure
  decoder (64³ logits > 0) and the pose decoder (rotation), appearance through the Gaussian
  decoder (per-voxel colour from the Gaussians' DC colour and opacity).
Deliberate differences from `run()`: the appearance stage always gets the full-resolution
surface voxels (upstream halves the grid above 42,000 voxels, a limit of its mesh decoder,
which this service does not use); no mesh or Gaussian splat is decoded, only colours.
"""
from __future__ import annotations

import importlib.util
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deployments.errors import ModelUnavailable
from serve_app.settings import Sam3dSettings

from .sam3d_grid import quaternion_to_matrix, surface, voxel_colors

# Modules the pipeline yaml may instantiate; anything else in a checkpoint folder's yaml is refused.
ALLOWED_TARGET_ROOTS = ("sam3d_objects.", "torch.", "torchvision.", "moge.")
_SEED_SOURCE = random.SystemRandom()


def vendored_root() -> Path | None:
    """Where PyPI `sam3d` keeps its copy of `sam3d_objects`, without importing `sam3d`."""
    spec = importlib.util.find_spec("sam3d")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0]) / "third_party" / "meta"
    return root if (root / "sam3d_objects").is_dir() else None


def package_problem() -> str | None:
    if importlib.util.find_spec("sam3d_objects") is not None or vendored_root() is not None:
        return None
    return ("the Python package `sam3d_objects` is not installed (install SAM 3D Objects from "
            "github.com/facebookresearch/sam-3d-objects with its inference extras, or PyPI "
            "`sam3d`, which vendors a copy; both need CUDA builds of pytorch3d, spconv, "
            "kaolin and gsplat: see cluster/README.md)")


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


def _tree_map(fn, a, b):
    """fn over matching leaves of two latents that are both tensors or both dicts of tensors."""
    if isinstance(a, dict):
        return {k: fn(a[k], b[k]) for k in a}
    return fn(a, b)


class EulerRun:
    """One generator's flow, integrated one Euler step per `step()` call.

    `generator` is an upstream FlowMatching or ShortCut model (a ShortCut takes the shortcut
    size `d` before the conditions). After each step `x` is the new state and `x_hat` the
    clean sample predicted at the step's start time.
    """

    def __init__(self, generator, noise, times, dynamics_args: tuple, cond_args: tuple,
                 cond_kwargs: dict):
        self.generator = generator
        self.x = noise
        self.x_hat = None
        self.times = times
        self.total = len(times) - 1
        self.done = 0
        self._args = tuple(dynamics_args) + tuple(cond_args)
        self._kwargs = dict(cond_kwargs)

    def step(self) -> None:
        t0, t1 = self.times[self.done], self.times[self.done + 1]
        v = self.generator._generate_dynamics(self.x, t0, *self._args, **self._kwargs)
        to_end, dt = float(1 - t0), float(t1 - t0)  # times are numpy or 0-d tensors
        self.x_hat = _tree_map(lambda x, u: x + u * to_end, self.x, v)
        self.x = _tree_map(lambda x, u: x + u * dt, self.x, v)
        self.done += 1


@dataclass
class GeometryPreview:
    occupancy: np.ndarray  # (64, 64, 64) bool, local grid
    rotation: np.ndarray | None  # upstream's row-vector pose rotation, None without a pose


@dataclass
class AppearancePreview:
    coords: np.ndarray  # (V, 3) int local voxel coordinates
    colors: np.ndarray  # (V, 3) uint8


class UpstreamRun:
    """State of one request on the GPU. Every method runs on the backend's single worker thread."""

    def __init__(self, model: "UpstreamModel", image: np.ndarray, mask: np.ndarray,
                 seed: int | None, geometry_steps: int, appearance_steps: int):
        torch = model.torch
        self.model = model
        self.p = model.pipeline
        self.device = self.p.device
        self.geometry_steps = geometry_steps
        self.appearance_steps = appearance_steps
        seed = _SEED_SOURCE.randrange(2**63) if seed is None else int(seed)
        self.rng = torch.Generator(device=self.device).manual_seed(seed)
        alpha = (np.asarray(mask, bool).astype(np.uint8) * 255)[..., None]
        rgb = np.asarray(image)[..., :3].astype(np.uint8, copy=False)  # upstream asserts uint8 RGBA
        self.rgba = np.ascontiguousarray(np.concatenate([rgb, alpha], -1))
        self.geo: EulerRun | None = None
        self.app: EulerRun | None = None
        self.ss_input: dict | None = None
        self.slat_input: dict | None = None
        self.coords = None

    def _ctx(self, dtype):
        """Thread-local torch state for one call: device default, no autograd, CUDA autocast."""
        import contextlib

        torch = self.model.torch
        stack = contextlib.ExitStack()
        stack.enter_context(self.device)
        stack.enter_context(torch.no_grad())
        if dtype is not None:
            stack.enter_context(torch.autocast(device_type="cuda", dtype=dtype))
        return stack

    def _noise(self, shape):
        torch = self.model.torch
        if isinstance(shape, dict):
            return {k: self._noise(v) for k, v in shape.items()}
        return torch.randn(shape, generator=self.rng, device=self.device)

    def prepare(self) -> None:
        """Pointmap (MoGe), both stages' preprocessing, and the geometry stage's conditions."""
        p, s = self.p, self.model.settings
        with self._ctx(None):
            pointmap = p.compute_pointmap(self.rgba)["pointmap"]
            self.ss_input = p.preprocess_image(self.rgba, p.ss_preprocessor, pointmap=pointmap)
            self.slat_input = p.preprocess_image(self.rgba, p.slat_preprocessor)
        gen = p.models["ss_generator"]
        gen.no_shortcut = not s.use_distillation
        gen.reverse_fn.strength = 0 if s.use_distillation else p.ss_cfg_strength
        gen.reverse_fn.strength_pm = 0 if s.use_distillation else p.ss_cfg_strength_pm
        with self._ctx(p.shape_model_dtype):
            args, kwargs = p.get_condition_input(
                p.condition_embedders["ss_condition_embedder"], self.ss_input,
                p.ss_condition_input_mapping)
            if p.is_mm_dit():
                shape = {k: (1, v.pos_emb.shape[0], v.input_layer.in_features)
                         for k, v in gen.reverse_fn.backbone.latent_mapping.items()}
            else:
                shape = (1, 4096, 8)
            noise = self._noise(shape)
        times, d = gen._prepare_t_and_d(self.geometry_steps)
        self.geo = EulerRun(gen, noise, times, (d,), args, kwargs)

    def geometry_step(self) -> None:
        with self._ctx(self.p.shape_model_dtype):
            self.geo.step()

    def geometry_preview(self) -> GeometryPreview:
        p, x_hat = self.p, self.geo.x_hat
        latents = x_hat if isinstance(x_hat, dict) else {"shape": x_hat}
        with self._ctx(p.shape_model_dtype):
            shape = latents["shape"]
            logits = p.models["ss_decoder"](
                shape.permute(0, 2, 1).contiguous().view(shape.shape[0], 8, 16, 16, 16))
            occ = (logits[0, 0] > 0).cpu().numpy()
            rotation = None
            if "6drotation_normalized" in latents or "quaternion" in latents:
                pose = p.pose_decoder(latents, scene_scale=self.ss_input.get("pointmap_scale"),
                                      scene_shift=self.ss_input.get("pointmap_shift"))
                q = pose["rotation"].reshape(-1, 4)[0].float().cpu().numpy()
                rotation = quaternion_to_matrix(q)
        return GeometryPreview(occ, rotation)

    def start_appearance(self, occupancy: np.ndarray) -> None:
        """Set up the SLAT flow on the surface voxels of the final geometry (local grid)."""
        torch, p, s = self.model.torch, self.p, self.model.settings
        local = np.argwhere(surface(occupancy))
        coords = np.concatenate([np.zeros((len(local), 1), np.int64), local], axis=1)
        self.coords = torch.from_numpy(coords).int().to(self.device)
        gen = p.models["slat_generator"]
        gen.no_shortcut = not s.use_distillation
        gen.reverse_fn.strength = 0 if s.use_distillation else p.slat_cfg_strength
        with self._ctx(p.dtype):
            args, kwargs = p.get_condition_input(
                p.condition_embedders["slat_condition_embedder"], self.slat_input,
                p.slat_condition_input_mapping)
            args = tuple(args) + (self.coords.cpu().numpy(),)
            noise = self._noise((1, len(local), 8))
        times = gen._prepare_t(self.appearance_steps).to(self.device)
        self.app = EulerRun(gen, noise, times, (), args, kwargs)

    def appearance_step(self) -> None:
        with self._ctx(self.p.dtype):
            self.app.step()

    def appearance_preview(self) -> AppearancePreview:
        from sam3d_objects.model.backbone.tdfy_dit.modules import sparse as sp

        p = self.p
        with self._ctx(None):
            feats = self.app.x_hat[0].float()
            feats = feats * p.slat_std.to(feats.device) + p.slat_mean.to(feats.device)
            slat = sp.SparseTensor(coords=self.coords, feats=feats)
            gaussians = p.models["slat_decoder_gs"](slat)[0]
            n_vox = self.coords.shape[0]
            dc = gaussians.get_features[:, 0, :].float().reshape(n_vox, -1, 3).cpu().numpy()
            opacity = gaussians.get_opacity.float().reshape(n_vox, -1).cpu().numpy()
        # The decoder emits each voxel's Gaussians together, in the order of the input coords.
        return AppearancePreview(self.coords[:, 1:].cpu().numpy(), voxel_colors(dc, opacity))

    def release(self) -> None:
        self.geo = self.app = self.ss_input = self.slat_input = self.coords = None
        torch = self.model.torch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class UpstreamModel:
    """The loaded upstream pipeline; `begin` makes one request's run."""

    name = "sam3d"

    def __init__(self, checkpoint_dir: Path, settings: Sam3dSettings):
        problems = [p for p in (package_problem(), cuda_problem()) if p]
        if problems:
            raise ModelUnavailable("SAM 3D Objects cannot start: " + "; ".join(problems))
        os.environ.setdefault("LIDRA_SKIP_INIT", "true")  # as upstream's notebook sets it
        root = vendored_root()
        if importlib.util.find_spec("sam3d_objects") is None and root is not None:
            sys.path.insert(0, str(root))
        import torch
        from hydra.utils import instantiate
        from omegaconf import OmegaConf

        self.torch = torch
        self.settings = settings
        config_file = Path(checkpoint_dir) / "pipeline.yaml"
        config = OmegaConf.load(config_file)
        bad = unsafe_targets(OmegaConf.to_container(config, resolve=False))
        if bad:
            raise ModelUnavailable(
                f"{config_file} instantiates classes outside {', '.join(ALLOWED_TARGET_ROOTS)}: "
                + "; ".join(bad))
        config.rendering_engine = "pytorch3d"
        config.compile_model = settings.compile
        config.workspace_dir = str(Path(checkpoint_dir).resolve())
        try:
            self.pipeline = instantiate(config)
        except Exception as exc:  # noqa: BLE001 - report any load failure as a clear startup error
            raise ModelUnavailable(
                f"SAM 3D Objects failed to load from {checkpoint_dir}: {type(exc).__name__}: "
                f"{exc} (the depth model MoGe `Ruicheng/moge-vitl` and DINOv2 via torch.hub "
                "also need the hub or a warm HF_HOME / TORCH_HOME cache)") from exc

    def begin(self, image: np.ndarray, mask: np.ndarray, seed: int | None,
              geometry_steps: int, appearance_steps: int) -> UpstreamRun:
        return UpstreamRun(self, image, mask, seed, geometry_steps, appearance_steps)
