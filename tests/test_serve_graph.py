"""The local config's graph under Ray Serve, used the way a user uses it: over HTTP."""
from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
import trimesh
from PIL import Image

from photos import ROCKET_BOX, photo_array, photo_bytes, png
from serve_app.client import FrameDecoder, GenerateError, iter_events

pytestmark = pytest.mark.serve


def run(base, **kw):
    return list(iter_events(base, **kw))


@pytest.fixture(scope="module")
def coffee_stream(local_app):
    base, _ = local_app
    return run(base, image=photo_bytes("coffee"))


def test_photo_streams_frames_then_complete(coffee_stream):
    types = [ev["type"] for _, ev in coffee_stream]
    assert types[0] == "loading" and types[-1] == "complete"
    assert "error" not in types
    assert types.count("geometry") >= 2 and types.count("appearance") >= 2
    # Protocol order: every geometry frame before any appearance frame, then mesh, GLB, complete.
    last_geo = max(i for i, t in enumerate(types) if t == "geometry")
    first_app = types.index("appearance")
    assert last_geo < first_app < types.index("mesh_preview") < types.index("glb_ready")
    # Each event carries the common fields; seq only skips frames the pacer coalesced;
    # progress never goes back.
    events = [ev for _, ev in coffee_stream]
    seqs = [ev["seq"] for ev in events]
    assert seqs[0] == 0 and seqs == sorted(set(seqs))
    assert seqs[-1] + 1 - len(seqs) == events[-1]["coalesced_frames"]
    assert len({ev["request_id"] for ev in events}) == 1
    progress = [ev["progress"] for ev in events]
    assert progress == sorted(progress) and progress[-1] == 1.0
    for ev in events:
        assert {"stage", "step", "total_steps"} <= ev.keys()


def test_frames_decode_and_change(coffee_stream):
    dec = FrameDecoder()
    geo = [dec.decode(ev) for _, ev in coffee_stream if ev["type"] == "geometry"]
    counts = [len(c) for c, _ in geo]
    assert all(c > 500 for c in counts)
    assert counts[-1] > counts[0], counts  # the object swells as the solver converges
    app = [dec.decode(ev) for _, ev in coffee_stream if ev["type"] == "appearance"]
    first, last = app[0][1].astype(int), app[-1][1].astype(int)
    assert np.abs(first - last).mean() > 1.0  # colours sharpen between appearance steps
    # The coffee photo is dominated by its red cup: the colours come from it.
    mean = last.mean(axis=0)
    assert mean[0] > mean[2] + 20, mean


def test_last_step_of_each_stage_is_sent_at_any_cadence(local_app):
    base, _ = local_app
    events = [ev for _, ev in run(base, image=photo_bytes("coffee"),
                                  stream_geometry_every=5, stream_colors_every=3)]
    geo = [ev["step"] for ev in events if ev["type"] == "geometry"]
    app = [ev["step"] for ev in events if ev["type"] == "appearance"]
    total_g = next(ev["total_steps"] for ev in events if ev["type"] == "geometry")
    total_a = next(ev["total_steps"] for ev in events if ev["type"] == "appearance")
    assert geo == [s for s in range(1, total_g + 1) if s % 5 == 0 or s == total_g]
    assert app == [s for s in range(1, total_a + 1) if s % 3 == 0 or s == total_a]


def test_glb_downloads_with_faces_and_colours(local_app, coffee_stream):
    base, _ = local_app
    complete = coffee_stream[-1][1]
    r = httpx.get(base + complete["model_glb_url"])
    assert r.status_code == 200 and r.headers["content-type"] == "model/gltf-binary"
    scene = trimesh.load(io.BytesIO(r.content), file_type="glb")
    mesh = next(iter(scene.geometry.values()))
    assert len(mesh.faces) > 1000
    colors = mesh.visual.vertex_colors
    assert colors.shape == (len(mesh.vertices), 4) and colors[:, :3].std() > 5
    ply = httpx.get(base + complete["gaussian_splat_url"])
    assert ply.status_code == 200 and ply.content.startswith(b"ply\nformat binary_little_endian")
    mask = httpx.get(base + complete["mask_url"])
    assert Image.open(io.BytesIO(mask.content)).size == (600, 400)


def test_tall_object_gives_tall_mesh(local_app):
    base, _ = local_app
    events = run(base, image=photo_bytes("rocket"), box_prompts=[ROCKET_BOX])
    complete = events[-1][1]
    assert complete["type"] == "complete", complete
    mask = np.asarray(Image.open(io.BytesIO(httpx.get(base + complete["mask_url"]).content))) > 0
    ys, xs = np.nonzero(mask)
    mask_aspect = (ys.max() - ys.min() + 1) / (xs.max() - xs.min() + 1)
    assert mask_aspect > 2.5  # the rocket is tall and thin
    scene = trimesh.load(io.BytesIO(httpx.get(base + complete["model_glb_url"]).content), file_type="glb")
    ext = next(iter(scene.geometry.values())).extents  # x, y (up), z
    mesh_aspect = ext[1] / ext[0]
    assert mesh_aspect == pytest.approx(mask_aspect, rel=0.25)


