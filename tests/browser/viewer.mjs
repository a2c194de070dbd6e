// Drives the viewer (GET /?test=1) in the system Chromium with WebGL through SwiftShader, the way a
// person uses it, against tests/viewer_server.py (embedded backends, no weights; --sam3: a tiny
// random-weight SAM 3, so clicks are decoded in the browser).
//
//   node tests/browser/viewer.mjs SERVER.json PHOTO.png EXIF_PHOTO.jpg OUT_DIR
//
// SERVER.json is the line viewer_server.py prints. Checks, each recorded in the report:
//  1. the page reads /v1/capabilities (segmenting mode; text box disabled with the reason);
//  2. a 4xx from POST /v1/jobs (the viewer runs jobs) shows the server's message;
//  3. a click on the cup gives a mask overlay (decoded in the browser with SAM 3: the same mask as
//     POST /v1/segment for the same click);
//  4. Generate, first waiting behind another client's request (the page shows its place in line for
//     the reconstructor's one slot): the voxel instance count drawn grows across frames, the last frame's count is what
//     the InstancedMesh draws, the voxel view is not blank; the GLB loads with its file's triangle
//     count; the splats load with the PLY's count; a meshopt-compressed GLB loads; screenshots;
//  5. a lost frame (?drop_frame) is recovered through a key frame (a reconnection to the job's
//     events with Last-Event-ID, which starts with one); a dropped connection
//     (?drop_connection) resumes through the job's events URL with Last-Event-ID to the same final
//     picture as the server's, no non-frame event missing or repeated; Stop ends a run and
//     cancels its job;
//  6. an EXIF-rotated JPEG shows upright and a click on it lands on the object;
//  7. no page errors, no failed request but the deliberate one, no request to another host.
// Prints one JSON report and exits 0 when every check passed, 1 when one failed, 2 when the browser
// could not be driven at all. Needs playwright-core (npm) and Chromium at $CHROMIUM or /usr/bin/chromium.

import { mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";

import { chromium } from "playwright-core";

const [serverJson, photoPath, exifPath, outDir] = process.argv.slice(2);
if (!serverJson || !photoPath || !exifPath || !outDir) {
  console.error("usage: node tests/browser/viewer.mjs SERVER.json PHOTO EXIF_PHOTO OUT_DIR");
  process.exit(2);
}
const server = JSON.parse(readFileSync(serverJson, "utf8"));
const base = server.url;
const CUP = { x: 300, y: 230 }; // on the red cup, below its rim, in coffee.png (600×400)
const TIMEOUT_MS = Number(process.env.VIEWER_TIMEOUT_MS || 180_000);
export const FLAGS = ["--no-sandbox", "--enable-unsafe-swiftshader", "--use-angle=swiftshader", "--ignore-gpu-blocklist",
  "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"];

mkdirSync(outDir, { recursive: true });
const failures = [];
const checks = {};
function check(name, ok, detail) {
  checks[name] = { ok: !!ok, detail };
  if (!ok) failures.push(`${name}: ${JSON.stringify(detail)}`);
}

/** Triangles in a GLB file (indexed primitives), read here in Node from its JSON chunk. */
function glbTriangles(bytes) {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const json = JSON.parse(new TextDecoder().decode(bytes.subarray(20, 20 + dv.getUint32(12, true))));
  let n = 0;
  for (const m of json.meshes) for (const p of m.primitives) n += json.accessors[p.indices].count / 3;
  return n;
}

const plyVertices = (bytes) => Number(/element vertex (\d+)/.exec(new TextDecoder().decode(bytes.subarray(0, 400)))[1]);

async function clickPhoto(page, at) {
  const box = await page.locator("#overlay").boundingBox();
  const size = await page.evaluate(() => [document.getElementById("photo").naturalWidth, document.getElementById("photo").naturalHeight]);
  await page.mouse.click(box.x + ((at.x + 0.5) / size[0]) * box.width, box.y + ((at.y + 0.5) / size[1]) * box.height);
}

async function choosePhoto(page, path) {
  await page.setInputFiles("#file", path);
  await page.waitForFunction(() => !document.getElementById("generate").disabled);
}

async function waitMasks(page, n) {
  await page.waitForFunction((k) => window.viewer.state.masks.length >= k || window.viewer.state.segmentErrors.length > 0,
    n, { timeout: TIMEOUT_MS });
  return page.evaluate(() => ({ masks: window.viewer.state.masks, errors: window.viewer.state.segmentErrors }));
}

/** Another client's stream that holds the reconstructor's one slot (tests/viewer_server.py) from its
 * first frame until `signal` aborts it. Resolves once it holds the slot. */
async function holdSlot(photoPath, signal) {
  const form = new FormData();
  form.append("image", new Blob([readFileSync(photoPath)], { type: "image/png" }), "other.png");
  form.append("point_prompts", JSON.stringify([{ ...CUP, label: 1 }]));
  form.append("geometry_steps", "100"); // long enough to still run when the page's request arrives
  const res = await fetch(`${base}/v1/generate`, { method: "POST", body: form, signal });
  if (!res.ok) throw new Error(`the slot-holding request got ${res.status}`);
  const reader = res.body.getReader();
  let text = "";
  while (!text.includes("event: geometry")) {
    const { value, done } = await reader.read();
    if (done) throw new Error("the slot-holding request ended before its first frame");
    text += new TextDecoder().decode(value);
  }
  return reader;
}

async function runToEnd(page, { clicked = false } = {}) {
  const t0 = Date.now();
  if (!clicked) await page.click("#generate");
  await page.waitForFunction(() => window.viewer.state.run.phase !== "streaming", null, { timeout: TIMEOUT_MS });
  await page.evaluate(() => window.viewer.state.run.artifacts);
  const run = await page.evaluate(() => JSON.parse(JSON.stringify({ ...window.viewer.state.run, artifacts: undefined, complete: undefined })));
  return { seconds: (Date.now() - t0) / 1000, run };
}

async function open(context, url, errors) {
  const page = await context.newPage();
  page.on("pageerror", (err) => errors.page.push(String(err)));
  page.on("console", (msg) => {
    // Chromium logs every 4xx/5xx response as a console error; those are checked below. SwiftShader
    // GPU stall notices are performance warnings, not errors of the page.
    if (msg.type() === "error" && !msg.text().startsWith("Failed to load resource")) errors.page.push(`console: ${msg.text()}`);
  });
  page.on("request", (r) => {
    const u = new URL(r.url());
    if (!["blob:", "data:"].includes(u.protocol) && u.host !== new URL(base).host) errors.foreign.push(r.url());
  });
  page.on("response", (r) => {
    if (r.status() >= 400) errors.http.push(`${r.request().method()} ${new URL(r.url()).pathname} ${r.status()}`);
  });
  await page.goto(url, { waitUntil: "load" });
  await page.waitForFunction(() => window.viewer && window.viewer.state.phase === "ready", null, { timeout: 60_000 });
  return page;
}

const report = { base, checks, failures };
let browser;
try {
  browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", headless: true, args: FLAGS });
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  context.setDefaultTimeout(30_000);
  const errors = { page: [], http: [], foreign: [] };
  // steps=24: the job runs long enough that the page, which connects to its events after the
  // 202, sees the geometry grow even on a loaded machine (a job does not wait for its reader).
  let page = await open(context, `${base}/?test=1&steps=24`, errors);

  // 1. Capabilities.
  const caps = await page.evaluate(() => ({ mode: window.viewer.state.segmentMode, text: document.getElementById("text-reason").textContent,
    promptDisabled: document.getElementById("prompt").disabled, webgl2: window.viewer.scene.renderer.capabilities.isWebGL2 }));
  const sam3 = caps.mode === "browser";
  report.segment_mode = caps.mode;
  check("capabilities_shape_the_page", caps.webgl2 && ["browser", "server"].includes(caps.mode) && caps.promptDisabled &&
    /image generator/.test(caps.text), caps);

  // 2. A refused request shows the server's reason.
  await choosePhoto(page, photoPath);
  await page.click("#input-card details summary");
  await page.fill("#geo-every", "50");
  const bad = (await runToEnd(page)).run;
  const shown = await page.textContent("#error");
  check("refusal_shows_server_message", bad.phase === "error" && bad.error.status === 422 && shown.includes(bad.error.message) &&
    /stream_geometry_every/.test(shown), { error: bad.error, shown });
  await page.fill("#geo-every", "1");

  // 3. A click gives a mask.
  await clickPhoto(page, CUP);
  const seg = await waitMasks(page, 1);
  const m = seg.masks[0] || {};
  check("click_shows_mask", seg.errors.length === 0 && m.area > 1000 && m.area < 600 * 400 &&
    m.where === (sam3 ? "browser" : "server"), seg);
  report.click_to_mask_ms = seg.masks.map((x) => x.ms);
  const overlayTinted = await page.evaluate(() => {
    const c = document.getElementById("overlay");
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
    return n / (c.width * c.height);
  });
  check("mask_overlay_drawn", overlayTinted > 0.02, overlayTinted);
  if (sam3) {
    // The browser's mask is the server's for the same click (same embedding, same decoder).
    const agree = await page.evaluate(async (cup) => {
      const { segmentation } = window.viewer;
      const mine = await segmentation.sam3.decode([{ x: cup.x, y: cup.y, label: 1 }], null, 600, 400);
      const r = await fetch("v1/segment", { method: "POST", headers: { "content-type": "application/json" },
        body: JSON.stringify({ embedding_id: segmentation.sam3.embedding.id, points: [{ x: cup.x, y: cup.y, label: 1 }], max_instances: 0 }) });
      const out = await r.json();
      const bmp = await createImageBitmap(new Blob([Uint8Array.from(atob(out.mask_png_b64), (c) => c.charCodeAt(0))]));
      const cv = new OffscreenCanvas(600, 400);
      const ctx = cv.getContext("2d");
      ctx.drawImage(bmp, 0, 0);
      const d = ctx.getImageData(0, 0, 600, 400).data;
      let same = 0;
      for (let i = 0; i < mine.mask.length; i++) same += (d[4 * i] > 127 ? 1 : 0) === mine.mask[i] ? 1 : 0;
      return { agreement: same / mine.mask.length, ms: mine.ms, size: out.image_size };
    }, CUP);
    // The server decodes from its full-precision features, the browser from the compact payload
    // (docs/sam3-embedding-format.md: 99.4 % agreement at full size).
    check("browser_mask_matches_server", agree.agreement >= 0.99, agree);
    // Decode time per click once warm (the tiny decoder in CI).
    const times = await page.evaluate(async (cup) => {
      const out = [];
      for (let i = 0; i < 10; i++) out.push((await window.viewer.segmentation.sam3.decode([{ x: cup.x + i, y: cup.y, label: 1 }], null, 600, 400)).ms);
      return out;
    }, CUP);
    report.warm_click_to_mask_ms = times;
  }

  // 3b. A box dragged around the cup replaces nothing but adds a box; then Undo brings back the click
  // alone. With SAM 3 a text label goes to the server with the embedding id.
  {
    const before = await page.evaluate(() => window.viewer.state.masks.length);
    const box = await page.locator("#overlay").boundingBox();
    const at = (x, y) => [box.x + (x / 600) * box.width, box.y + (y / 400) * box.height];
    await page.mouse.move(...at(200, 120));
    await page.mouse.down();
    await page.mouse.move(...at(300, 200), { steps: 4 });
    await page.mouse.move(...at(400, 330), { steps: 4 });
    await page.mouse.up();
    const boxed = await waitMasks(page, before + 1);
    const summary = await page.textContent("#prompt-summary");
    check("box_drag_gives_mask", /box 200×210/.test(summary) && boxed.masks.length === before + 1 && boxed.errors.length === 0,
      { summary, last: boxed.masks.at(-1), errors: boxed.errors });
    if (sam3) {
      await page.fill("#label", "cup");
      await page.dispatchEvent("#label", "change");
      const labelled = await waitMasks(page, before + 2);
      check("label_segments_on_server", labelled.masks.length === before + 2 && labelled.masks.at(-1).where === "server",
        { last: labelled.masks.at(-1), errors: labelled.errors });
      await page.fill("#label", "");
    }
    const n = await page.evaluate(() => window.viewer.state.masks.length);
    await page.click("#undo");
    await waitMasks(page, n + 1);
    check("undo_restores_click", /^1 object point, 0 background points, no box/.test(await page.textContent("#prompt-summary")),
      await page.textContent("#prompt-summary"));
  }

  // 4. Generate while another request holds the reconstructor's one slot: the run shows its place
  // in line ("Waiting for a GPU"), then streams once the other request is stopped.
  const other = new AbortController();
  await holdSlot(photoPath, other.signal);
  await page.click("#generate");
  await page.waitForFunction(() => window.viewer.state.run.queuePositions.length > 0 || window.viewer.state.run.phase !== "streaming",
    null, { timeout: TIMEOUT_MS, polling: 20 });
  const queueRow = await page.$eval('#stages li[data-stage="queue"]', (li) => [li.className, li.querySelector(".detail").textContent]);
  other.abort();
  const { run, seconds } = await runToEnd(page, { clicked: true });
  check("queue_position_shown", run.queuePositions[0] === 1 && queueRow[0] === "active" && /number 1 in line/.test(queueRow[1]),
    { positions: run.queuePositions, row: queueRow });
  report.seconds_to_complete = seconds;
  report.main_run = { eventCounts: run.eventCounts, voxelCountsDrawn: run.voxelCountsDrawn, usedMask: run.usedMask };
  check("complete", run.phase === "complete" && run.usedMask, { phase: run.phase, error: run.error, usedMask: run.usedMask });
  const counts = run.voxelCountsDrawn;
  check("voxel_instances_grow", counts.length >= 3 && counts[0] < counts[counts.length - 1] &&
    counts.every((c, i) => i === 0 || c >= counts[i - 1] * 0.9), counts);
  check("every_frame_drawn", counts.length === (run.eventCounts.geometry || 0) + (run.eventCounts.appearance || 0), { counts: counts.length, ev: run.eventCounts });
  const stages = await page.$$eval("#stages li:not([hidden])", (rows) => rows.map((r) => [r.dataset.stage, r.className]));
  check("stages_done", stages.length >= 5 && stages.every(([, c]) => c === "done"), stages);

  await page.click("#show-voxels");
  const vox = await page.evaluate(() => { const px = window.viewer.scene.pixelStats(); return { stats: window.viewer.scene.stats(), px }; });
  check("voxel_view_draws_last_frame", vox.stats.instancesDrawn === counts[counts.length - 1] && vox.px.objectFraction > 0.03 &&
    vox.px.distinctColours >= 30, vox);
  await page.screenshot({ path: join(outDir, "viewer-voxels.png") });

  await page.click("#show-mesh");
  const mesh = await page.evaluate(() => { const px = window.viewer.scene.pixelStats(); return { stats: window.viewer.scene.stats(), px }; });
  check("mesh_preview_view", mesh.stats.view === "mesh" && mesh.stats.meshTriangles > 1000 &&
    mesh.stats.triangles === mesh.stats.meshTriangles && mesh.px.objectFraction > 0.03, mesh);
  await page.screenshot({ path: join(outDir, "viewer-mesh.png") });

  const done = await page.evaluate(() => ({ glb: document.getElementById("dl-glb").href, ply: document.getElementById("dl-ply").href }));
  const glbBytes = new Uint8Array(await (await fetch(done.glb)).arrayBuffer());
  const plyBytes = new Uint8Array(await (await fetch(done.ply)).arrayBuffer());
  await page.click("#show-glb");
  const glb = await page.evaluate(() => { const px = window.viewer.scene.pixelStats(); return { stats: window.viewer.scene.stats(), px }; });
  check("glb_view_has_file_triangles", glb.stats.view === "glb" && glb.stats.glbTriangles === glbTriangles(glbBytes) &&
    glb.stats.triangles === glb.stats.glbTriangles && glb.px.objectFraction > 0.03, { ...glb, file: glbTriangles(glbBytes) });
  await page.screenshot({ path: join(outDir, "viewer-glb.png") });

  await page.click("#show-splats");
  await page.waitForTimeout(1500); // Spark sorts in a worker; let it draw a few frames
  const splat = await page.evaluate(() => { const px = window.viewer.scene.pixelStats(); return { stats: window.viewer.scene.stats(), px }; });
  check("splats_load_with_file_count", splat.stats.splats === plyVertices(plyBytes) && splat.px.objectFraction > 0.03,
    { ...splat, file: plyVertices(plyBytes) });
  await page.screenshot({ path: join(outDir, "viewer-splats.png") });

  const meshopt = await page.evaluate(async (url) => {
    const n = await window.viewer.scene.loadGLB(url);
    window.viewer.setView("glb");
    return { triangles: n, px: window.viewer.scene.pixelStats() };
  }, server.meshopt_glb);
  check("meshopt_glb_loads", meshopt.triangles === server.meshopt_triangles && meshopt.px.objectFraction > 0.03, meshopt);

  // 5. A lost frame is recovered through a key frame; Stop ends a run.
  await page.close();
  page = await open(context, `${base}/?test=1&drop_frame=3&drop_connection=12&steps=100`, errors);
  await choosePhoto(page, photoPath);
  await clickPhoto(page, CUP); // SAM 3 needs a prompt; GrabCut would take the border as background
  await waitMasks(page, 1);
  const lossy = (await runToEnd(page)).run;
  // The first drop may heal unnoticed (the next frame is a key frame); the viewer then drops another.
  check("resync_after_lost_frame", lossy.phase === "complete" && lossy.droppedForTest >= 3 && lossy.resyncs >= 1 &&
    lossy.decodeErrors === 0, { phase: lossy.phase, dropped: lossy.droppedForTest, drops: lossy.dropsForTest,
    resyncs: lossy.resyncs, resumes: lossy.resumes, events: lossy.eventCounts, decoded: lossy.framesDecoded });
  // The server's own picture of the finished job: its log from the start ends with one key frame.
  const log = await (await fetch(`${base}/v1/jobs/${lossy.job.job_id}/events`)).text();
  const logged = log.split("\n").filter((l) => l.startsWith("data: ")).map((l) => JSON.parse(l.slice(6)));
  const finalKey = logged.find((e) => e.key_frame);
  const expectedSeqs = logged.filter((e) => !e.key_frame).map((e) => e.seq);
  check("resume_after_dropped_connection", lossy.phase === "complete" && lossy.resumes >= 1 &&
    lossy.lastFrame.count === finalKey.voxel_count && lossy.nonFrameSeqs.join() === expectedSeqs.join(),
  { phase: lossy.phase, resumes: lossy.resumes, drawn: lossy.lastFrame, server: finalKey.voxel_count,
    seqs: lossy.nonFrameSeqs, expectedSeqs });
  await page.click("#generate");
  // Stop as soon as the job is accepted (the embedded job lasts about a second).
  await page.waitForFunction(() => window.viewer.state.run.job !== null, null, { timeout: TIMEOUT_MS, polling: 10 });
  await page.click("#cancel");
  await page.waitForFunction(() => window.viewer.state.run.phase !== "streaming", null, { timeout: TIMEOUT_MS });
  const stopped = await page.evaluate(() => ({ phase: window.viewer.state.run.phase, generateEnabled: !document.getElementById("generate").disabled,
    job: window.viewer.state.run.job.job_id, steps: window.viewer.state.run.eventCounts }));
  let jobState = null;
  for (let i = 0; i < 100 && !["cancelled", "succeeded", "failed"].includes(jobState); i++) {
    jobState = (await (await fetch(`${base}/v1/jobs/${stopped.job}`)).json()).state;
    await new Promise((r) => setTimeout(r, 100));
  }
  check("stop_ends_the_run", stopped.phase === "stopped" && stopped.generateEnabled && jobState === "cancelled",
    { ...stopped, jobState, cancelStatus: await page.evaluate(() => window.viewer.state.run.cancelStatus) });

  // 6. A phone photo stored sideways with EXIF orientation 6 shows upright; a click lands on the cup.
  await choosePhoto(page, exifPath);
  const dims = await page.evaluate(() => [document.getElementById("photo").naturalWidth, document.getElementById("photo").naturalHeight]);
  const before = await page.evaluate(() => window.viewer.state.masks.length);
  await clickPhoto(page, CUP);
  const exifSeg = await waitMasks(page, before + 1);
  if (sam3) {  // on a loaded machine the mask can come back before the embedding is kept
    await page.waitForFunction(() => window.viewer.segmentation.sam3?.embedding, null, { timeout: TIMEOUT_MS });
  }
  const onPhoto = await page.evaluate((cup) => {
    const s = window.viewer.segmentation;
    // GrabCut: the mask holds the clicked pixel. SAM 3: the server embedded the upright photo.
    return { onCup: s.last ? s.last.mask[cup.y * 600 + cup.x] : null, embedded: s.sam3 ? s.sam3.embedding.header.original_size : null };
  }, CUP);
  check("exif_photo_upright", dims[0] === 600 && dims[1] === 400 && exifSeg.errors.length === 0 && exifSeg.masks.length === before + 1 &&
    (sam3 ? onPhoto.embedded.join() === "400,600" : onPhoto.onCup === 1), { dims, masks: exifSeg.masks, ...onPhoto });
  await page.screenshot({ path: join(outDir, "viewer-exif.png") });

  check("no_page_errors", errors.page.length === 0, errors.page);
  check("only_the_deliberate_http_error", errors.http.length === 1 && errors.http[0] === "POST /v1/jobs 422", errors.http);
  check("no_request_leaves_the_host", errors.foreign.length === 0, errors.foreign);
} catch (err) {
  report.crash = String(err && err.stack ? err.stack : err);
  failures.push(`crash: ${err}`);
} finally {
  if (browser) await browser.close().catch(() => {});
}
report.ok = failures.length === 0;
console.log(JSON.stringify(report));
process.exit(report.crash ? 2 : report.ok ? 0 : 1);
