"""Command-line client: post a photo or a prompt, show progress per stage, save the GLB.

    python -m serve_app.client --image photo.jpg --out model.glb
    python -m serve_app.client --image rocket.jpg --box 285,110,345,415
    python -m serve_app.client --prompt "a red vintage car"       (needs an image generator)
    python -m serve_app.client --image photo.jpg --job            (a job: survives dropped links)
    python -m serve_app.client --image photo.jpg --detach         (print the job id and exit)
    python -m serve_app.client --attach JOB_ID --out model.glb    (follow a job from the start)
"""
from __future__ import annotations

import argparse
import functools
import json
import ssl
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np

from serve_app.protocol import FRAME_EVENTS, PROTOCOL_VERSION, SSEParser, StreamDecoder, full_codec


class GenerateError(RuntimeError):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


@functools.cache
def _tls() -> ssl.SSLContext:
    """One TLS context per process: building one loads the CA bundle (40-100 ms on a busy
    2-core machine), which httpx otherwise does for every Client, i.e. every call below."""
    return httpx.create_ssl_context()


def new_client(timeout: float) -> httpx.Client:
    """An httpx.Client for these calls (the process's TLS context, connect timeout 10 s)."""
    return httpx.Client(timeout=httpx.Timeout(timeout, connect=10.0), verify=_tls())


def _form(fields: dict) -> dict:
    out = {}
    for k, v in fields.items():
        if v is None:
            continue
        out[k] = json.dumps(v) if isinstance(v, (list, dict)) else str(v)
    return out


def iter_events(base_url: str, *, image: bytes | None = None, masks: list[bytes] | None = None,
                timeout: float = 300.0, client: httpx.Client | None = None,
                **fields) -> Iterator[tuple[float, dict]]:
    """Yield (arrival time on time.monotonic, event) as the server streams them.

    With `image`, sends multipart; otherwise JSON. Raises GenerateError for a 4xx/5xx answer.
    """
    own = client is None
    client = client or new_client(timeout)
    if image is not None:
        files = [("image", ("image", image, "application/octet-stream"))]
        files += [("mask", (f"mask{i}.png", m, "image/png")) for i, m in enumerate(masks or [])]
        req = client.build_request("POST", f"{base_url}/v1/generate", data=_form(fields), files=files)
    else:
        req = client.build_request("POST", f"{base_url}/v1/generate",
                                   json={k: v for k, v in fields.items() if v is not None})
    try:
        resp = client.send(req, stream=True)
        try:
            if resp.status_code != 200:
                resp.read()
                try:
                    err = resp.json()["error"]
                except Exception:  # noqa: BLE001
                    err = {"code": "http", "message": resp.text[:500]}
                raise GenerateError(resp.status_code, err.get("code", ""), err.get("message", ""))
            parser = SSEParser()
            for chunk in resp.iter_bytes():
                now = time.monotonic()
                for event in parser.feed(chunk):
                    yield now, event
        finally:
            resp.close()
    finally:
        if own:
            client.close()


def _raise_for_error(resp: httpx.Response) -> None:
    try:
        err = resp.json()["error"]
    except Exception:  # noqa: BLE001
        err = {"code": "http", "message": resp.text[:500]}
    raise GenerateError(resp.status_code, err.get("code", ""), err.get("message", ""))


def submit_job(base_url: str, *, image: bytes | None = None, masks: list[bytes] | None = None,
               client: httpx.Client | None = None, **fields) -> dict:
    """POST /v1/jobs; returns the job's status (job_id, URLs). Raises GenerateError."""
    own = client is None
    client = client or new_client(60.0)
    try:
        if image is not None:
            files = [("image", ("image", image, "application/octet-stream"))]
            files += [("mask", (f"mask{i}.png", m, "image/png")) for i, m in enumerate(masks or [])]
            resp = client.post(f"{base_url}/v1/jobs", data=_form(fields), files=files)
        else:
            resp = client.post(f"{base_url}/v1/jobs", json={k: v for k, v in fields.items() if v is not None})
        if resp.status_code != 202:
            _raise_for_error(resp)
        return resp.json()
    finally:
        if own:
            client.close()


