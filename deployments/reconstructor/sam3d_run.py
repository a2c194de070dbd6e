"""One request's work on the loaded SAM 3D Objects pipeline, one step per call.

Upstream's `InferencePipeline.run()` samples each stage in one call and seeds torch's global
RNG; streaming needs one denoising step per call and a preview after any of them. So a run
- reuses the pipeline's preprocessing (`compute_pointmap`, `preprocess_image`), condition
  embedders (`get_condition_input`), pose decoder, decoders and the generators' own dynamics
  (`_generate_dynamics`, which applies CFG) and time grids (`_prepare_t_and_d`, `_prepare_t`);
- integrates with Euler steps itself, as upstream's default solver does, from noise drawn with
  a per-request `torch.Generator` in the order upstream draws it (dict latents by sorted key,
  as optree flattens them), so a seed gives the same sample as `run()` after
  `torch.manual_seed(seed)`;
- previews a step with the predicted clean sample x̂ = x_t + (1 − t)·v (the flow runs from
  noise at t = 0 to data at t = 1; at the last step x̂ is the sample itself);
- hands the appearance stage the voxels upstream would (`prune_sparse_structure`, then
  `downsample_sparse_structure` above 42,000 voxels) and decodes the final structured latent
  with upstream's mesh (FlexiCubes, 256³, vertex colours) and Gaussian (32 per voxel) decoders,
  outside autocast, as `decode_slat` does; the pose is decoded outside autocast too, its scale
  multiplied by the downsampling factor, as `run()` does.
All methods run on the reconstructor's single GPU worker thread.
"""
from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass

import numpy as np

from .base import GaussianData, MeshData, Pose
from .sam3d_grid import quaternion_to_matrix, voxel_colors
from .sam3d_host import HostCopy
from .sam3d_levers import LatentColors

_SEED_SOURCE = random.SystemRandom()


_PREVIEW_STREAMS: dict = {}


def preview_stream(torch, device):
    """The side stream previews are decoded on (one per device, made on first use)."""
    device = torch.device(device)
    if device not in _PREVIEW_STREAMS:
        _PREVIEW_STREAMS[device] = torch.cuda.Stream(device)
    return _PREVIEW_STREAMS[device]


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
        # The step sizes as Python floats, read once: `float()` of a 0-d CUDA tensor waits for
        # the GPU, and after each step's dynamics that wait would leave the GPU idle while the
        # next step is launched (the appearance stage's time grid lives on the GPU).
        self._host_times = [float(t) for t in times]
        self.total = len(times) - 1
        self.done = 0
        self._args = tuple(dynamics_args) + tuple(cond_args)
        self._kwargs = dict(cond_kwargs)

    def step(self) -> None:
        t0 = self.times[self.done]
        v = self.generator._generate_dynamics(self.x, t0, *self._args, **self._kwargs)
        h0, h1 = self._host_times[self.done], self._host_times[self.done + 1]
        to_end, dt = 1.0 - h0, h1 - h0
        self.x_hat = _tree_map(lambda x, u: x + u * to_end, self.x, v)
        self.x = _tree_map(lambda x, u: x + u * dt, self.x, v)
        self.done += 1


@dataclass
class GeometryPreview:
    occupancy: np.ndarray  # (64, 64, 64) bool, local grid
    rotation: np.ndarray | None  # upstream's row-vector pose rotation, None without a pose


@dataclass
class AppearancePreview:
    coords: np.ndarray  # (V, 3) int local voxel coordinates on the 64³ grid
    colors: np.ndarray  # (V, 3) uint8


@dataclass
class PendingGeometry:
    """A geometry preview whose host copy is still in flight (sam3d_host); `settle()` waits."""
    copy: HostCopy

    def settle(self) -> GeometryPreview:
        a = self.copy.wait()
        q = a.get("quaternion")
        return GeometryPreview(a["occupancy"], None if q is None else quaternion_to_matrix(q))


@dataclass
class PendingAppearance:
    """An appearance preview whose host copy is still in flight. `colors` came from the
    Gaussian decoder (then, with `fit`, the latent→colour map is refitted to them) or, when
    absent, are mapped from `latent` by `fit`. Settled in order on one thread, as the map
    requires."""
    coords: np.ndarray
    copy: HostCopy
    fit: LatentColors | None

    def settle(self) -> AppearancePreview:
        a = self.copy.wait()
        colors = a.get("colors")
        if colors is None:
            colors = self.fit(a["latent"])
        elif self.fit is not None:
            self.fit.fit(a["latent"], colors)
        return AppearancePreview(self.coords, colors)


