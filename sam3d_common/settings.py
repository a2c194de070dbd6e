"""Configuration: serve_config*.yaml `args` → these pydantic models → backend constructors.

Every model forbids unknown keys so a typo in a config fails at startup with the key's name.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, IPvAnyNetwork, ValidationError, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class PromptEnhancerSettings(_Strict):
    backend: Literal["rules", "openai"] = "rules"
    # OpenAI-compatible chat completions endpoint (vLLM, Ray Serve LLM, a hosted API).
    base_url: str | None = None
    model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = Field(20.0, gt=0)


class ImageGeneratorSettings(_Strict):
    backend: Literal["none", "diffusers"] = "none"
    model_id: str = "stabilityai/sdxl-turbo"
    local_dir: str | None = None
    steps: int = Field(4, ge=1, le=100)
    guidance_scale: float = Field(0.0, ge=0)
    size: int = Field(1024, ge=64, le=2048, multiple_of=8)  # pixels a side; the VAE needs multiples of 8
    device: Literal["auto", "cuda", "cpu"] = "auto"
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    # Weight file variant to load (e.g. "fp16" halves sdxl-turbo's download); None: the default files.
    variant: str | None = None


class GrabCutSettings(_Strict):
    iterations: int = Field(4, ge=1, le=20)  # the former cv2.grabCut path ran 5 (issue 12)
    max_side: int = Field(384, ge=64, le=4096)  # GrabCut runs at this size, the mask is scaled back
    # Its iterations cut blocks of f×f pixels, f the smallest that leaves at most this many blocks
    # over the undecided pixels; then the edge is re-cut per pixel (deployments/segmenter/
    # multigrid.py). A value ≥ the pixel count cuts every pixel throughout.
    max_blocks: int = Field(40000, ge=1000, le=16_777_216)
    edge_band: int = Field(4, ge=1, le=64)  # pixels either side of the block cut's edge re-cut per pixel
    border_fraction: float = Field(0.04, gt=0, lt=0.4)
    # Iterations stop early once fewer than this share of pixels change, or after time_budget_s
    # of CPU time (checked between iterations), far below the segmenter stage's limit.
    stable_fraction: float = Field(0.002, ge=0, le=0.5)
    time_budget_s: float = Field(5.0, gt=0, le=120)


class Sam3Settings(_Strict):
    model_id: str = "facebook/sam3"
    local_dir: str | None = None
    device: Literal["auto", "cuda", "cpu"] = "auto"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    score_threshold: float = Field(0.5, ge=0, le=1)
    embedding_cache_mb: int = Field(512, ge=0)  # per replica, on the model's device; 0 disables the cache
    max_instances: int = Field(10, ge=1, le=100)  # text prompts: instances returned at most
    # Browser payload of POST /v1/embed (deployments/segmenter/sam3/embedding_codec.py); sizes and
    # fidelity of each profile: docs/sam3-embedding-format.md.
    embedding_profile: Literal["compact", "int8", "fp16", "fp32"] = "compact"
    onnx_cache_dir: str | None = None  # where the click decoder is exported once; default: the temp dir
    # torch.compile of the ViT (deployments/segmenter/sam3/compile.py), padded to the batch sizes 1, 2, 4, ...
    # EncoderBatching.max_batch_size and compiled before the replica serves. "auto": on CUDA only.
    compile: Literal["auto", "on", "off"] = "auto"
    # No CUDA-graph modes ("reduce-overhead", "max-autotune"): they failed under the encoder's
    # worker threads on the H200 and H100 (docs/sam3.md); `cuda_graph` is the encoder's own.
    compile_mode: Literal["default", "max-autotune-no-cudagraphs"] = "default"
    compile_backend: Literal["inductor", "aot_eager"] = "inductor"  # aot_eager: fast to build (CPU tests)
    # What is compiled: "vit" the ViT alone, "encoder" the ViT and the click decoder's feature neck.
    compile_scope: Literal["vit", "encoder"] = "vit"
    # inductor's `freezing` while the buckets compile: weights and buffers folded in as constants
    # (the rotary tables computed once, not at every call; with vit_fp8 the weights' FP8 layouts too);
    # holds a second copy of what it folds. On by default since H100 run 11 (docs/sam3.md).
    compile_freezing: bool = True
    # The buckets above batch 1 compiled as one graph with a symbolic batch dimension (bucket 1
    # keeps its own static graph): two compilations at start instead of one per bucket, and a
    # larger max_batch_size compiles nothing new. Off: one static graph per bucket.
    compile_dynamic_batch: bool = False
    # The compiled encoder replayed from one CUDA graph per batch size, captured by hand during
    # the warm-up and replayable from any worker thread (deployments/cuda_graphs.py). Acts where
    # the encoder is compiled on CUDA (either compile_mode); elsewhere it does nothing.
    cuda_graph: bool = True
    # cuDNN times its convolution algorithms once per input shape and keeps the fastest
    # (torch.backends.cudnn.benchmark, for the whole replica process) instead of picking one by
    # heuristic: the neck's convolutions (and, with encoder_folding off, the ViT's 14x14 patch
    # embedding). On CUDA only.
    cudnn_benchmark: bool = False
    # The ViT's patch embedding as one matrix multiply and the click decoder's neck with its
    # back-to-back linear convolutions folded into one (deployments/segmenter/sam3/folding.py): the
    # same function up to rounding, with fewer FLOPs and kernels. Off: the layers as transformers has them.
    encoder_folding: bool = True
    # The ViT's linear layers in FP8 (deployments/segmenter/sam3/fp8_linear.py), scaled as vit_fp8_scaling says;
    # needs compute capability 8.9+ (Ada, Hopper). Off: bf16 as trained.
    vit_fp8: bool = False
    # How vit_fp8 scales: "static" one scale per weight and per activation, each activation's
    # calibrated at start on photos (fp8_calibration.py), so no reduction runs per call (the only
    # scaling faster than bf16 on the H100, docs/sam3.md); "tensor" the same with the activation's
    # scale measured at every call; "row" per weight and activation row, the bias added after.
    # None: "static" (only meaningful with vit_fp8; set without it, the config is refused).
    vit_fp8_scaling: Literal["row", "tensor", "static"] | None = None
    # With vit_fp8_scaling "static": a local folder of photos (.jpg/.jpeg/.png/.webp, the first 16 by
    # name) to calibrate on; None: four everyday photos bundled with scikit-image.
    vit_fp8_calibration: str | None = None
    # The ViT's MLP runs its first matrix multiply, bias and GELU as one cuBLASLt call (GELU in the
    # matrix multiply's epilogue, deployments/segmenter/sam3/fused_gelu.py) instead of a separate
    # pass over the 4736-wide hidden activations. On CUDA that epilogue is GELU's tanh form.
    vit_fused_gelu: bool = False

    @property
    def fp8_scaling(self) -> str:
        """vit_fp8_scaling with its default filled in."""
        return self.vit_fp8_scaling or "static"

    @model_validator(mode="after")
    def _vit_levers_agree(self) -> "Sam3Settings":
        if self.vit_fp8 and self.vit_fused_gelu:
            raise ValueError("vit_fused_gelu fuses a bf16 matrix multiply; with vit_fp8 there is none to fuse: "
                             "turn one of them off")
        if self.vit_fp8_scaling is not None and not self.vit_fp8:
            raise ValueError(f"vit_fp8_scaling: {self.vit_fp8_scaling} scales FP8 linear layers, and vit_fp8 is off: "
                             "turn vit_fp8 on")
        if self.vit_fp8_calibration is not None and not (self.vit_fp8 and self.fp8_scaling == "static"):
            raise ValueError("vit_fp8_calibration names photos for the static FP8 scales: set vit_fp8: true and "
                             "vit_fp8_scaling: static, or leave it out")
        return self


class EncoderBatching(_Strict):
    """The Segmenter deployment's `user_config` (Serve calls `reconfigure` with it at start and
    whenever it changes, without a restart): how @serve.batch groups images for one SAM 3
    encoder pass. The deployment's max_ongoing_requests must be ≥ max_batch_size, or a batch
    could never fill; the replica checks this and refuses the config otherwise."""

    max_batch_size: int = Field(8, ge=1, le=64)  # images per encoder call
    batch_wait_timeout_s: float = Field(0.01, ge=0)


class SegmenterSettings(_Strict):
    backend: Literal["grabcut", "sam3"] = "grabcut"
    grabcut: GrabCutSettings = GrabCutSettings()
    sam3: Sam3Settings = Sam3Settings()


class InflationSettings(_Strict):
    geometry_steps: int = Field(12, ge=1, le=1000)
    appearance_steps: int = Field(8, ge=1, le=1000)
    fill: float = Field(0.9, gt=0.1, le=1.0)  # the mask's longer side spans this share of the grid
    depth_scale: float = Field(0.8, gt=0, le=2.0)  # 1.0 makes a disc into a sphere
    # Seconds each step takes at least. 0 runs flat out; the local config sets a small
    # value so a person watching the viewer can see the object take shape.
    min_step_s: float = Field(0.0, ge=0, le=10)


class Sam3dSettings(_Strict):
    checkpoint_dir: str | None = None  # folder holding pipeline.yaml and the .ckpt files
    model_id: str = "facebook/sam-3d-objects"
    # MoGe weights (the depth model): a local folder or file; None uses pipeline.yaml's hub id.
    depth_model_dir: str | None = None
    geometry_steps: int = Field(25, ge=1, le=100)
    appearance_steps: int = Field(25, ge=1, le=100)
    # Steps of the per-request fast mode (distilled shortcut sampling, no CFG).
    fast_geometry_steps: int = Field(4, ge=1, le=100)
    fast_appearance_steps: int = Field(4, ge=1, le=100)
    # Speed levers (docs/sam3d.md): the geometry flow transformer's blocks compiled on CUDA
    # (compiled during the warm-up); appearance previews from a per-run latent→colour fit
    # refreshed by the Gaussian decoder every `preview_refit_every` previews ("decoder": the
    # decoder at every preview), which runs in `preview_dtype`.
    compile_geometry: bool = True
    # torch.compile mode for the compiled blocks: "reduce-overhead" adds CUDA graphs (the
    # geometry stage's shapes are fixed).
    compile_mode: Literal["default", "reduce-overhead", "max-autotune-no-cudagraphs"] = "default"
    # The geometry blocks replayed as one CUDA graph per CFG pass (its shapes never change).
    geometry_cuda_graph: bool = True
    # The appearance flow transformer's blocks on plain feature tensors (one object per
    # request), eager (`dense_appearance`) or compiled with a dynamic token count
    # (`compile_appearance`, CUDA only; implies dense).
    dense_appearance: bool = False
    compile_appearance: bool = True
    # Those dense blocks replayed as one CUDA graph per request (its voxel count is fixed for
    # all its steps): captured at the first pass, replayed by the others (CUDA only).
    appearance_cuda_graph: bool = False
    # The occupancy decoder of the geometry previews compiled (fixed shape).
    compile_occupancy_decoder: bool = False
    warm_up: bool = True  # one synthetic request at start, before the replica reports healthy
    preview_colors: Literal["latent", "decoder"] = "latent"
    preview_refit_every: int = Field(5, ge=1, le=100)
    preview_dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    # Previews copied to the host without the GPU worker waiting (deployments/reconstructor/
    # sam3d_host.py): the next step is launched while the copy lands.
    async_previews: bool = False
    # Previews decoded on a CUDA stream of their own, so that their kernels can run beside the
    # next step's (implies async_previews: the worker does not wait for them). On by default
    # since H100 run 21's alternating runs (docs/sam3d.md); no effect off CUDA beyond the
    # previews being settled on the frame thread.
    preview_stream: bool = True


class ReconstructorSettings(_Strict):
    backend: Literal["inflation", "sam3d"] = "inflation"
    grid_size: int = Field(64, ge=8, le=256)
    inflation: InflationSettings = InflationSettings()
    sam3d: Sam3dSettings = Sam3dSettings()


class MeshBakerSettings(_Strict):
    smooth_sigma: float = Field(0.8, ge=0, le=3)  # Gaussian on the occupancy before marching cubes
    max_preview_faces: int = Field(60_000, ge=1000)
    splat_opacity: float = Field(0.95, gt=0, lt=1)


class StoreSettings(_Strict):
    url: str = "./artifacts"  # a local folder, or any fsspec URL (s3://bucket/prefix, gs://...)
    # Retention (sam3d_common/store.py): older artifacts are not served and get deleted; beyond
    # the size cap the oldest go first. None switches either off.
    ttl_s: float | None = Field(24 * 3600, gt=0)
    max_total_bytes: int | None = Field(None, ge=1024 * 1024)
    sweep_every_s: float = Field(60, gt=0)


class LimitsSettings(_Strict):
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    max_json_bytes: int = Field(64 * 1024 * 1024, ge=1024)  # a JSON body (image_b64 is 4/3 of the image)
    max_image_pixels: int = Field(40_000_000, ge=4096)
    max_image_side: int = Field(2048, ge=64)  # larger photos are scaled down on arrival
    min_image_side: int = Field(16, ge=1, le=1024)  # smaller images are refused with this figure
    allow_image_urls: bool = True
    image_url_timeout_s: float = Field(10.0, gt=0, le=120)  # the whole fetch, redirects included
    image_url_max_redirects: int = Field(3, ge=0, le=10)
    # Streams one ingress replica admits at once; the next is 503 at once (serve_app/admission.py).
    max_active_streams: int | None = Field(None, ge=1, le=100_000)
    # image_url reaches public addresses only; these networks are let through as well
    # (local development: ["127.0.0.0/8", "::1/128"]). See serve_app/url_fetch.py.
    image_url_allow_networks: list[IPvAnyNetwork] = Field(default_factory=list, max_length=64)
    # When not empty, image_url may only name these hosts (exact, or "*.example.com").
    image_url_hosts: list[str] = Field(default_factory=list, max_length=256)


class StreamSettings(_Strict):
    """Self-pacing of each stream. Serve has no flow control from a slow reader back to us,
    so every stream stays under these rates; frames that come faster are coalesced, the
    newest replacing older unsent ones (never the last frame of a stage, never an event)."""

    # Caps frames that a newer one may replace; a stage's last frame waits only for the bytes.
    max_frames_per_s: float = Field(10.0, gt=0, le=1000)
    max_bytes_per_s: int = Field(1_000_000, ge=1000)
    # When the response headers go out. "accepted": once the reconstructor has taken the request
    # or holds it in its queue (a place-in-line event), so a full queue is still a real 503, but
    # segmenting is not seen until then. "first_event": at once, every stage visible from the
    # first second; use it with limits.max_active_streams no larger than the reconstructor's
    # slots + queue per ingress replica, so that a full queue is a 503 before the body is read.
    answer_at: Literal["accepted", "first_event"] = "accepted"
    # compact encoding: a key frame every N frames, and the zlib level of its bodies (None sends
    # none compressed); why level 1 is the default: the codec figures in README (Benchmarks).
    compact_key_every: int = Field(16, ge=1, le=1000)
    compact_zlib_level: int | None = Field(1, ge=0, le=9)


class AuthSettings(_Strict):
    """API keys (serve_app/auth.py): `name:sha256-hex` lines, from a file and/or an env var."""

    enabled: bool = False
    keys_file: str | None = None  # e.g. a mounted Kubernetes secret
    keys_env: str | None = "SAM3D_API_KEYS"
    requests_per_minute: int = Field(60, ge=1, le=100_000)  # per key, per ingress replica
    max_concurrent_streams: int = Field(4, ge=1, le=1000)  # per key, per ingress replica


class TimeoutSettings(_Strict):
    """Per-stage limits, enforced by the ingress whatever the client's headers say."""

    prompt_enhancer_s: float = Field(60, gt=0)
    image_generator_s: float = Field(180, gt=0)
    segmenter_s: float = Field(120, gt=0)
    queue_s: float = Field(120, gt=0)  # from the reconstructor call to its first item
    queue_notice_s: float = Field(0.25, gt=0, le=10)  # how often a waiting request hears its place in line
    step_s: float = Field(120, gt=0)  # the longest gap between two reconstructor items
    mesh_baker_s: float = Field(180, gt=0)
    request_s: float = Field(900, gt=0)  # the whole stream