def iter_job_events(base_url: str, job_id: str, *, last_event_id: int = -1, retries: int = 20,
                    retry_wait_s: float = 1.0, timeout: float = 300.0,
                    client: httpx.Client | None = None) -> Iterator[tuple[float, dict]]:
    """Yield (arrival time, event) of a job until it ends, reconnecting after a dropped
    connection with Last-Event-ID = the highest seq seen. After each (re)connection the
    server sends the missed non-frame events, then one `key_frame` event with the whole
    current picture: decode from there with a fresh FrameDecoder."""
    own = client is None
    client = client or new_client(timeout)
    url = f"{base_url}/v1/jobs/{job_id}/events"
    failures = 0
    try:
        while True:
            ended = False
            try:
                with client.stream("GET", url, headers={"Last-Event-ID": str(last_event_id)}) as resp:
                    if resp.status_code != 200:
                        resp.read()
                        _raise_for_error(resp)
                    parser = SSEParser()
                    for chunk in resp.iter_bytes():
                        now = time.monotonic()
                        for event in parser.feed(chunk):
                            failures = 0
                            last_event_id = max(last_event_id, event["seq"])
                            ended = event["type"] in ("complete", "error")
                            yield now, event
                if ended:
                    return
                # Cut cleanly before the final event (a proxy's stream limit): resume. The
                # job's log keeps its complete/error event, so a resume always reaches it.
            except httpx.TransportError:
                pass
            failures += 1
            if failures > retries:
                raise GenerateError(0, "unreachable", f"the events stream of job {job_id} "
                                    f"dropped {failures} times in a row")
            time.sleep(retry_wait_s)
    finally:
        if own:
            client.close()


class FrameDecoder:
    """Decodes geometry/appearance events of either encoding to (coords, colours).

    One per stream: compact frames are deltas against the previous frame. A frame that does
    not follow on raises protocol.ResyncNeeded; ask the server for a key frame then
    (POST /v1/streams/{request_id}/keyframe).
    """

    def __init__(self):
        self._compact = StreamDecoder()

    def decode(self, event: dict) -> tuple[np.ndarray, np.ndarray]:
        enc = event.get("encoding")
        if enc == full_codec.ENCODING_NAME:
            coords, colors = full_codec.decode(event)
            return np.rint(coords).astype(np.int64), colors
        if enc == "compact":
            frame = self._compact.decode_event(event)
            colors = frame.colors if frame.colors is not None else np.full((frame.count, 3), 128, np.uint8)
            return frame.coords.astype(np.int64), colors
        raise ValueError(f"unknown frame encoding {enc!r}")


def _bar(progress: float, width: int = 24) -> str:
    done = int(progress * width)
    return "#" * done + "-" * (width - done)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m serve_app.client", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", type=Path, help="photo to reconstruct")
    src.add_argument("--prompt", help="text to turn into an object (needs an image generator)")
    src.add_argument("--attach", metavar="JOB_ID", help="follow an existing job (resumes after drops)")
    ap.add_argument("--job", action="store_true",
                    help="run as a job (POST /v1/jobs): a dropped connection resumes, not cancels")
    ap.add_argument("--detach", action="store_true", help="submit a job, print its id and exit")
    ap.add_argument("--mask", type=Path, action="append", default=[], help="object mask PNG (repeatable)")
    ap.add_argument("--click", action="append", default=[], metavar="X,Y[,LABEL]",
                    help="click on the object (label 1) or background (0); repeatable")
    ap.add_argument("--box", metavar="X0,Y0,X1,Y1", help="box around the object")
    ap.add_argument("--label", help="what to cut out, for text-prompted segmenters")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--encoding", default=None, help="voxel frame encoding (see GET /v1/protocol)")
    ap.add_argument("--geometry-every", type=int, default=1)
    ap.add_argument("--colors-every", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("model.glb"), help="where to save the GLB")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)

    try:
        return _run(a)
    except CliError as exc:  # one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2


