"""SAM 3D Objects backend on CPU: startup checks for real, the streaming logic over a fake model.

The fake stands in for sam3d_upstream.UpstreamRun (which needs CUDA and the gated weights and
is not run here). Its "latents" are deterministic: geometry previews are a box whose size grows
with the step, appearance previews colour each voxel from its position and the step. Nothing
here says anything about SAM 3D Objects' output quality.
"""
from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import ndimage

from sam3d_common.errors import BadInput, ModelUnavailable, StageError
from deployments.reconstructor.base import (GaussianData, MeshData, Pose, ReconstructOptions,
                                           Reconstruction, StepFrame)
from deployments.reconstructor.sam3d import (CHECKPOINT_FILES, Sam3dReconstructor,
                                             required_files, startup_problems)
from deployments.reconstructor.sam3d_grid import (color_order, map_to_view, quaternion_to_matrix,
                                                  surface, view_from_local, voxel_colors)
from deployments.reconstructor.sam3d_upstream import unsafe_targets
from sam3d_common.settings import Sam3dSettings

M = 64  # the model's local grid


class FakeModel:
    """Records every call, in order, with the thread it ran on."""

    def __init__(self, step_s: float = 0.0, rotation=None, empty: bool = False,
                 fail_at: str | None = None):
        self.step_s, self.rotation, self.empty, self.fail_at = step_s, rotation, empty, fail_at
        self.calls: list[str] = []
        self.threads: set[str] = set()
        self.begun: list[tuple] = []

    def begin(self, image, mask, seed, geometry_steps, appearance_steps, fast=False):
        self.begun.append((image.shape, int(mask.sum()), seed, geometry_steps, appearance_steps))
        self.fast = fast
        return FakeRun(self, geometry_steps, appearance_steps)


class FakeRun:
    def __init__(self, model: FakeModel, g: int, a: int):
        self.model, self.g, self.a = model, g, a
        self.geo_done = self.app_done = 0
        self.occ = None

    def _log(self, name):
        self.model.calls.append(name)
        self.model.threads.add(threading.current_thread().name)
        if self.model.fail_at == name:
            raise RuntimeError(f"fake failure in {name}")

    def prepare(self):
        self._log("prepare")

    def geometry_step(self):
        self._log("geometry_step")
        time.sleep(self.model.step_s)
        self.geo_done += 1
        self.model.calls.append("geometry_step_end")

    def geometry_preview(self):
        self._log("geometry_preview")
        occ = np.zeros((M,) * 3, bool)
        if not self.model.empty:
            h = 4 + 20 * self.geo_done // self.g  # grows from a small to a large box
            occ[32 - h:32 + h, 32 - h // 2:32 + h // 2, 32 - h // 4:32 + h // 4] = True
        return SimpleNamespace(occupancy=occ, rotation=self.model.rotation)

    def start_appearance(self, occupancy):
        self._log("start_appearance")
        self.occ = occupancy

    def appearance_step(self):
        self._log("appearance_step")
        time.sleep(self.model.step_s)
        self.app_done += 1

    def appearance_preview(self):
        self._log("appearance_preview")
        coords = np.argwhere(surface(self.occ))
        colors = np.zeros((len(coords), 3), np.uint8)
        colors[:, 0] = 255 * self.app_done // self.a  # red rises to 255 at the last step
        colors[:, 1] = coords[:, 1] * 4  # green follows local y
        return SimpleNamespace(coords=coords, colors=colors)

    def finish(self):
        """A decoded tetrahedron, two Gaussians and a pose, as the real run returns them."""
        self._log("finish")
        mesh = MeshData(vertices=np.array([[0, 0, 0], [0.2, 0, 0], [0, 0.2, 0], [0, 0, 0.2]], np.float32),
                        faces=np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]], np.int32),
                        colors=np.full((4, 3), 200, np.uint8))
        gaussians = GaussianData(xyz=np.zeros((2, 3), np.float32), f_dc=np.zeros((2, 3), np.float32),
                                 opacity=np.zeros(2, np.float32), scale=np.full((2, 3), -4, np.float32),
                                 rotation=np.array([[1, 0, 0, 0]] * 2, np.float32))
        return SimpleNamespace(mesh=mesh, gaussians=gaussians,
                               pose=Pose((1.0, 0.0, 0.0, 0.0), (0.0, 0.0, 2.0), (1.0, 1.0, 1.0)))

    def release(self):
        self._log("release")


