"""Kernel profiles of the SAM 3D Objects stages (bench/bench_sam3d_h200.py calls it on the GPU).

One request driven by hand through `UpstreamRun`: three geometry steps, three appearance steps
inside the guidance interval (two backbone passes each unless batched), three after it (one
pass), one appearance preview that refits from the Gaussian decoder, and the final decode; each
profiled with bench/gpu_profile.py, so the report says which kernels (matrix multiplies,
attention, sparse convolutions, elementwise) the time goes to, and how much of a step's wall
time the GPU is busy at all.
"""
from __future__ import annotations

from bench.gpu_profile import kernel_profile
from deployments.reconstructor.sam3d_host import settle


def profile_stages(model, image, mask, steps: int, sync) -> dict:
    run = model.begin(image, mask, 4321, steps, steps)
    out: dict = {}
    try:
        run.prepare()
        out["geometry_step"] = kernel_profile(run.geometry_step, sync, runs=3)
        while run.geo.done < run.geo.total:
            run.geometry_step()
        run.start_appearance(settle(run.geometry_preview()).occupancy)
        out["appearance_voxels"] = int(run.coords.shape[0])
        out["appearance_step_guided"] = kernel_profile(run.appearance_step, sync, runs=3)
        while run.app.done < run.app.total - 4:
            run.appearance_step()
        out["appearance_step_unguided"] = kernel_profile(run.appearance_step, sync, runs=3)
        fit = run.latent_colors
        # previews = 0: the next preview is the first of a refit cycle, so it runs the Gaussian
        # decoder (LatentColors.due); settle() so the host copy and the fit are counted too.
        out["appearance_preview_refit"] = kernel_profile(
            lambda: (setattr(fit, "previews", 0) if fit is not None else None,
                     settle(run.appearance_preview())), sync, runs=2)
        out["geometry_preview"] = kernel_profile(lambda: settle(run.geometry_preview()), sync, runs=3)
        out["finish"] = kernel_profile(run.finish, sync, runs=1)
    finally:
        run.release()
    return out
