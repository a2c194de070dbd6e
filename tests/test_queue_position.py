"""Waiting for a GPU is visible (issue 14): a request that waits for a reconstructor slot hears
its place in line (`loading` events of stage `queue`), and a full queue is still a 503."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

from sam3d_common.errors import Busy
from deployments.reconstructor.base import Started
from photos import photo_bytes
from serve_app.local import LocalClients
from serve_app.pipeline import run_pipeline
from serve_app.schemas import GenerateRequest
from serve_app.prepare import prepare_job
from serve_app.run import start_run
from serve_app.service import GenerateService
from sam3d_common.settings import load_settings
from sam3d_common.store import ArtifactStore

FAST = {"reconstructor": {"grid_size": 32, "inflation": {"geometry_steps": 3, "appearance_steps": 2,
                                                         "min_step_s": 0.08}},
        "segmenter": {"grabcut": {"max_side": 160, "iterations": 2}},
        "timeouts": {"queue_notice_s": 0.05}}


class Slots(LocalClients):
    """The reconstructor behind `slots` places, announcing each start as the deployment does."""

    def __init__(self, settings, store, slots: int = 1, refuse: bool = False):
        super().__init__(settings, store)
        self.sem = asyncio.Semaphore(slots)
        self.refuse = refuse

    async def reconstruct(self, image, mask, options):
        if self.refuse:
            raise Busy("the queue is full")
        async with self.sem:
            yield Started()
            async for item in self.reconstructor.stream(image, mask, options):
                yield item


def service(tmp_path, **kw) -> GenerateService:
    settings = load_settings({**FAST, "store": {"url": str(tmp_path)}, "stream": kw.pop("stream", {})})
    store = ArtifactStore(str(tmp_path))
    return GenerateService(settings, Slots(settings, store, **kw), store)


async def job_of(svc: GenerateService):
    req = GenerateRequest.model_validate({"point_prompts": [{"x": 250, "y": 200, "label": 1}]})
    return await prepare_job(svc, req, image_bytes=photo_bytes("coffee"))


async def test_waiting_requests_hear_their_place_in_line(tmp_path):
    svc = service(tmp_path, slots=1)
    jobs = [await job_of(svc) for _ in range(3)]

    async def run(job):
        return [ev async for ev in run_pipeline(job, svc.clients)]

    streams = await asyncio.gather(*(run(j) for j in jobs))
    # A notice goes out when the place or the length of the line changes: one place per change.
    places = [_moves([ev["queue_position"] for ev in evs if ev["stage"] == "queue" and ev["step"] == 0])
              for evs in streams]
    # One slot: whichever is segmented first runs at once, the next waits behind it, the last
    # behind both and then moves up.
    assert sorted(places) == [[], [1], [2, 1]], places
    for evs in streams:
        took = [ev for ev in evs if ev["stage"] == "queue" and ev["step"] == 1]
        assert len(took) == 1 and took[0]["queue_position"] == 0 and "GPU took" in took[0]["message"]
        stages = [ev["stage"] for ev in evs]
        # The wait comes after segmenting and before the first frame; progress never falls.
        assert stages.index("segmenter") < stages.index("queue") < stages.index("geometry")
        assert [ev["progress"] for ev in evs] == sorted(ev["progress"] for ev in evs)
        assert evs[-1]["type"] == "complete"
    last = streams[places.index([2, 1])]
    waited = [ev for ev in last if ev.get("queue_position")][0]
    assert waited["queue_length"] == 2 and waited["message"] == "waiting for a GPU: number 2 in line"


def _moves(places: list[int]) -> list[int]:
    return [p for i, p in enumerate(places) if i == 0 or places[i - 1] != p]


async def test_headers_wait_for_the_queue_not_for_the_first_frame(tmp_path):
    """answer_at "accepted": start_run() returns once the request holds a place in line."""
    svc = service(tmp_path, slots=1)
    first, second = await job_of(svc), await job_of(svc)
    running = await start_run(svc, first)
    while (await running.events.__anext__())["type"] != "geometry":
        pass
    t0 = time.monotonic()
    waiting = await start_run(svc, second)
    held = [ev async for ev in _take_until_queue(waiting.events)]
    assert time.monotonic() - t0 < 5
    assert held[-1]["stage"] == "queue" and held[-1]["queue_position"] == 1
    assert not any(ev["type"] in ("geometry", "appearance") for ev in held)
    await running.close()
    await waiting.close()


async def _take_until_queue(events):
    async for ev in events:
        yield ev
        if ev["stage"] == "queue":
            return


async def test_a_full_queue_is_still_an_http_status(tmp_path):
    svc = service(tmp_path, refuse=True)
    with pytest.raises(Busy):
        await start_run(svc, await job_of(svc))


async def test_first_event_answers_at_once(tmp_path):
    svc = service(tmp_path, slots=1, stream={"answer_at": "first_event"})
    stream = await start_run(svc, await job_of(svc))
    first = await stream.events.__anext__()
    assert first["type"] == "loading" and first["stage"] == "request"
    await stream.close()


# --- over HTTP, under Ray Serve, with the local config's admission ----------------------------------

@pytest.mark.serve
def test_saturated_reconstructor_over_http_shows_queue_positions(ray_serve, tmp_path):
    from conftest import deploy_config, local_config, undeploy
    from serve_app.client import iter_events

    # The local config (2 reconstructor slots, headers at the first event), slower steps, so that
    # five photos sent together keep both slots busy while the others wait.
    cfg = local_config(str(tmp_path), min_step_s=0.15)
    app = cfg["applications"][0]
    app["name"], app["route_prefix"] = "queue", "/queue"
    assert app["args"]["stream"]["answer_at"] == "first_event"
    for d in app["deployments"]:  # beside the session's main app on a 2-core machine
        d.setdefault("ray_actor_options", {})["num_cpus"] = 0.01
    deploy_config(cfg)
    try:
        results: list = [None] * 5

        def one(i):
            t0 = time.monotonic()
            evs = []
            for _, ev in iter_events(ray_serve + "/queue", image=photo_bytes("coffee")):
                evs.append((time.monotonic() - t0, ev))
            results[i] = evs

        threads = [threading.Thread(target=one, args=(i,)) for i in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        assert all(r and r[-1][1]["type"] == "complete" for r in results)
        places = [[ev["queue_position"] for _, ev in r if ev.get("queue_position")] for r in results]
        print("places in line per stream:", places)
        assert sum(1 for p in places if p) >= 2, places  # 5 streams, 2 slots: some waited
        for p in places:
            assert p == sorted(p, reverse=True)  # a place in line only moves forward
        for r in results:
            # Every stage is visible as it starts: segmenting well before the reconstructor.
            stages = [ev["stage"] for _, ev in r]
            assert stages[0] == "request" and stages.index("segmenter") < stages.index("queue")
    finally:
        undeploy("queue")
