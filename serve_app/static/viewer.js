// The page controller: wires the photo panel (photo.js), click-to-segment (segment.js), the stream
// client (stream.js), the 3D view (scene.js) and the progress display (progress.js).
//
// Test hooks exist only with ?test=1 in the URL: then window.viewer exposes the state, the scene and
// a few actions, and ?drop_frame=N skips the frame with frame_seq N, as if it were lost; when the
// next frame is a key frame anyway (the encoder sends one when a delta would not be smaller), the
// loss healed unnoticed and the next frame from N on is skipped instead, so a delta does follow a loss.

import { PhotoPanel } from "./photo.js";
import { Progress } from "./progress.js";
import { Scene, VIEWS } from "./scene.js";
import { Segmentation, maskPng } from "./segment.js";
import { HttpError, ResyncNeeded, decodeFrame, errorOf } from "./stream.js";
import { cancelJob, jobEvents, submitJob } from "./job-stream.js";
import { VoxelStreamDecoder } from "./voxel-codec.js";
import { apiFetch } from "./apikey.js";

const params = new URLSearchParams(location.search);
const TEST = params.get("test") === "1";
const DROP_FRAME = TEST && params.has("drop_frame") ? Number(params.get("drop_frame")) : null;
const BINARY = params.get("transport") !== "sse";
// Tests: close the job's events connection once after this many events (a network drop).
const DROP_CONNECTION = TEST && params.has("drop_connection") ? Number(params.get("drop_connection")) : null;
// Tests: this many geometry and appearance steps, so a run lasts long enough to interrupt.
const STEPS = TEST && params.has("steps") ? params.get("steps") : null;

