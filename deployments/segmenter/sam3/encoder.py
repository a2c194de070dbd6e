"""SAM 3 image encoding: one ViT pass per image feeds both the click decoder and the concept detector."""
from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import threading
from dataclasses import dataclass

import numpy as np

from sam3d_common.errors import BadInput

from .loading import Sam3Models


@dataclass
class ImageEmbedding:
    """What SAM 3 needs of one image to answer any prompt without running the ViT again.

    backbone: 1xCxgxg ViT output (the concept detector's FPN is rebuilt from it on demand);
    image_embed, high_res_feats_0, high_res_feats_1: the click decoder's inputs (tracker FPN levels 72², 288²
    and 144² for the full model). All on the model's device, in the model's dtype.
    ready: on CUDA, an event recorded after the encoder pass that made these tensors (`finished` waits
    for it); None on the CPU, where they exist when encode_batch returns.
    """

    embedding_id: str
    original_size: tuple[int, int]  # (height, width) of the image as sent
    backbone: object
    image_embed: object
    high_res_feats_0: object
    high_res_feats_1: object
    ready: object = None

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._tensors())

    def _tensors(self):
        return (self.backbone, self.image_embed, self.high_res_feats_0, self.high_res_feats_1)

    def click_features(self) -> dict[str, np.ndarray]:
        """The three decoder inputs as float32 numpy arrays (what the ONNX decoder and the codec take)."""
        return {
            name: getattr(self, name).float().cpu().numpy()
            for name in ("image_embed", "high_res_feats_0", "high_res_feats_1")
        }

    def click_tensors(self) -> dict:
        """The three decoder inputs as held (device, dtype): the codec quantises them where they live."""
        return {name: getattr(self, name) for name in ("image_embed", "high_res_feats_0", "high_res_feats_1")}

    def shapes(self) -> dict[str, list[int]]:
        return {
            name: list(getattr(self, name).shape)
            for name in ("image_embed", "high_res_feats_0", "high_res_feats_1")
        }


def check_image(image) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise BadInput("the image must be an HxWx3 uint8 RGB array")
    if min(image.shape[:2]) < 2:
        raise BadInput(f"the image is too small ({image.shape[1]}x{image.shape[0]})")
    return image


