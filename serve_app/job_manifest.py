"""A job's manifest: its inputs' digests, settings, seed, backend versions and timings."""
from __future__ import annotations

import hashlib
import platform
import time
from importlib import metadata

import numpy as np

from serve_app.pipeline import Job
from serve_app.protocol import PROTOCOL_VERSION
from sam3d_common.settings import AppSettings


def digest(a: np.ndarray | None) -> dict | None:
    """sha256, shape and dtype of an array (the photo, the mask), or None."""
    if a is None:
        return None
    a = np.ascontiguousarray(a)
    return {"sha256": hashlib.sha256(a.tobytes()).hexdigest(), "shape": list(a.shape), "dtype": str(a.dtype)}


def inputs_of(job: Job) -> dict:
    return {"image": digest(job.image), "mask": digest(job.seg_prompt.mask), "prompt": job.prompt}


def versions(settings: AppSettings) -> dict:
    out = {"protocol": PROTOCOL_VERSION, "python": platform.python_version(),
           "backends": {"prompt_enhancer": settings.prompt_enhancer.backend,
                        "image_generator": settings.image_generator.backend,
                        "segmenter": settings.segmenter.backend,
                        "reconstructor": settings.reconstructor.backend}}
    for pkg in ("sam3d-serve", "numpy", "torch", "ray"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def build_manifest(job: Job, rec: dict, settings: AppSettings, state: str, complete: dict | None) -> dict:
    """The manifest of a finished job; `rec` is its stored record (created, started, inputs, fields)."""
    opts = job.options
    now = time.time()
    started = rec.get("started") or now
    return {
        "job_id": job.request_id, "state": state,
        "inputs": rec.get("inputs"),
        "settings": {**(rec.get("fields") or {}), "geometry_steps": opts.geometry_steps,
                     "appearance_steps": opts.appearance_steps, "fast": opts.fast,
                     "face_budget": job.bake.face_budget,
                     "texture": job.bake.texture, "texture_size": job.bake.texture_size, "encoding": job.encoding},
        "seed": job.seed, "versions": versions(settings),
        "timings": {"queued_s": round(started - rec["created"], 4), "run_s": round(now - started, 4),
                    "stages": (complete or {}).get("timings", {})},
    }