const fmtBytes = (n) => (n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(1)} MB` : `${Math.max(1, Math.round(n / 1024))} kB`);
const $ = (id) => document.getElementById(id);

function freshRun() {
  return {
    phase: "idle", // idle · streaming · complete · error · stopped
    requestId: null, progress: 0, events: 0, eventCounts: {}, framesDecoded: 0,
    voxelCountsDrawn: [], resyncs: 0, decodeErrors: 0, droppedForTest: null, dropsForTest: 0, dropArmed: DROP_FRAME !== null,
    error: null, complete: null, glbTriangles: 0, splats: 0, artifactErrors: [], queuePositions: [],
    job: null, resumes: 0, nonFrameSeqs: [],
  };
}

async function startPage() {
  const state = { run: freshRun(), masks: [], segmentErrors: [], capabilities: null, segmentMode: null };
  const progress = new Progress({
    stages: $("stages"), overall: document.querySelector(".overall"), overallBar: $("overall-bar"),
    overallText: $("overall-text"), error: $("error"), log: $("log"),
  });
  const scene = new Scene($("view"));
  const viewButtons = Object.fromEntries(VIEWS.map((v) => [v, $(`show-${v}`)]));
  let mask = null; // the current segmentation {mask, width, height}
  let segmentation = null;

  // ---------------------------------------------------------------- capabilities
  try {
    const r = await apiFetch(new URL("v1/capabilities", document.baseURI));
    if (!r.ok) throw await errorOf(r);
    state.capabilities = await r.json();
  } catch (err) {
    state.capabilities = { segmenter: { routes: [] }, text_to_3d: { available: false, reason: "the server did not say what it offers" } };
    progress.fail(err.code || "capabilities", `capabilities unavailable: ${err.message}`);
  }
  const caps = state.capabilities;
  segmentation = new Segmentation(caps);
  state.segmentMode = segmentation.mode;
  $("segment-mode").textContent = {
    browser: "SAM 3: the photo is encoded once on the server, each click is decoded in your browser.",
    server: `Each click is segmented on the server (${segmentation.backend}).`,
    none: "No segmenter route: the prompts go with Generate.",
  }[segmentation.mode];
  const text = caps.text_to_3d || {};
  $("prompt").disabled = !text.available;
  $("generate-text").disabled = !text.available;
  $("text-reason").textContent = text.available ? "" : text.reason || "text-to-3D is not available";

  // ---------------------------------------------------------------- photo and segmentation
  let segmenting = null;
  let segmentAgain = false;
  async function resegment() {
    if (segmenting) {
      segmentAgain = true; // decode the latest prompts once this one is done
      return;
    }
    const prompts = { ...panel.prompts(), label: $("label").value.trim() };
    segmenting = segmentation.segment(prompts);
    try {
      const out = await segmenting;
      mask = out;
      panel.setMask(out && out.mask, out?.width, out?.height);
      if (out) {
        const area = out.mask.reduce((a, b) => a + b, 0);
        state.masks.push({ ms: Math.round(out.ms * 10) / 10, where: out.where, area });
        $("mask-info").textContent = `mask ${(100 * area / out.mask.length).toFixed(1)} % of the photo · ${out.where === "browser" ? "decoded here" : "from the server"} in ${out.ms.toFixed(0)} ms`;
      } else $("mask-info").textContent = "";
    } catch (err) {
      state.segmentErrors.push({ code: err.code, message: err.message });
      $("mask-info").textContent = `segmenting failed: ${err.message}`;
    } finally {
      segmenting = null;
      if (segmentAgain) {
        segmentAgain = false;
        resegment();
      }
    }
  }
  const panel = new PhotoPanel({
    file: $("file"), fileName: $("file-name"), wrap: $("photo-wrap"), photo: $("photo"), overlay: $("overlay"),
    summary: $("prompt-summary"), undo: $("undo"), clear: $("clear"),
  }, {
    onPhoto(photo) {
      mask = null;
      $("generate").disabled = busy;
      $("mask-info").textContent = segmentation.mode === "browser" ? "encoding the photo…" : "";
      segmentation.setPhoto(photo).then(() => {
        if (segmentation.mode === "browser") $("mask-info").textContent = "ready: click on the object";
      }, (err) => {
        state.segmentErrors.push({ code: err.code, message: err.message });
        $("mask-info").textContent = `segmenting unavailable: ${err.message}`;
      });
    },
    onPrompts: resegment,
  });
  $("label").addEventListener("change", resegment);

  // ---------------------------------------------------------------- views
  function setView(view) {
    scene.show(view);
    for (const v of VIEWS) viewButtons[v].classList.toggle("on", v === view);
    const s = scene.stats();
    $("view-info").textContent = {
      voxels: `${s.voxelCount.toLocaleString()} voxels`,
      mesh: `mesh preview · ${s.meshTriangles.toLocaleString()} triangles`,
      glb: `model.glb · ${s.glbTriangles.toLocaleString()} triangles`,
      splats: `splat.ply · ${s.splats.toLocaleString()} Gaussians`,
    }[view];
  }
  for (const v of VIEWS) viewButtons[v].addEventListener("click", () => setView(v));
  $("view").addEventListener("dblclick", () => scene.fit(scene.view));

  // ---------------------------------------------------------------- the stream
  let busy = false;
  let controller = null;
  let decoder = null;
  let keyFrameAsked = false;
  let jobControl = {};

  async function resync(reason) {
    const run = state.run;
    if (keyFrameAsked || !run.requestId) return;
    keyFrameAsked = true;
    run.resyncs++;
    progress.log(`resync: ${reason}; asking for a key frame`);
    // The job's events URL with Last-Event-ID starts with a key frame (job-stream.js).
    jobControl.reconnect?.();
  }

  async function onFrame(ev) {
    const run = state.run;
    if (run.dropArmed && ev.frame_seq >= DROP_FRAME) {
      run.dropArmed = false;
      run.droppedForTest = ev.frame_seq;
      run.dropsForTest++;
      return `frame ${ev.frame_seq} dropped on purpose (test)`;
    }
    let frame;
    try {
      frame = await decodeFrame(decoder, ev);
    } catch (err) {
      if (!(err instanceof ResyncNeeded)) run.decodeErrors++;
      resync(err.message);
      return err instanceof ResyncNeeded ? "waiting for a key frame" : "frame lost";
    }
    if (frame.key) keyFrameAsked = false;
    // Tests: a key frame right after the dropped one healed the loss before it was seen: drop again.
    if (frame.key && run.droppedForTest !== null && run.resyncs === 0 && run.dropsForTest < 10) run.dropArmed = true;
    run.framesDecoded++;
    scene.setVoxels(frame.coords, ev.type === "appearance" ? frame.colors : null, frame.gridSize);
    run.voxelCountsDrawn.push(frame.count);
    run.lastFrame = { frameSeq: frame.frameSeq ?? null, count: frame.count };
    if (scene.view === "voxels") setView("voxels");
    viewButtons.voxels.disabled = false;
    return `${frame.count.toLocaleString()} voxels`;
  }

  async function loadArtifacts(ev) {
    const url = (u) => new URL(u, document.baseURI).href;
    try {
      state.run.glbTriangles = await scene.loadGLB(url(ev.model_glb_url));
      viewButtons.glb.disabled = false;
      setView("glb");
    } catch (err) {
      state.run.artifactErrors.push(`GLB: ${err.message}`);
      progress.fail("glb", `the GLB could not be shown: ${err.message}`);
    }
    try {
      state.run.splats = await scene.loadSplats(url(ev.gaussian_splat_url));
      viewButtons.splats.disabled = false;
    } catch (err) {
      state.run.artifactErrors.push(`splats: ${err.message}`);
      progress.log(`the splats could not be shown: ${err.message}`);
    }
  }

  function onComplete(ev) {
    const run = state.run;
    run.phase = "complete";
    run.complete = ev;
    const url = (u) => new URL(u, document.baseURI).href;
    $("dl-glb").href = url(ev.model_glb_url);
    $("dl-ply").href = url(ev.gaussian_splat_url);
    $("dl-mask").href = url(ev.mask_url);
    const sizes = ev.artifacts || {};
    $("dl-glb-size").textContent = sizes["model.glb"] ? fmtBytes(sizes["model.glb"].size_bytes) : "";
    $("dl-ply-size").textContent = sizes["splat.ply"] ? fmtBytes(sizes["splat.ply"].size_bytes) : "";
    const textured = sizes["model_textured.glb"];
    $("dl-tex-item").hidden = !textured;
    if (textured) {
      $("dl-tex").href = url(textured.url);
      $("dl-tex-size").textContent = fmtBytes(textured.size_bytes);
    }
    const timings = Object.entries(ev.timings || {}).map(([k, v]) => `${k.replace("_", " ")} ${v.toFixed(2)} s`);
    $("timings").textContent = `done in ${ev.t.toFixed(1)} s${timings.length ? ` · ${timings.join(" · ")}` : ""}`;
    $("downloads").hidden = false;
    progress.done();
    run.artifacts = loadArtifacts(ev);
    return `${Object.keys(sizes).length} artifacts`;
  }

  async function onEvent(ev) {
    const run = state.run;
    run.events++;
    run.eventCounts[ev.type] = (run.eventCounts[ev.type] || 0) + 1;
    run.requestId ||= ev.request_id;
    if (ev.type !== "geometry" && ev.type !== "appearance") run.nonFrameSeqs.push(ev.seq);
    if (typeof ev.progress === "number" && ev.progress >= run.progress) {
      run.progress = ev.progress;
      progress.setOverall(ev.progress);
    }
    let detail = ev.message || "";
    if (ev.type === "geometry" || ev.type === "appearance") detail = await onFrame(ev);
    else if (ev.type === "mesh_preview") {
      try {
        detail = `${scene.setMeshPreview(ev).toLocaleString()} triangles`;
        viewButtons.mesh.disabled = false;
      } catch (err) {
        detail = `mesh preview unusable: ${err.message}`;
      }
    } else if (ev.type === "glb_ready") detail = `GLB ${fmtBytes(ev.size_bytes)}`;
    else if (ev.type === "texture_ready") detail = `textured GLB ${fmtBytes(ev.size_bytes)}`;
    else if (ev.type === "complete") detail = onComplete(ev);
    else if (ev.type === "error") {
      run.phase = "error";
      run.error = { code: ev.code, message: ev.message, status: null };
      progress.fail(ev.code, ev.message);
      return;
    } else if (ev.type === "loading" && ev.queue_position > 0) {
      detail = `number ${ev.queue_position} in line${ev.queue_length > 1 ? ` of ${ev.queue_length}` : ""}`;
      run.queuePositions.push(ev.queue_position);
    } else if (ev.type === "loading" && ev.mask_url && !mask) {
      detail = `mask ${(100 * ev.mask_fraction).toFixed(1)} %`;
    }
    const steps = ev.total_steps ? `${ev.step}/${ev.total_steps}` : "";
    progress.stage(ev.stage, ev.step, ev.total_steps, [steps, detail].filter(Boolean).join(" · "));
    progress.log(`${(ev.t ?? 0).toFixed(2).padStart(6)} s  ${ev.type.padEnd(12)} ${(ev.stage || "").padEnd(11)} ${steps.padStart(5)}  ${detail}`);
  }

  async function buildForm(textPrompt) {
    const form = new FormData();
    if (textPrompt) {
      form.append("prompt", textPrompt);
    } else {
      const photo = panel.photo;
      const { points, box } = panel.prompts();
      form.append("image", photo.file, photo.file.name || "photo");
      if (mask && mask.mask.some((v) => v)) {
        // Exactly the mask the person saw over the photo (at the photo's size: decoded in the browser
        // it was shown at a view size, and the same logits are now scaled to the photo).
        const full = mask.full ? mask.full() : mask;
        form.append("mask", await maskPng(full.mask, full.width, full.height), "mask.png");
      } else {
        if (points.length) form.append("point_prompts", JSON.stringify(points));
        if (box) form.append("box_prompts", JSON.stringify([box]));
        if ($("label").value.trim()) form.append("segmentation_label", $("label").value.trim());
      }
    }
    form.append("stream_geometry_every", $("geo-every").value || "1");
    form.append("stream_colors_every", $("col-every").value || "1");
    form.append("encoding", "compact");
    return form;
  }

  async function generate(textPrompt = null) {
    if (busy || (!textPrompt && !panel.photo)) return;
    busy = true;
    state.run = { ...freshRun(), phase: "streaming", usedMask: !textPrompt && !!mask };
    const run = state.run;
    decoder = new VoxelStreamDecoder();
    keyFrameAsked = false;
    $("generate").disabled = $("generate-text").disabled = true;
    $("cancel").hidden = false;
    $("downloads").hidden = true;
    $("view-empty").hidden = true;
    for (const v of VIEWS) viewButtons[v].disabled = true;
    scene.reset();
    setView("voxels");
    progress.reset(!!textPrompt);
    progress.clearLog();
    progress.stage("request", 0, 0, "sending…"); // visible from the first moment, before any answer
    controller = new AbortController();
    try {
      const form = await buildForm(textPrompt);
      if (STEPS) for (const k of ["geometry_steps", "appearance_steps"]) form.append(k, STEPS);
      // A job, not /v1/generate: a dropped connection resumes with Last-Event-ID (job-stream.js).
      run.job = await submitJob(form, { signal: controller.signal });
      run.requestId = run.job.job_id;
      progress.stage("request", 0, 0, "accepted, waiting for the first stage…");
      const events = jobEvents(run.job, {
        binary: BINARY, signal: controller.signal, dropAfter: DROP_CONNECTION, control: (jobControl = {}),
        onSkip: (s) => progress.log(`skipped: ${s}`),
        onResume: (last, attempt, reason) => {
          run.resumes++;
          progress.log(`connection lost (${reason}); resuming after event ${last} (attempt ${attempt})`);
        },
      });
      for await (const ev of events) await onEvent(ev);
      if (run.phase === "streaming") {
        run.phase = "error";
        run.error = { code: "incomplete", message: "the stream ended without a `complete` event" };
        progress.fail(run.error.code, run.error.message);
      }
    } catch (err) {
      if (controller.signal.aborted) {
        run.phase = "stopped";
        progress.stopped();
      } else {
        run.phase = "error";
        const status = err instanceof HttpError ? err.status : null;
        run.error = { code: err.code || "network", message: err.message, status };
        progress.fail(run.error.code, status ? err.message : `the connection failed: ${err.message}`);
      }
    } finally {
      busy = false;
      controller = null;
      $("generate").disabled = !panel.photo;
      $("generate-text").disabled = !(caps.text_to_3d || {}).available;
      $("cancel").hidden = true;
      viewButtons.voxels.disabled = !scene.has("voxels");
      viewButtons.mesh.disabled = !scene.has("mesh");
    }
  }

  $("generate").addEventListener("click", () => generate());
  $("generate-text").addEventListener("click", () => $("prompt").value.trim() && generate($("prompt").value.trim()));
  $("cancel").addEventListener("click", () => {
    if (!controller) return;
    controller.abort();
    const run = state.run;
    // The job outlives the connection: stop it too.
    if (run.job) cancelJob(run.job).then((status) => { run.cancelStatus = status; });
  });
  state.phase = "ready";
  if (TEST) window.viewer = { state, scene, segmentation, panel, setView };
}

startPage();