def image_id(image: np.ndarray) -> str:
    """Content id of an image: the same pixels give the same id, so a re-sent image hits the cache."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{image.shape[0]}x{image.shape[1]}:".encode())
    h.update(np.ascontiguousarray(image).data)
    return h.hexdigest()


def _upload(images: list[np.ndarray], device):
    """One host→device copy for the whole batch: the uint8 pixels packed into one (pinned, on CUDA) buffer.
    → one HxWx3 uint8 view per image, on the device."""
    import torch

    sizes = [im.size for im in images]
    pinned = device.type == "cuda"
    host = torch.empty(sum(sizes), dtype=torch.uint8, pin_memory=pinned)
    flat, start = host.numpy(), 0
    for image, n in zip(images, sizes):
        flat[start : start + n] = np.asarray(image).reshape(-1)  # read-only arrays (object store) are fine
        start += n
    dev = host.to(device, non_blocking=pinned)
    return [part.view(im.shape) for part, im in zip(torch.split(dev, sizes), images)]


def upload_pixels(models: Sam3Models, images: list[np.ndarray]):
    """uint8 RGB images of any sizes → B x S x S x 3 uint8 tensor on the model's device: what the encoder
    (encode_core, the compiled encoder's graphs) takes, normalised inside it.

    As the transformers Sam3 image processor does it (its torchvision backend is not a dependency here):
    bilinear antialiased resize of the uint8 image to SxS ignoring the aspect ratio, rounded to whole
    levels. One upload per batch (uint8, pinned on CUDA); everything after it runs on the device. An image
    already SxS is not resized (an SxS → SxS resize is the identity); a batch of such images is one
    tensor from the start, copied once on the host into the pinned upload buffer.
    """
    import torch
    import torch.nn.functional as F

    device = models.device
    side = (models.pixels.size, models.pixels.size)
    if all(im.shape[:2] == side for im in images):
        pinned = device.type == "cuda"
        host = torch.empty((len(images), *side, 3), dtype=torch.uint8, pin_memory=pinned)
        buf = host.numpy()
        for i, image in enumerate(images):  # straight into the (pinned) upload buffer: one host copy
            buf[i] = image
        return host.to(device, non_blocking=pinned)
    batch = []
    for t in _upload(images, device):
        if tuple(t.shape[:2]) != side:
            t = t.permute(2, 0, 1)[None].float()
            t = F.interpolate(t, size=side, mode="bilinear", align_corners=False, antialias=True)
            t = t.round_().clamp_(0, 255).to(torch.uint8)[0].permute(1, 2, 0)  # torchvision: uint8 → uint8
        batch.append(t)
    return torch.stack(batch)


def normalise(pixels, mean, std, dtype):
    """uint8 pixels B x S x S x 3 → B x 3 x S x S in `dtype`: scaled to [0, 1], then normalised with
    the checkpoint's mean/std (1x3x1x1 float32), in float32 as the image processor computes it."""
    return ((pixels.permute(0, 3, 1, 2).float() / 255.0 - mean) / std).to(dtype)


def pixel_normaliser(models: Sam3Models):
    """normalise() bound to the model's constants (made once per device, _normalisation): the callable
    that encode_core and the compiled encoder apply to the uploaded pixels."""
    mean, std = _normalisation(models.pixels.mean, models.pixels.std, models.device)
    dtype = models.dtype
    return lambda pixels: normalise(pixels, mean, std, dtype)


def vit_on_pixels(models: Sam3Models):
    """The ViT as the encoder runs it: uploaded uint8 pixels → normalised (pixel_normaliser) → backbone
    output. What encode_core calls by default and what compile.CompiledEncoder compiles."""
    backbone, norm = models.detector.vision_encoder.backbone, pixel_normaliser(models)
    return lambda pixels: backbone(norm(pixels))


def pixel_values(models: Sam3Models, images: list[np.ndarray]):
    """uint8 RGB images of any sizes → Bx3xSxS normalised tensor on the model's device (the detector's
    `pixel_values`): upload_pixels, then normalise."""
    return pixel_normaliser(models)(upload_pixels(models, images))


@functools.lru_cache(maxsize=8)
def _normalisation(mean: tuple[float, ...], std: tuple[float, ...], device):
    """The mean and std as 1x3x1x1 float32 tensors on `device`, made once. Made per call, each would be a
    copy from pageable host memory, which waits for all the work queued on the GPU: the encoder thread
    then could not prepare the next batch while the previous one runs."""
    import torch

    with torch.inference_mode(False):  # ordinary tensors, usable in and out of inference mode
        return (torch.tensor(mean, device=device).view(1, 3, 1, 1), torch.tensor(std, device=device).view(1, 3, 1, 1))


def tracker_features(models: Sam3Models, spatial):
    """ViT output Bx C x g x g → (high_res_feats_0, high_res_feats_1, image_embed), as the tracker computes them.

    Only the neck's first three FPN levels are built, each by its own layer as the neck would: calling the
    neck itself would also build its fourth level (max-pooled, then two convolutions at 36² at full size)
    and look up a sine position encoding per level (transformers caches them), none of which the click
    decoder reads. The outputs are the same."""
    trk = models.tracker
    levels = trk.vision_encoder.neck.fpn_layers
    feats_0 = trk.mask_decoder.conv_s0(levels[0](spatial))
    feats_1 = trk.mask_decoder.conv_s1(levels[1](spatial))
    embed = levels[2](spatial) + trk.no_memory_embedding.reshape(1, -1, 1, 1)
    return feats_0, feats_1, embed


def detector_vision_embeds(models: Sam3Models, spatial):
    """ViT output → the Sam3VisionEncoderOutput that Sam3Model(vision_embeds=...) takes."""
    from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

    fpn, pos = models.detector.vision_encoder.neck(spatial)
    return Sam3VisionEncoderOutput(
        last_hidden_state=spatial.flatten(2).transpose(1, 2), fpn_hidden_states=fpn, fpn_position_encoding=pos
    )


def encode_core(models: Sam3Models, pixels, vit=None):
    """uint8 pixels B x S x S x 3 (upload_pixels) → (spatial B x C x g x g, high_res_feats_0,
    high_res_feats_1, image_embed): the pixels normalised and the ViT (`vit`, vit_on_pixels or a compiled
    form of it; vit_on_pixels when None), then the tracker's neck (models.click_neck, its folded form, when
    set; tracker_features otherwise). This is what compile.CompiledEncoder compiles (all of it,
    or `vit` alone) and captures into CUDA graphs: the normalisation runs inside them, not as separate
    launches before each call."""
    hidden = (vit_on_pixels(models) if vit is None else vit)(pixels).last_hidden_state  # B x g*g x C
    grid = pixels.shape[1] // models.detector.config.vision_config.backbone_config.patch_size
    tokens = hidden.reshape(hidden.shape[0], grid, grid, hidden.shape[-1]).permute(0, 3, 1, 2)  # channels-last
    spatial = tokens.contiguous()
    if models.click_neck is not None:  # folding.ClickNeck: reads the channels-last view as it is
        feats_0, feats_1, embed = models.click_neck(tokens)
    else:
        feats_0, feats_1, embed = tracker_features(models, spatial)
    return spatial, feats_0, feats_1, embed


def encode_images(models: Sam3Models, images: list[np.ndarray], ids: list[str]) -> list[ImageEmbedding]:
    """One batched encoder pass for all images (ids: their content ids, hashed by the caller, off this thread).

    Each result owns its tensors: a batch of one keeps the outputs as they are (no copy); in a larger batch
    each image's slices are copied once, so that a cached embedding does not hold its batch-mates' memory.
    """
    import torch

    if not images:
        return []
    if len(ids) != len(images):
        raise ValueError("one id per image")
    with torch.inference_mode():
        pixels = upload_pixels(models, images)
        encode = functools.partial(encode_core, models) if models.compiled is None else models.compiled
        spatial, feats_0, feats_1, embed = encode(pixels)
        if len(images) == 1:
            own = lambda t, i: t  # noqa: E731 - the whole batch is this image's
        else:
            own = lambda t, i: t[i : i + 1].clone()  # noqa: E731
        out = [
            ImageEmbedding(
                embedding_id=ids[i],
                original_size=(int(image.shape[0]), int(image.shape[1])),
                backbone=own(spatial, i),
                image_embed=own(embed, i),
                high_res_feats_0=own(feats_0, i),
                high_res_feats_1=own(feats_1, i),
            )
            for i, image in enumerate(images)
        ]
        if pixels.is_cuda:  # after the last copy above: the batch's work, queued on this thread's stream
            ready = torch.cuda.Event()
            ready.record()
            for embedding in out:
                embedding.ready = ready
        return out


async def encode_until_done(encode, *args) -> list:
    """encode(*args) (a batch → its embeddings) on a worker thread, returned once the GPU has computed
    them: the Segmenter's batch handler, which the benchmarks' @serve.batch runs as well."""
    out = await asyncio.to_thread(encode, *args)
    await finished(out)
    return out


async def finished(embeddings, poll_s: float = 0.0005) -> None:
    """Return once the GPU has computed `embeddings` (their `ready` events), polling every `poll_s`
    without blocking the event loop. At once for embeddings without an event (CPU) or objects that have
    none. The Segmenter's batch handler awaits this, so that a batch counts as running until its GPU work
    is done, not only until its kernels are queued."""
    events = {id(e): e for e in (getattr(x, "ready", None) for x in embeddings) if e is not None}
    for event in events.values():
        while not event.query():
            await asyncio.sleep(poll_s)


_side = threading.local()  # each worker thread's side stream (CUDA), made on first use


@contextlib.contextmanager
def after_encoding(embedding: ImageEmbedding):
    """Run the block's GPU work (a payload, a prompt's decoder) on this thread's high-priority side
    stream, ordered after `embedding`'s encoder pass (its `ready` event) and nothing else.

    On the encoder's own stream that work would also wait for every batch queued behind the one that
    made `embedding` (up to a batch of latency at full load). The block must finish its GPU work before
    it ends (a synchronous copy to the host does): the embedding's tensors belong to the encoder's stream.
    Without an event (the CPU) the block runs as it is."""
    ready = embedding.ready
    if ready is None:
        yield
        return
    import torch

    stream = getattr(_side, "stream", None)
    if stream is None:
        stream = _side.stream = torch.cuda.Stream(priority=-1)
    stream.wait_event(ready)
    with torch.cuda.stream(stream):
        yield