class JobSettings(_Strict):
    """POST /v1/jobs (serve_app/jobs.py): jobs run at once, wait, and are kept."""

    max_running: int = Field(4, ge=1, le=1000)  # jobs whose pipeline runs at once
    max_queued: int = Field(32, ge=0, le=100_000)  # more waiting jobs → 503 queue_full
    max_jobs: int = Field(1000, ge=1, le=1_000_000)  # jobs kept, finished ones included
    ttl_s: float = Field(3600, gt=0)  # a finished job and its artifacts go this long after it ends
    # Where jobs are kept (serve_app/job_store.py): None is a SQLite file, jobs.sqlite3, in the
    # artifact folder (which must then be local); or sqlite:////abs/path.db; or a Redis URL,
    # redis://host:6379/0 (rediss:// for TLS), shared by every replica.
    store_url: str | None = Field(None, pattern=r"^(sqlite:///|rediss?://|unix://)")
    store_prefix: str = Field("sam3d:jobs:", min_length=1, max_length=100)  # Redis key prefix
    store_password_env: str | None = None  # env var holding the Redis password (a mounted secret)
    # A manager's jobs are failed as `interrupted` once its heartbeat is this old (it died).
    owner_lease_s: float = Field(10, gt=0, le=3600)
    # The latest voxel frame is written to the store at most this often (and at each stage's end).
    frame_store_every_s: float = Field(0.5, ge=0, le=60)
    poll_s: float = Field(0.25, gt=0, le=60)  # events of a job run by another manager: store polling