def photo(h=48, w=64):
    image = np.full((h, w, 3), 200, np.uint8)
    mask = np.zeros((h, w), bool)
    mask[10:40, 20:50] = True
    return image, mask


async def collect(backend, options=ReconstructOptions()):
    image, mask = photo()
    return [item async for item in backend.stream(image, mask, options)]


# ---------------------------------------------------------------- startup checks (real code)

def test_missing_folder_names_path_hub_id_gating_and_download(tmp_path):
    folder = tmp_path / "nope" / "checkpoints"
    with pytest.raises(ModelUnavailable) as err:
        Sam3dReconstructor(Sam3dSettings(checkpoint_dir=str(folder)))
    msg = str(err.value)
    assert f"reconstructor.sam3d.checkpoint_dir '{folder}' does not exist" in msg
    assert "facebook/sam-3d-objects" in msg and "gated" in msg
    assert "hf download facebook/sam-3d-objects" in msg and "HF_TOKEN" in msg


def test_missing_files_are_named_exactly(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    present = {"pipeline.yaml", "ss_generator.yaml", "ss_generator.ckpt", "ss_decoder.yaml"}
    for name in present:
        (folder / name).write_text("")  # an empty pipeline.yaml: the default file list applies
    _, problems = startup_problems(Sam3dSettings(checkpoint_dir=str(folder)))
    (files_line,) = [p for p in problems if "checkpoint files missing" in p]
    listed = files_line.split(": ", 1)[1].split(", ")
    assert listed == [f for f in CHECKPOINT_FILES if f not in present]
    assert str(folder) in files_line


def test_files_named_by_pipeline_yaml_are_checked(tmp_path):
    (tmp_path / "pipeline.yaml").write_text(
        "ss_generator_config_path: gen.yaml\nss_generator_ckpt_path: weights/gen.ckpt\n"
        "pad_size: 1.0\ndtype: float16\n")
    (tmp_path / "gen.yaml").write_text("")
    assert required_files(tmp_path) == ["pipeline.yaml", "gen.yaml", "weights/gen.ckpt"]
    _, problems = startup_problems(Sam3dSettings(checkpoint_dir=str(tmp_path)))
    assert any(p.endswith(": weights/gen.ckpt") for p in problems)


def test_complete_folder_still_reports_package_and_cuda_here(tmp_path, monkeypatch):
    from deployments.reconstructor import sam3d_upstream

    for name in CHECKPOINT_FILES:
        (tmp_path / name).write_text("")
    monkeypatch.setattr(sam3d_upstream, "package_problem", lambda: "no package (test)")
    monkeypatch.setattr(sam3d_upstream, "cuda_problem", lambda: "no CUDA (test)")
    with pytest.raises(ModelUnavailable) as err:
        Sam3dReconstructor(Sam3dSettings(checkpoint_dir=str(tmp_path)))
    msg = str(err.value)
    assert "no package (test)" in msg and "no CUDA (test)" in msg
    assert "checkpoint" not in msg.split("start:")[1]  # the files are all there
    assert "hf download" not in msg


def test_real_environment_checks_on_this_machine():
    """This machine has neither the package nor CUDA; the real probes must say so."""
    import torch

    from deployments.reconstructor import sam3d_upstream

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert "no CUDA device" in sam3d_upstream.cuda_problem()
    if sam3d_upstream.package_problem() is not None:
        assert "sam3d_objects" in sam3d_upstream.package_problem()


def test_hub_cache_is_the_default_place(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    folder, problems = startup_problems(Sam3dSettings())
    assert str(folder).startswith(str(tmp_path / "models--facebook--sam-3d-objects"))
    assert "the Hugging Face cache" in problems[0] and "checkpoint_dir is not set" in problems[0]
    snap = tmp_path / "models--facebook--sam-3d-objects" / "snapshots" / "abc123" / "checkpoints"
    snap.mkdir(parents=True)
    (tmp_path / "models--facebook--sam-3d-objects" / "refs").mkdir()
    (tmp_path / "models--facebook--sam-3d-objects" / "refs" / "main").write_text("abc123\n")
    for name in CHECKPOINT_FILES:
        (snap / name).write_text("")
    folder, problems = startup_problems(Sam3dSettings())
    assert folder == snap
    assert not any("checkpoint" in p for p in problems)


def test_pipeline_yaml_targets_are_allow_listed():
    config = {"_target_": "sam3d_objects.pipeline.X",
              "depth_model": {"_target_": "moge.model.v1.MoGeModel.from_pretrained"},
              "ss_preprocessor": {"img_transform": {"transforms": [
                  {"_target_": "torchvision.transforms.Resize"},
                  {"_target_": "os.system", "_partial_": True}]}},
              "other": {"_target_": "builtins.eval"}}
    assert unsafe_targets(config) == [
        "ss_preprocessor.img_transform.transforms[1]._target_: os.system",
        "other._target_: builtins.eval"]


def test_reference_pipeline_yaml_passes_the_allow_list():
    import pathlib

    import yaml

    ref = pathlib.Path(__file__).resolve().parents[2] / "shared/reference/sam3d-objects-configs"
    if not (ref / "pipeline.yaml").is_file():
        pytest.skip("shared/reference is not beside this checkout")
    for name in ("pipeline.yaml", "ss_generator.yaml", "slat_decoder_gs.yaml"):
        assert unsafe_targets(yaml.safe_load((ref / name).read_text())) == []
    names = required_files(ref)
    assert set(names) == set(CHECKPOINT_FILES)


# ---------------------------------------------------------------- streaming over the fake

async def test_cadence_and_final_reconstruction():
    model = FakeModel()
    backend = Sam3dReconstructor(Sam3dSettings(geometry_steps=8, appearance_steps=6),
                                 grid_size=32, model=model)
    items = await collect(backend, ReconstructOptions(seed=5, geometry_every=3, colors_every=4))
    frames = [i for i in items if isinstance(i, StepFrame)]
    assert [(f.stage, f.step, f.total_steps) for f in frames] == [
        ("geometry", 3, 8), ("geometry", 6, 8), ("geometry", 8, 8),
        ("appearance", 4, 6), ("appearance", 6, 6)]
    assert isinstance(items[-1], Reconstruction) and len(items) == len(frames) + 1
    # Steps all run; previews (decoder passes) only where a frame is sent.
    assert model.calls.count("geometry_step") == 8 and model.calls.count("geometry_preview") == 3
    assert model.calls.count("appearance_step") == 6 and model.calls.count("appearance_preview") == 2
    assert model.calls[0] == "prepare" and model.calls[-2:] == ["finish", "release"]
    assert model.calls.count("release") == 1
    assert model.begun == [((48, 64, 3), 900, 5, 8, 6)]
    assert len(model.threads) == 1 and next(iter(model.threads)).startswith("sam3d-gpu")

    geo = [f.frame for f in frames if f.stage == "geometry"]
    assert all(f.grid_size == 32 and f.colors is None for f in geo)
    assert geo[0].count < geo[1].count < geo[2].count  # the fake's box grows
    app = [f.frame for f in frames if f.stage == "appearance"]
    assert all(f.colors is not None and f.count == geo[-1].count for f in app)
    assert app[0].colors[:, 0].max() == 255 * 4 // 6 and app[1].colors[:, 0].min() == 255

    recon = items[-1]
    assert recon.backend == "sam3d"
    assert len(recon.mesh.faces) == 4 and len(recon.gaussians.xyz) == 2
    assert recon.pose.translation == (0.0, 0.0, 2.0)
    assert recon.occupancy.shape == (32, 32, 32) and recon.occupancy.dtype == bool
    assert recon.colors.shape == (32, 32, 32, 3) and recon.colors.dtype == np.uint8
    assert (recon.colors[recon.occupancy][:, 0] == 255).all()  # every occupied voxel coloured
    assert (recon.colors[~recon.occupancy] == 0).all()


async def test_every_step_at_cadence_one_and_grid_64():
    model = FakeModel()
    backend = Sam3dReconstructor(Sam3dSettings(geometry_steps=3, appearance_steps=2),
                                 grid_size=64, model=model)
    items = await collect(backend)
    assert [(i.stage, i.step) for i in items[:-1]] == [
        ("geometry", 1), ("geometry", 2), ("geometry", 3), ("appearance", 1), ("appearance", 2)]
    recon = items[-1]
    assert recon.occupancy.shape == (64, 64, 64)
    # Identity pose and an object that fits: the final local box maps 1:1 onto the view grid.
    final_local = FakeRun(FakeModel(), 3, 2)
    final_local.geo_done = 3
    local_occ = final_local.geometry_preview().occupancy
    assert recon.occupancy.sum() == local_occ.sum()
    assert (np.ptp(np.argwhere(recon.occupancy), axis=0) == np.ptp(np.argwhere(local_occ), axis=0)).all()


async def test_cancel_after_first_frame_stops_at_the_step_boundary():
    model = FakeModel(step_s=0.05)
    backend = Sam3dReconstructor(Sam3dSettings(geometry_steps=20, appearance_steps=20),
                                 model=model)
    first = asyncio.Event()
    image, mask = photo()
    seen = []

    async def consume():
        async for item in backend.stream(image, mask, ReconstructOptions()):
            seen.append(model.calls.count("geometry_step"))
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.3)  # six step lengths: any runaway step would show up here
    steps = model.calls.count("geometry_step")
    steps_at_first_frame = seen[0]
    assert len(seen) == 1 and seen[0] <= 2  # step 2 is queued before frame 1 is sent
    assert steps <= steps_at_first_frame + 1, "at most the step in flight runs after cancel"
    assert model.calls.count("release") == 1
    release = model.calls.index("release")
    before = model.calls[:release]
    assert before.count("geometry_step") == before.count("geometry_step_end"), \
        "release waits for the running step to finish"
    assert "geometry_step" not in model.calls[release:]
    assert "start_appearance" not in model.calls


async def test_closing_the_stream_between_frames_releases():
    model = FakeModel()
    backend = Sam3dReconstructor(Sam3dSettings(geometry_steps=10, appearance_steps=10),
                                 model=model)
    image, mask = photo()
    agen = backend.stream(image, mask, ReconstructOptions())
    first = await agen.__anext__()
    assert first.stage == "geometry" and first.step == 1
    await agen.aclose()
    assert model.calls.count("geometry_step") <= 2  # frame 1 was built while step 2 ran
    assert model.calls[-1] == "release"


async def test_errors_release_and_empty_geometry_is_an_error():
    model = FakeModel(empty=True)
    backend = Sam3dReconstructor(Sam3dSettings(geometry_steps=2, appearance_steps=2), model=model)
    with pytest.raises(StageError, match="no voxels"):
        await collect(backend)
    assert model.calls[-1] == "release" and "start_appearance" not in model.calls

    model = FakeModel(fail_at="appearance_step")
    backend = Sam3dReconstructor(Sam3dSettings(geometry_steps=2, appearance_steps=2), model=model)
    with pytest.raises(RuntimeError, match="fake failure"):
        await collect(backend)
    assert model.calls[-1] == "release"


async def test_bad_masks_are_refused_before_any_model_work():
    model = FakeModel()
    backend = Sam3dReconstructor(Sam3dSettings(), model=model)
    image, mask = photo()
    with pytest.raises(BadInput, match="empty"):
        [i async for i in backend.stream(image, np.zeros_like(mask), ReconstructOptions())]
    with pytest.raises(BadInput, match="do not match"):
        [i async for i in backend.stream(image, mask[:10], ReconstructOptions())]
    assert model.calls == [] and model.begun == []


def test_factory_with_missing_weights_is_model_unavailable(tmp_path):
    from deployments.reconstructor import make_backend
    from sam3d_common.settings import ReconstructorSettings

    with pytest.raises(ModelUnavailable, match="checkpoint folder not found"):
        make_backend(ReconstructorSettings(
            backend="sam3d", sam3d=Sam3dSettings(checkpoint_dir=str(tmp_path / "x"))))


# ---------------------------------------------------------------- geometry helpers

def _one_voxel(i, j, k, m=M):
    occ = np.zeros((m,) * 3, bool)
    occ[i, j, k] = True
    return occ


def _only_voxel(mapping):
    idx = np.argwhere(mapping.occupancy)
    return idx.mean(axis=0)


def test_axes_identity_pose_mirrors_x_and_z():
    """Identity pose: local = PyTorch3D camera (x left, y up, z away) → view (x right, y up, z to us)."""
    occ = np.zeros((M,) * 3, bool)
    occ[24:40, 24:40, 24:40] = True  # a centred cube
    occ[40:56, 30:34, 30:34] = True  # an arm towards local +x
    occ[30:34, 40:60, 30:34] = True  # a taller arm towards local +y
    occ[30:34, 30:34, 40:48] = True  # a short arm towards local +z
    mapping = map_to_view(occ, view_from_local(None), M)
    view = mapping.occupancy
    assert view.sum() == occ.sum()  # the object fits: same scale, nothing lost
    # The object's centre is the bbox centre, so locate arms relative to the cube.
    cube_centre = np.argwhere(view).mean(axis=0)
    xs, ys, zs = (np.argwhere(view)[:, a] for a in range(3))
    assert xs.min() < cube_centre[0] - 10  # +x arm went to -x
    assert ys.max() > cube_centre[1] + 10  # +y arm stays up
    assert zs.min() < cube_centre[2] - 5  # +z (away from the camera) went to -z (away)


def test_pose_rotation_is_applied_as_a_row_vector_transform():
    # 90° about y; upstream applies p @ R, i.e. the column rotation R.T.
    half = np.sqrt(0.5)
    r = quaternion_to_matrix([half, 0.0, half, 0.0])
    assert np.allclose(r, [[0, 0, 1], [0, 1, 0], [-1, 0, 0]])
    p_local = np.array([1.0, 0.0, 0.0])
    assert np.allclose(p_local @ r, [0, 0, 1])  # local +x → camera +z (away)
    assert np.allclose(view_from_local(r) @ p_local, [0, 0, -1])  # → view -z
    occ = np.zeros((M,) * 3, bool)
    occ[20:44, 30:34, 30:34] = True  # a bar along local x
    view = map_to_view(occ, view_from_local(r), M).occupancy
    extent = np.ptp(np.argwhere(view), axis=0)
    assert extent[2] == 23 and extent[0] == 3  # now a bar along z


def test_oblique_rotation_has_no_holes_and_large_objects_shrink_to_fit():
    occ = np.ones((M,) * 3, bool)  # fills the local cube: rotated 45°, it cannot fit unscaled
    c, s = np.cos(np.pi / 8), np.sin(np.pi / 8)
    rot = view_from_local(quaternion_to_matrix([c, 0, s, 0]))  # 45° about y
    view = map_to_view(occ, rot, 32).occupancy
    idx = np.argwhere(view)
    assert idx[:, 0].min() == 0 and idx[:, 0].max() == 31  # shrunk to span the grid
    # A slab through the middle is a filled diamond: no holes inside its outline.
    from scipy import ndimage

    mid = view[:, 16, :]
    assert (ndimage.binary_fill_holes(mid) == mid).all()
    assert mid.sum() > 0.45 * 32 * 32


def test_resampling_to_another_grid_size_and_empty_input():
    occ = _one_voxel(0, 0, 0, m=4)
    occ[3, 3, 3] = True
    m8 = map_to_view(occ, np.eye(3), 8)
    assert m8.occupancy.sum() == 2 * 8  # each local voxel spans 2x2x2 view cells
    assert not map_to_view(np.zeros((4, 4, 4), bool), np.eye(3), 8).occupancy.any()
    values = np.arange(64).reshape(4, 4, 4)
    sampled = m8.sample(values, fill=-1)
    assert set(np.unique(sampled)) == {-1, 0, 63}


def test_surface_matches_the_26_neighbour_rule():
    occ = np.zeros((8, 8, 8), bool)
    occ[1:6, 1:6, 1:6] = True
    surf = surface(occ)
    assert surf.sum() == 5 ** 3 - 3 ** 3
    full = np.ones((4, 4, 4), bool)
    assert surface(full).sum() == 4 ** 3 - 2 ** 3  # outside the grid counts as empty


def test_voxel_colors_from_gaussians():
    c0 = 0.28209479177387814
    dc = np.zeros((2, 3, 3))
    dc[0] = (1.0 - 0.5) / c0  # all three Gaussians white
    dc[1, 0] = (np.array([1.0, 0.0, 0.0]) - 0.5) / c0  # red, opaque
    dc[1, 1] = (np.array([0.0, 0.0, 1.0]) - 0.5) / c0  # blue, transparent
    dc[1, 2] = (np.array([0.0, 0.0, 1.0]) - 0.5) / c0
    opacity = np.array([[0.5, 0.5, 0.5], [1.0, 0.0, 0.0]])
    out = voxel_colors(dc, opacity)
    assert out.dtype == np.uint8
    assert out[0].tolist() == [255, 255, 255] and out[1].tolist() == [255, 0, 0]
    # all transparent: plain mean
    assert voxel_colors(dc[1:], np.zeros((1, 3)))[0].tolist() == [85, 0, 170]
    # torch tensors (the GPU path, reduced where they are) give the same colours
    import torch

    rng = np.random.default_rng(0)
    dc, opacity = rng.normal(0, 1.5, (500, 32, 3)), rng.uniform(0, 1, (500, 32)) ** 3
    opacity[:50] = 0.0
    want = voxel_colors(dc, opacity)
    got = voxel_colors(torch.from_numpy(dc).half(), torch.from_numpy(opacity).float())
    assert np.array_equal(voxel_colors(torch.from_numpy(dc), torch.from_numpy(opacity)), want)
    assert got.dtype == np.uint8 and np.abs(got.astype(int) - want).max() <= 1  # fp16 input


def fill_colors(occ: np.ndarray, coords: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """The reference for color_order (how appearance frames were coloured before it): an
    (m, m, m, 3) uint8 volume with `colors` at `coords` and every other cell the colour of the
    nearest coloured voxel."""
    m = occ.shape[0]
    vol = np.zeros((m, m, m, 3), np.uint8)
    if len(coords) == 0:
        return vol
    have = np.zeros((m, m, m), bool)
    c = np.asarray(coords, dtype=np.int64)
    have[c[:, 0], c[:, 1], c[:, 2]] = True
    vol[c[:, 0], c[:, 1], c[:, 2]] = colors
    _, near = ndimage.distance_transform_edt(~have, return_indices=True)
    return vol[near[0], near[1], near[2]]


def test_fill_colors_reaches_interior_voxels():
    occ = np.zeros((6, 6, 6), bool)
    occ[1:5, 1:5, 1:5] = True
    coords = np.argwhere(surface(occ))
    colors = np.tile(np.array([[10, 20, 30]], np.uint8), (len(coords), 1))
    vol = fill_colors(occ, coords, colors)
    assert (vol[occ] == [10, 20, 30]).all()
    assert fill_colors(occ, np.zeros((0, 3), int), np.zeros((0, 3), np.uint8)).sum() == 0


def test_color_order_gives_what_fill_colors_then_sample_give():
    """The per-run gather the appearance frames use equals the per-frame nearest-colour fill
    followed by the view resampling, for any colours (random ones, rotated view, repeated coords)."""
    rng = np.random.default_rng(3)
    c = (np.arange(24) + 0.5) / 24 - 0.5
    x, y, z = np.meshgrid(c, c, c, indexing="ij")
    occ = (x / 0.4) ** 2 + (y / 0.3) ** 2 + (z / 0.35) ** 2 < 1
    coords = np.argwhere(surface(occ))
    coords = np.concatenate([coords, coords[:5]])  # a repeated voxel keeps its last colour
    mapping = map_to_view(occ, view_from_local(quaternion_to_matrix([0.9, 0.2, -0.3, 0.1])), 20)
    rows = color_order(24, coords, mapping.source)
    for _ in range(3):
        colors = rng.integers(0, 256, (len(coords), 3), dtype=np.uint8)
        want = mapping.sample(fill_colors(occ, coords, colors))
        got = np.zeros_like(want)
        got[mapping.source >= 0] = colors[rows]
        assert np.array_equal(got, want)


# ---------------------------------------------------------------- against upstream, where installed

def _import_upstream_generators():
    import sys

    from deployments.reconstructor import sam3d_upstream

    root = sam3d_upstream.vendored_root()
    if root is not None and str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        shortcut = pytest.importorskip("sam3d_objects.model.backbone.generator.shortcut.model",
                                       reason="upstream sam3d_objects is not installed")
        flow = pytest.importorskip("sam3d_objects.model.backbone.generator.flow_matching.model",
                                   reason="upstream sam3d_objects is not installed")
    except ImportError as exc:  # installed, but a dependency is missing
        pytest.skip(f"upstream sam3d_objects does not import here: {exc}")
    return shortcut.ShortCut, flow.FlowMatching


@pytest.mark.parametrize("no_shortcut", [True, False])
def test_euler_run_matches_upstream_generate_iter(no_shortcut, monkeypatch):
    """Our step-by-step loop reproduces upstream's own sampler, given the same noise."""
    monkeypatch.setenv("LIDRA_SKIP_INIT", "true")
    ShortCut, FlowMatching = _import_upstream_generators()
    import torch

    from deployments.reconstructor.sam3d_run import EulerRun

    g = torch.Generator().manual_seed(0)
    w = {"shape": torch.randn(8, 8, generator=g) * 0.3, "scale": torch.randn(3, 3, generator=g) * 0.3}
    cond = torch.randn(1, 5, 4, generator=g)

    def dynamics(x, t, c, d=None):
        dd = 0.0 if d is None else float(d)
        return {k: torch.tanh(x[k] @ w[k] + t / 1000 + dd / 1000 + c.mean()) for k in x}

    gen = ShortCut(reverse_fn=dynamics, inference_steps=6, rescale_t=3, no_shortcut=no_shortcut)
    noise = {"shape": torch.randn(1, 64, 8, generator=g), "scale": torch.randn(1, 1, 3, generator=g)}
    gen._generate_noise = lambda shape, device: {k: v.clone() for k, v in noise.items()}
    for _, ref, _ in gen.generate_iter({"shape": (1, 64, 8), "scale": (1, 1, 3)}, "cpu", cond):
        pass
    times, d = gen._prepare_t_and_d(6)
    run = EulerRun(gen, {k: v.clone() for k, v in noise.items()}, times, (d,), (cond,), {})
    for _ in range(run.total):
        run.step()
    for k in ref:
        assert torch.allclose(run.x[k], ref[k], atol=1e-6)
        assert torch.allclose(run.x_hat[k], run.x[k], atol=1e-6)  # at t=1 the preview is the sample

    flow = FlowMatching(reverse_fn=lambda x, t, c: torch.tanh(x * 0.5 + t / 1000 + c.mean()),
                        inference_steps=4, rescale_t=3)
    x0 = torch.randn(1, 50, 8, generator=g)
    flow._generate_noise = lambda shape, device: x0.clone()
    for _, ref_x, _ in flow.generate_iter((1, 50, 8), "cpu", cond):
        pass
    run = EulerRun(flow, x0.clone(), flow._prepare_t(4), (), (cond,), {})
    for _ in range(run.total):
        run.step()
    assert torch.allclose(run.x, ref_x, atol=1e-6)


async def test_frames_are_built_off_the_gpu_thread_while_the_next_step_runs():
    model = FakeModel(step_s=0.02)
    backend = Sam3dReconstructor(Sam3dSettings(geometry_steps=4, appearance_steps=3), model=model)
    built = []
    real = backend._geometry_frame

    def geometry_frame(preview):
        built.append((threading.current_thread().name, model.calls.count("geometry_step")))
        return real(preview)

    backend._geometry_frame = geometry_frame
    items = await collect(backend)
    assert [(i.stage, i.step) for i in items[:-1]] == [
        ("geometry", 1), ("geometry", 2), ("geometry", 3), ("geometry", 4),
        ("appearance", 1), ("appearance", 2), ("appearance", 3)]
    assert len(built) == 4 and all(name.startswith("sam3d-frames") for name, _ in built)