class CliError(Exception):
    pass


def _numbers(text: str, count: tuple[int, ...], what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in count:
        raise CliError(f"{what} {text!r} must be {' or '.join(str(c) for c in count)} comma-separated numbers")
    return values


def _read(path: Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}") from None


def _run(a: argparse.Namespace) -> int:
    points = []
    for c in a.click:
        parts = _numbers(c, (2, 3), "--click")
        points.append({"x": parts[0], "y": parts[1], "label": int(parts[2]) if len(parts) > 2 else 1})
    boxes = []
    if a.box:
        x0, y0, x1, y1 = _numbers(a.box, (4,), "--box")
        boxes.append({"x_min": x0, "y_min": y0, "x_max": x1, "y_max": y1})
    fields = dict(prompt=a.prompt, segmentation_label=a.label, seed=a.seed, encoding=a.encoding,
                  stream_geometry_every=a.geometry_every, stream_colors_every=a.colors_every,
                  point_prompts=points or None, box_prompts=boxes or None)
    image = _read(a.image, "the image")
    masks = [_read(m, "the mask") for m in a.mask]
    decoder = FrameDecoder()
    complete = None
    t0 = time.monotonic()
    try:
        if a.attach or a.job or a.detach:
            job_id = a.attach or submit_job(a.url, image=image, masks=masks, **fields)["job_id"]
            if a.detach:
                print(job_id)
                return 0
            if not a.quiet:
                print(f"job {job_id}: {a.url}/v1/jobs/{job_id}", flush=True)
            events = iter_job_events(a.url, job_id)
        else:
            events = iter_events(a.url, image=image, masks=masks, **fields)
        for _, ev in events:
            kind = ev["type"]
            if ev.get("key_frame"):
                decoder = FrameDecoder()  # a resumed stream starts again from a full frame
            detail = ev.get("message", "")
            if kind in FRAME_EVENTS:
                coords, _ = decoder.decode(ev)
                detail = f"{len(coords):,} voxels"
            elif kind == "mesh_preview":
                detail = f"{ev['vertex_count']:,} vertices, {ev['face_count']:,} faces"
            elif kind in ("glb_ready", "texture_ready"):
                detail = f"{ev['size_bytes']:,} bytes"
            elif kind == "error":
                print(f"error ({ev['code']}): {ev['message']}", file=sys.stderr)
                return 1
            elif kind == "complete":
                complete = ev
            if not a.quiet:
                steps = f"{ev['step']}/{ev['total_steps']}" if ev["total_steps"] else ""
                print(f"[{_bar(ev['progress'])}] {ev['progress']*100:5.1f}%  {ev['stage']:<15} "
                      f"{kind:<12} {steps:>6}  {detail}", flush=True)
    except GenerateError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except httpx.HTTPError as exc:
        print(f"cannot reach {a.url}: {exc}", file=sys.stderr)
        return 3
    if complete is None:
        print("the stream ended without a `complete` event", file=sys.stderr)
        return 1
    try:
        with new_client(60.0) as http:
            glb = http.get(a.url + complete["model_glb_url"])
        glb.raise_for_status()
    except httpx.HTTPError as exc:
        raise CliError(f"could not fetch the GLB: {exc}") from None
    try:
        a.out.write_bytes(glb.content)
    except OSError as exc:
        raise CliError(f"cannot write {str(a.out)!r}: {exc.strerror or exc}") from None
    print(f"saved {a.out} ({len(glb.content):,} bytes) in {time.monotonic() - t0:.1f} s; "
          f"splat: {a.url}{complete['gaussian_splat_url']} (protocol v{PROTOCOL_VERSION})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