class AppSettings(_Strict):
    prompt_enhancer: PromptEnhancerSettings = PromptEnhancerSettings()
    image_generator: ImageGeneratorSettings = ImageGeneratorSettings()
    segmenter: SegmenterSettings = SegmenterSettings()
    reconstructor: ReconstructorSettings = ReconstructorSettings()
    mesh_baker: MeshBakerSettings = MeshBakerSettings()
    store: StoreSettings = StoreSettings()
    limits: LimitsSettings = LimitsSettings()
    stream: StreamSettings = StreamSettings()
    timeouts: TimeoutSettings = TimeoutSettings()
    auth: AuthSettings = AuthSettings()
    # Browser origins allowed to call the API cross-origin (serve_app/headers.py); none by default.
    cors_allow_origins: list[str] = Field(default_factory=list, max_length=100)
    jobs: JobSettings = JobSettings()
    # Serve 2.60 lets any client send `x-request-timeout-seconds: 0` and
    # `x-request-disconnect-disabled: ?1`. Off: the ingress applies its own timeouts and
    # cancels on disconnect regardless. On: it follows those headers.
    honor_client_serve_headers: bool = False


class ConfigError(ValueError):
    """Raised at startup for a bad `args` block; the message lists each bad key."""


def load_settings(args: dict | None) -> AppSettings:
    try:
        return AppSettings.model_validate(args or {})
    except ValidationError as exc:
        lines = [f"  args.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ConfigError("invalid sam3d-serve configuration:\n" + "\n".join(lines)) from None