def test_frames_are_spread_over_time_not_one_burst(coffee_stream):
    frames = [(arrival, ev["t"]) for arrival, ev in coffee_stream if ev["type"] in ("geometry", "appearance")]
    arrival_span = frames[-1][0] - frames[0][0]
    server_span = frames[-1][1] - frames[0][1]
    assert server_span > 0.5
    # Frames arrive as the server makes them: the client-side spread follows the server's.
    assert arrival_span > 0.6 * server_span, (arrival_span, server_span)
    # And the first frame arrives well before the stream completes.
    done = coffee_stream[-1][0]
    assert done - frames[0][0] > 0.5 * server_span


@pytest.mark.parametrize("kwargs,status,needle", [
    (dict(image=b"this is not an image"), 422, "not a readable image"),
    (dict(image=photo_bytes("coffee"), stream_geometry_every=11), 422, "stream_geometry_every"),
    (dict(image=photo_bytes("coffee"), stream_colors_every=0), 422, "stream_colors_every"),
    (dict(image=photo_bytes("coffee"), masks=[png(np.zeros((400, 600), np.uint8))]), 422, "empty"),
    (dict(image=photo_bytes("coffee"), masks=[png(np.full((100, 100), 255, np.uint8))]), 422, "match the image size"),
    (dict(prompt="a red vintage car"), 501, "image generator"),
    (dict(), 422, "prompt"),
])
def test_bad_input_gets_4xx_with_reason(local_app, kwargs, status, needle):
    base, _ = local_app
    with pytest.raises(GenerateError) as info:
        run(base, **kwargs)
    assert info.value.status == status
    assert needle in info.value.message
    assert "Traceback" not in info.value.message


def test_server_keeps_serving_after_bad_input(local_app):
    base, _ = local_app
    with pytest.raises(GenerateError):
        run(base, image=b"\x89PNG garbage")
    assert httpx.get(base + "/healthz").json()["status"] == "ok"
    events = run(base, image=photo_bytes("astronaut"), stream_geometry_every=4, stream_colors_every=4)
    assert events[-1][1]["type"] == "complete"


def test_artifact_paths_are_checked(local_app):
    base, _ = local_app
    assert httpx.get(base + "/v1/artifacts/..%2f..%2fetc/passwd").status_code in (400, 404)
    assert httpx.get(base + "/v1/artifacts/" + "0" * 32 + "/..%2fsecret.glb").status_code in (400, 404)
    r = httpx.get(base + "/v1/artifacts/" + "a" * 31 + "/model.glb")
    assert r.status_code == 400 and "artifact id" in r.json()["error"]["message"]
    assert httpx.get(base + "/v1/artifacts/" + "0" * 32 + "/model.glb").status_code == 404


def test_openapi_docs_and_protocol(local_app):
    base, _ = local_app
    assert httpx.get(base + "/docs").status_code == 200
    spec = httpx.get(base + "/openapi.json").json()
    assert "/v1/generate" in spec["paths"]
    proto = httpx.get(base + "/v1/protocol").json()
    assert proto["version"] >= 1 and "geometry" in proto["event_types"]


async def test_python_deployment_handle_api(local_app):
    """The same pipeline through a DeploymentHandle, as documented in the README."""
    from ray import serve

    handle = serve.get_app_handle("sam3d")
    gen = handle.options(stream=True).generate.remote(
        {"stream_geometry_every": 4, "stream_colors_every": 4}, image=photo_array("coffee"))
    events = [ev async for ev in gen]
    types = [ev["type"] for ev in events]
    assert types[-1] == "complete" and "geometry" in types and "appearance" in types
    coords, _ = FrameDecoder().decode(next(ev for ev in events if ev["type"] == "geometry"))
    assert len(coords) > 500


def test_cli_client_shows_progress_and_saves_the_glb(local_app, tmp_path, capsys):
    from photos import DATA
    from serve_app.client import main

    base, _ = local_app
    out = tmp_path / "rocket.glb"
    code = main(["--url", base, "--image", str(DATA / "rocket.jpg"), "--box", "285,110,345,415",
                 "--geometry-every", "3", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    for stage in ("segmenter", "geometry", "appearance", "mesh_baker"):
        assert stage in printed
    assert "100.0%" in printed and "voxels" in printed
    mesh = next(iter(trimesh.load(out, file_type="glb").geometry.values()))
    assert len(mesh.faces) > 100
    assert main(["--url", base, "--prompt", "a red car", "--out", str(tmp_path / "x.glb")]) == 2
    assert "501" in capsys.readouterr().err