@dataclass
class FinalAssets:
    mesh: MeshData | None
    gaussians: GaussianData | None
    pose: Pose | None
    voxels: int  # structured-latent voxels decoded
    downsample_factor: float


def undo_downsample(coords, original):
    """Positions on the original 64³ grid of coords from `downsample_sparse_structure`, which
    maps the original bounding box affinely onto a box `factor` times smaller, centred in it."""
    lo, hi = original.min(0), original.max(0)
    size = hi - lo + 1
    target = size / 2.0
    tmin = lo + (size - target) / 2
    span = np.maximum(target - 1, 1e-6)
    back = (coords - tmin) / span * (hi - lo) + lo
    return np.clip(np.rint(back), 0, 63).astype(np.int64)


class UpstreamRun:
    """State of one request on the GPU."""

    def __init__(self, model, image: np.ndarray, mask: np.ndarray, seed: int | None,
                 geometry_steps: int, appearance_steps: int, fast: bool = False):
        torch = model.torch
        self.model = model
        self.p = model.pipeline
        self.device = self.p.device
        self.geometry_steps = geometry_steps
        self.appearance_steps = appearance_steps
        self.fast = fast
        seed = _SEED_SOURCE.randrange(2**63) if seed is None else int(seed)
        self.rng = torch.Generator(device=self.device).manual_seed(seed)
        alpha = (np.asarray(mask, bool).astype(np.uint8) * 255)[..., None]
        rgb = np.asarray(image)[..., :3].astype(np.uint8, copy=False)  # upstream asserts uint8 RGBA
        self.rgba = np.ascontiguousarray(np.concatenate([rgb, alpha], -1))
        self.geo: EulerRun | None = None
        self.app: EulerRun | None = None
        self.ss_input: dict | None = None
        self.slat_input: dict | None = None
        self.coords = None  # (V, 4) int32 [batch, x, y, z] for the appearance stage
        self.preview_coords: np.ndarray | None = None  # (V, 3) on the 64³ grid
        self.downsample_factor = 1.0
        settings = model.settings
        self.latent_colors = (LatentColors(settings.preview_refit_every)
                              if settings.preview_colors == "latent" else None)
        self.preview_dtype = getattr(torch, settings.preview_dtype)
        # Off CUDA the copies are no-ops, but the previews are still settled on the frame
        # thread, so the CPU tests run the same path.
        self.async_previews = bool(settings.async_previews or settings.preview_stream)
        self.side = (preview_stream(torch, self.device)
                     if settings.preview_stream and torch.device(self.device).type == "cuda" else None)

    def _ctx(self, dtype):
        """Thread-local torch state for one call: no autograd, CUDA autocast. No default-device
        context: `with torch.device(...)` is a torch function mode that intercepts every op
        in Python, and upstream's code places its tensors itself, as `run()` relies on."""
        torch = self.model.torch
        stack = contextlib.ExitStack()
        stack.enter_context(torch.no_grad())
        if dtype is not None:
            stack.enter_context(torch.autocast(device_type="cuda", dtype=dtype))
        return stack

    def _noise(self, shape):
        torch = self.model.torch
        if isinstance(shape, dict):  # upstream draws dict leaves in optree's (sorted-key) order
            return {k: self._noise(shape[k]) for k in sorted(shape)}
        return torch.randn(shape, generator=self.rng, device=self.device)

    def _configure(self, gen, cfg_strength: float, cfg_strength_pm: float | None = None) -> None:
        """As upstream's sample_* do: shortcut + no CFG when fast, plain flow + CFG otherwise."""
        gen.no_shortcut = not self.fast
        gen.reverse_fn.strength = 0 if self.fast else cfg_strength
        if cfg_strength_pm is not None:
            gen.reverse_fn.strength_pm = 0 if self.fast else cfg_strength_pm

    def prepare(self) -> None:
        """Pointmap (MoGe), both stages' preprocessing, and the geometry stage's conditions."""
        p = self.p
        with self._ctx(None):
            pointmap = p.compute_pointmap(self.rgba)["pointmap"]
            self.ss_input = p.preprocess_image(self.rgba, p.ss_preprocessor, pointmap=pointmap)
            self.slat_input = p.preprocess_image(self.rgba, p.slat_preprocessor)
        gen = p.models["ss_generator"]
        self._configure(gen, p.ss_cfg_strength, p.ss_cfg_strength_pm)
        with self._ctx(p.shape_model_dtype):
            if p.is_mm_dit():
                shape = {k: (1, v.pos_emb.shape[0], v.input_layer.in_features)
                         for k, v in gen.reverse_fn.backbone.latent_mapping.items()}
            else:
                shape = (1, 4096, 8)
            noise = self._noise(shape)
            args, kwargs = p.get_condition_input(
                p.condition_embedders["ss_condition_embedder"], self.ss_input,
                p.ss_condition_input_mapping)
        times, d = gen._prepare_t_and_d(self.geometry_steps)
        self.geo = EulerRun(gen, noise, times, (d,), args, kwargs)

    def geometry_step(self) -> None:
        with self._ctx(self.p.shape_model_dtype):
            self.geo.step()

    def _latents(self, x):
        return x if isinstance(x, dict) else {"shape": x}

    def _occupancy_logits(self, x):
        shape = self._latents(x)["shape"]
        with self._ctx(self.p.shape_model_dtype):
            return self.p.models["ss_decoder"](
                shape.permute(0, 2, 1).contiguous().view(shape.shape[0], 8, 16, 16, 16))

    def _pose(self, x) -> dict | None:
        latents = self._latents(x)
        if "6drotation_normalized" not in latents and "quaternion" not in latents:
            return None
        with self._ctx(None):  # upstream decodes the pose outside autocast
            return self.p.pose_decoder(latents, scene_scale=self.ss_input.get("pointmap_scale"),
                                       scene_shift=self.ss_input.get("pointmap_shift"))

    @contextlib.contextmanager
    def _preview_side(self, *inputs):
        """With `preview_stream`, the block's kernels (and its host copy's event) go on the
        side stream, after everything queued so far on the worker's stream; the next step's
        kernels, queued on the worker's stream, do not wait for them. The inputs are marked as
        used there, so that their memory is not handed to the next step before the preview has
        read it."""
        if self.side is None:
            yield
            return
        torch = self.model.torch
        self.side.wait_stream(torch.cuda.current_stream(self.device))
        for t in torch.utils._pytree.tree_leaves(inputs):  # latents may be dicts of tensors
            if isinstance(t, torch.Tensor) and t.is_cuda:
                t.record_stream(self.side)
        with torch.cuda.stream(self.side):
            yield

    def geometry_preview(self) -> GeometryPreview | PendingGeometry:
        with self._preview_side(self.geo.x_hat):
            tensors = {"occupancy": self._occupancy_logits(self.geo.x_hat)[0, 0] > 0}
            pose = self._pose(self.geo.x_hat)
            if pose is not None:
                tensors["quaternion"] = pose["rotation"].reshape(-1, 4)[0].float()
            pending = PendingGeometry(HostCopy(self.model.torch, tensors))
        return pending if self.async_previews else pending.settle()

    def start_appearance(self, occupancy: np.ndarray) -> None:
        """The SLAT flow on the voxels upstream would give it: the final geometry's occupied
        voxels, pruned to the surface and, above 42,000, downsampled."""
        from sam3d_objects.pipeline.inference_utils import (downsample_sparse_structure,
                                                            prune_sparse_structure)

        torch, p = self.model.torch, self.p
        local = np.argwhere(occupancy)
        coords = torch.from_numpy(
            np.concatenate([np.zeros((len(local), 1), np.int64), local], axis=1)).int().to(self.device)
        with self._ctx(None):
            if p.downsample_ss_dist > 0:
                coords = prune_sparse_structure(coords, max_neighbor_axes_dist=p.downsample_ss_dist)
            pruned = coords[:, 1:].cpu().numpy()
            coords, factor = downsample_sparse_structure(coords)
        self.coords, self.downsample_factor = coords, float(factor)
        own = coords[:, 1:].cpu().numpy()
        self.preview_coords = own if factor == 1 else undo_downsample(own, pruned)
        gen = p.models["slat_generator"]
        self._configure(gen, p.slat_cfg_strength)
        with self._ctx(p.dtype):
            noise = self._noise((1, len(own), 8))
            args, kwargs = p.get_condition_input(
                p.condition_embedders["slat_condition_embedder"], self.slat_input,
                p.slat_condition_input_mapping)
            args = tuple(args) + (self.coords.cpu().numpy(),)
        times = gen._prepare_t(self.appearance_steps).to(self.device)
        self.app = EulerRun(gen, noise, times, (), args, kwargs)

    def appearance_step(self) -> None:
        with self._ctx(self.p.dtype):
            self.app.step()

    def _slat(self, feats):
        from sam3d_objects.model.backbone.tdfy_dit.modules import sparse as sp

        feats = feats[0].float()
        feats = feats * self.p.slat_std.to(feats.device) + self.p.slat_mean.to(feats.device)
        return sp.SparseTensor(coords=self.coords, feats=feats)

    def appearance_preview(self) -> AppearancePreview | PendingAppearance:
        fit = self.latent_colors
        tensors = {}
        with self._preview_side(self.app.x_hat, self.coords):
            if fit is not None:
                tensors["latent"] = self.app.x_hat[0].float()
            if fit is None or fit.due():
                dtype = None if self.preview_dtype == self.model.torch.float32 else self.preview_dtype
                with self._ctx(dtype):
                    gaussians = self.p.models["slat_decoder_gs"](self._slat(self.app.x_hat))[0]
                    n_vox = self.coords.shape[0]
                    # The decoder emits each voxel's Gaussians together, in the order of the
                    # input coords; they are averaged where they are, and only the colours
                    # come back.
                    tensors["colors"] = voxel_colors(
                        gaussians.get_features[:, 0, :].reshape(n_vox, -1, 3),
                        gaussians.get_opacity.reshape(n_vox, -1), on_host=False)
            pending = PendingAppearance(self.preview_coords, HostCopy(self.model.torch, tensors), fit)
        return pending if self.async_previews else pending.settle()

    def finish(self, decode_mesh: bool = True, decode_gaussians: bool = True) -> FinalAssets:
        """Decode the final sample: mesh + Gaussians (object-local) and the pose."""
        torch = self.model.torch
        mesh = gaussians = None
        with self._ctx(None):
            slat = self._slat(self.app.x)
            if decode_mesh:
                m = self.p.models["slat_decoder_mesh"](slat)[0]
                colors = torch.clamp(m.vertex_attrs[:, :3].float() * 255 + 0.5, 0, 255)
                mesh = MeshData(vertices=m.vertices.float().cpu().numpy(),
                                faces=m.faces.int().cpu().numpy(),
                                colors=colors.to(torch.uint8).cpu().numpy())
            if decode_gaussians:
                g = self.p.models["slat_decoder_gs"](slat)[0]
                opacity = g.get_opacity.float().clamp(1e-6, 1 - 1e-6)
                rot = torch.nn.functional.normalize(g.get_rotation.float(), dim=-1)
                gaussians = GaussianData(
                    xyz=g.get_xyz.float().cpu().numpy(),
                    f_dc=g._features_dc.float().reshape(-1, 3).cpu().numpy(),
                    opacity=torch.logit(opacity).reshape(-1).cpu().numpy(),
                    scale=torch.log(g.get_scaling.float()).cpu().numpy(),
                    rotation=rot.cpu().numpy())
            pose = self._pose(self.geo.x)
        out_pose = None
        if pose is not None:
            scale = pose["scale"].reshape(-1).float().cpu().numpy() * self.downsample_factor
            out_pose = Pose(rotation=tuple(float(v) for v in pose["rotation"].reshape(-1)[:4]),
                            translation=tuple(float(v) for v in pose["translation"].reshape(-1)[:3]),
                            scale=tuple(float(v) for v in np.broadcast_to(scale, (3,))))
        return FinalAssets(mesh, gaussians, out_pose, int(self.coords.shape[0]),
                           self.downsample_factor)

    def release(self) -> None:
        torch = self.model.torch
        if self.side is not None:
            # Previews may still be reading this run's tensors on the side stream (the pose's
            # scene scale, say): what the worker's stream is given next waits for them.
            torch.cuda.current_stream(self.device).wait_stream(self.side)
        self.geo = self.app = self.ss_input = self.slat_input = self.coords = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
