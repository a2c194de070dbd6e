"""Load SAM 3 (transformers 5.x) once per replica, from a local folder or the Hugging Face hub.

The official checkpoint `facebook/sam3` is a `sam3_video` checkpoint: one `model.safetensors` holding the
concept detector (`detector_model.*`), the interactive tracker (`tracker_model.*`) and the tracker's own
FPN neck (`tracker_neck.*`); detector and tracker share the ViT backbone. We load

- `Sam3Model` (text / box concept prompts) from the `detector_model.*` keys, and
- `Sam3TrackerModel` (clicks and boxes, the SAM-2-style decoder) from the rest,

then make the tracker use the detector's backbone module, so the 450 M-parameter ViT sits in memory once
and runs once per image. Every failure becomes `ModelUnavailable` with what was tried and how to fix it.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sam3d_common.errors import ModelUnavailable
from sam3d_common.torch_device import resolve_device_dtype
from sam3d_common.weights import local_weights

log = logging.getLogger(__name__)

# The tracker's weights sit under `tracker_model.` in the checkpoint; transformers' own sam3_tracker
# renaming strips that prefix. transformers 5.23's save_pretrained of a Sam3VideoModel writes them as
# `tracker_model.tracker_model.*`, which that renaming alone leaves half-prefixed (the decoder then
# loads randomly initialised); this extra renaming accepts both. Missing weights are an error below.
_TRACKER_KEY_MAPPING = {r"^tracker_model\.": ""}
_GATED_HINT = (
    "The SAM 3 weights are gated on the Hugging Face hub: request access at "
    "https://huggingface.co/{model_id}, then either log in (`hf auth login`, or set HF_TOKEN) on a "
    "machine that can reach the hub, or download them once with "
    "`hf download {model_id} --local-dir /models/sam3` and set `segmenter.sam3.local_dir: /models/sam3`."
)


@dataclass
class PixelSpec:
    """How an RGB uint8 image becomes the encoder's input (read from the checkpoint's processor config)."""

    size: int = 1008
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)


@dataclass
class Sam3Models:
    detector: Any  # transformers.Sam3Model
    tracker: Any  # transformers.Sam3TrackerModel, sharing detector.vision_encoder.backbone
    tokenizer: Any  # CLIP tokenizer; None when the checkpoint ships none (text prompts then fail clearly)
    pixels: PixelSpec
    device: Any  # torch.device
    dtype: Any  # torch.dtype
    source: str
    notes: list[str] = field(default_factory=list)
    compiled: Any = None  # the encoder under torch.compile (compile.CompiledEncoder); None: eager
    click_neck: Any = None  # the tracker neck's levels folded (folding.ClickNeck); None: as transformers has them

    @property
    def input_size(self) -> int:
        return int(self.tracker.config.prompt_encoder_config.image_size)


def _import_transformers():
    try:
        import transformers
        from transformers import AutoConfig, AutoTokenizer, Sam3Model, Sam3TrackerConfig, Sam3TrackerModel
    except ImportError as exc:  # transformers missing or older than SAM 3
        raise ModelUnavailable(
            f"the SAM 3 segmenter needs transformers>=5 with SAM 3 support ({exc}); "
            "install the model extras: pip install 'sam3d-serve[models]'"
        ) from None
    return transformers, AutoConfig, AutoTokenizer, Sam3Model, Sam3TrackerConfig, Sam3TrackerModel


def _source(model_id: str, local_dir: str | None) -> tuple[str, bool]:
    if local_dir:
        path = local_weights(
            local_dir, "config.json", "segmenter.sam3.local_dir", "SAM 3 weights",
            f"it must hold the files of the hub repository {model_id!r} (config.json, model.safetensors, "
            "tokenizer files). " + _GATED_HINT.format(model_id=model_id))
        return str(path), True
    return model_id, False


def _unavailable(model_id: str, local_dir: str | None, exc: BaseException) -> ModelUnavailable:
    tried = f"local_dir {local_dir!r}" if local_dir else "no local_dir configured (segmenter.sam3.local_dir)"
    offline = " HF_HUB_OFFLINE is set, so only the local hub cache was searched." if os.environ.get(
        "HF_HUB_OFFLINE", ""
    ).lower() in ("1", "true", "yes") else ""
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ModelUnavailable(
        f"could not load SAM 3 weights: hub id {model_id!r}, {tried}.{offline} ({type(exc).__name__}: "
        f"{reason[:300]}) " + _GATED_HINT.format(model_id=model_id)
    )


def read_pixel_spec(source: str, local: bool, image_size: int) -> PixelSpec:
    """Resize target and normalisation from processor_config.json / preprocessor_config.json, if any."""
    spec = PixelSpec(size=image_size)
    candidates: list[dict] = []
    for name in ("processor_config.json", "preprocessor_config.json"):
        path: str | None = None
        if local:
            p = Path(source) / name
            path = str(p) if p.is_file() else None
        else:
            try:
                from huggingface_hub import hf_hub_download

                path = hf_hub_download(source, name)
            except Exception:  # optional file: absent, offline or gated; the defaults hold
                path = None
        if path:
            data = json.loads(Path(path).read_text())
            candidates.append(data.get("image_processor", data))
    for cfg in candidates:
        size = cfg.get("size") or {}
        if isinstance(size, dict) and size.get("height"):
            spec.size = int(size["height"])
        if cfg.get("image_mean"):
            spec.mean = tuple(float(v) for v in cfg["image_mean"])
        if cfg.get("image_std"):
            spec.std = tuple(float(v) for v in cfg["image_std"])
        break
    if spec.size != image_size:
        log.warning("processor size %s differs from the model's image_size %s; using the model's", spec.size, image_size)
        spec.size = image_size
    return spec


def tracker_config_from(video_config):
    """The image-level tracker config that matches a sam3_video checkpoint's tracker and backbone."""
    from transformers import Sam3TrackerConfig

    trk = video_config.tracker_config
    vision = video_config.detector_config.vision_config
    prompt = trk.prompt_encoder_config.to_dict()
    prompt["image_size"] = vision.backbone_config.image_size  # the shared backbone decides the input size
    return Sam3TrackerConfig(
        vision_config=vision.to_dict(), prompt_encoder_config=prompt, mask_decoder_config=trk.mask_decoder_config.to_dict()
    )


def share_backbone(detector, tracker) -> None:
    """Point the tracker at the detector's ViT: the checkpoint stores it once, so it must be identical."""
    import torch

    a = detector.vision_encoder.backbone.state_dict()
    b = tracker.vision_encoder.backbone.state_dict()
    probe = next(iter(a))
    if a.keys() != b.keys() or not torch.equal(a[probe], b[probe]):
        raise ModelUnavailable("SAM 3 checkpoint: the tracker's backbone differs from the detector's")
    tracker.vision_encoder.backbone = detector.vision_encoder.backbone


def finish(detector, tracker, tokenizer, pixels, device, dtype, source, notes=None) -> Sam3Models:
    share_backbone(detector, tracker)
    detector.to(device=device, dtype=dtype).eval()
    tracker.to(device=device, dtype=dtype).eval()
    return Sam3Models(detector, tracker, tokenizer, pixels, device, dtype, source, list(notes or []))


def load_sam3_models(settings) -> Sam3Models:
    """settings: sam3d_common.settings.Sam3Settings. Loads once; call from the replica's constructor."""
    _, AutoConfig, AutoTokenizer, Sam3Model, _, Sam3TrackerModel = _import_transformers()
    device, dtype = resolve_device_dtype(
        settings.device, settings.dtype, "segmenter.sam3",
        "; give the Segmenter deployment a GPU (ray_actor_options: {num_gpus: 1}) or set device: cpu.")
    source, local = _source(settings.model_id, settings.local_dir)
    kwargs = {"local_files_only": True} if local else {}
    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
    except Exception as exc:  # OSError for missing / gated / offline, ValueError for odd repos
        raise _unavailable(settings.model_id, settings.local_dir, exc) from None
    if getattr(config, "model_type", None) != "sam3_video":
        raise ModelUnavailable(
            f"{source!r} holds a {getattr(config, 'model_type', '?')!r} checkpoint; the SAM 3 segmenter needs "
            f"the full SAM 3 checkpoint (model_type 'sam3_video', as in {settings.model_id!r}) because clicks "
            "and boxes use the tracker's decoder."
        )
    try:
        detector, det_info = Sam3Model.from_pretrained(
            source, config=config.detector_config, dtype=dtype, output_loading_info=True, **kwargs
        )
        tracker, trk_info = Sam3TrackerModel.from_pretrained(
            source,
            config=tracker_config_from(config),
            dtype=dtype,
            key_mapping=_TRACKER_KEY_MAPPING,
            output_loading_info=True,
            **kwargs,
        )
    except ModelUnavailable:
        raise
    except Exception as exc:
        raise _unavailable(settings.model_id, settings.local_dir, exc) from None
    missing = sorted(det_info["missing_keys"]) + sorted(trk_info["missing_keys"])
    if missing:
        raise ModelUnavailable(
            f"SAM 3 checkpoint {source!r} lacks {len(missing)} weights (first: {missing[:3]}); the files are "
            "incomplete or from another model."
        )
    notes = []
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except Exception as exc:
        tokenizer = None
        notes.append(f"no tokenizer in {source!r} ({type(exc).__name__}); text prompts are unavailable")
        log.warning(notes[-1])
    pixels = read_pixel_spec(source, local, int(config.detector_config.vision_config.backbone_config.image_size))
    log.info("SAM 3 loaded from %s on %s/%s", source, device, dtype)
    return finish(detector, tracker, tokenizer, pixels, device, dtype, source, notes)
