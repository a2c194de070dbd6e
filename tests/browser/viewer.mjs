// Drives the bundled viewer (GET /) in the system Chromium, the way a person uses it:
//
//   node tests/browser/viewer.mjs BASE_URL PHOTO.png SCREENSHOT.png [MIDSTREAM.png]
//
// 1. A bad option (a frame every 50 steps) must show the server's 422 error message.
// 2. Picks the photo, clicks on the cup, presses Generate and waits for `complete`; checks the
//    progress reached 100 %, geometry and appearance frames were drawn, the canvas shows a
//    reddish object in many colours (mesh and voxel views), the GLB link downloads (200, glTF);
//    saves a screenshot.
// 3. Reloads, starts a run and stops it with the Stop button after its first frame.
// 4. Then, with ?drop_frame=8 (the page skips that frame as if lost; the frames after it are
//    deltas on this photo): the viewer must ask for a key frame and end on the server's last frame.
// No script errors anywhere, and no failed HTTP request but the deliberate 422.
//
// Prints one JSON object ({ok, failures, checks, ...}) and exits 0 when every check passed,
// 1 when one failed, 2 when the browser could not be driven at all.
// Needs playwright-core (npm) and Chromium at $CHROMIUM or /usr/bin/chromium.

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { chromium } from "playwright-core";

const [base, photoPath, shotPath, midShotPath] = process.argv.slice(2);
if (!base || !photoPath || !shotPath) {
  console.error("usage: node tests/browser/viewer.mjs BASE_URL PHOTO SCREENSHOT [MIDSTREAM_SCREENSHOT]");
  process.exit(2);
}
const CUP = { x: 300, y: 230 }; // on the red cup, below its rim, in coffee.png (600×400)
const TIMEOUT_MS = Number(process.env.VIEWER_TIMEOUT_MS || 120_000);
const FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];

const failures = [];
const checks = {};
function check(name, ok, detail) {
  checks[name] = { ok: !!ok, detail };
  if (!ok) failures.push(`${name}: ${JSON.stringify(detail)}`);
}

/** Canvas statistics, computed in the page: object pixels are those unlike their row's edge pixel. */
function canvasStats() {
  const c = document.getElementById("view");
  const { width: w, height: h } = c;
  const d = c.getContext("2d").getImageData(0, 0, w, h).data;
  const colours = new Set();
  let object = 0;
  let reddish = 0;
  for (let y = 0; y < h; y++) {
    const e = 4 * y * w;
    for (let x = 0; x < w; x++) {
      const i = e + 4 * x;
      const r = d[i], g = d[i + 1], b = d[i + 2];
      if (Math.abs(r - d[e]) + Math.abs(g - d[e + 1]) + Math.abs(b - d[e + 2]) < 6) continue;
      object++;
      colours.add(((r >> 3) << 10) | ((g >> 3) << 5) | (b >> 3));
      if (r >= 80 && r > 1.5 * g && r > 1.5 * b) reddish++;
    }
  }
  return { width: w, height: h, objectFraction: object / (w * h), distinctColours: colours.size,
    reddishFraction: object ? reddish / object : 0 };
}

async function choosePhotoAndClickCup(page) {
  await page.setInputFiles("#file", photoPath);
  await page.waitForFunction(() => !document.getElementById("generate").disabled);
  const box = await page.locator("#overlay").boundingBox();
  const size = await page.evaluate(() => [document.getElementById("photo").naturalWidth, document.getElementById("photo").naturalHeight]);
  await page.mouse.click(box.x + (CUP.x / size[0]) * box.width, box.y + (CUP.y / size[1]) * box.height);
  return page.textContent("#prompt-summary");
}

async function runToEnd(page) {
  const t0 = Date.now();
  await page.click("#generate");
  await page.waitForFunction(() => ["complete", "error", "stopped"].includes(window.viewerState.phase) &&
    window.viewerState.phase !== "streaming", null, { timeout: TIMEOUT_MS });
  const state = await page.evaluate(() => JSON.parse(JSON.stringify({ ...window.viewerState, complete: undefined })));
  return { seconds: (Date.now() - t0) / 1000, state };
}

async function newPage(context, pageErrors, httpErrors) {
  const page = await context.newPage();
  page.on("pageerror", (err) => pageErrors.push(String(err)));
  page.on("console", (msg) => {
    // Chromium logs every 4xx/5xx response as a console error; those are checked below.
    if (msg.type() === "error" && !msg.text().startsWith("Failed to load resource")) pageErrors.push(`console: ${msg.text()}`);
  });
  page.on("response", (r) => {
    if (r.status() >= 400) httpErrors.push(`${r.request().method()} ${new URL(r.url()).pathname} ${r.status()}`);
  });
  return page;
}

const profile = mkdtempSync(join(tmpdir(), "viewer-chromium-"));
let context;
const report = { base, checks, failures };
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: FLAGS,
    viewport: { width: 1280, height: 900 },
  });
  const pageErrors = [];
  const httpErrors = [];
  context.setDefaultTimeout(15_000);
  let page = await newPage(context, pageErrors, httpErrors);
  await page.goto(`${base}/`, { waitUntil: "load" });
  await page.waitForFunction(() => window.viewerState && window.viewerState.phase === "idle");

  // 1. A 4xx answer shows the server's error.message.
  await page.setInputFiles("#file", photoPath);
  await page.waitForFunction(() => !document.getElementById("generate").disabled);
  await page.click("#input-card details summary"); // the options are folded away
  await page.fill("#geo-every", "50");
  const bad = await runToEnd(page);
  const shown = await page.textContent("#error");
  check("bad_request_shows_server_message",
    bad.state.phase === "error" && bad.state.error.status === 422 && shown.includes(bad.state.error.message) &&
    /stream_geometry_every/.test(shown), { phase: bad.state.phase, error: bad.state.error, shown });
  await page.fill("#geo-every", "1");

  // 2. The object takes shape.
  const summary = await choosePhotoAndClickCup(page);
  check("click_adds_object_point", /^1 object point, 0 background points/.test(summary), summary);
  let midShot = null;
  if (midShotPath) {
    midShot = page.waitForFunction(() => window.viewerState.geometryFramesDrawn >= 5, null, { timeout: TIMEOUT_MS, polling: 20 })
      .then(() => page.screenshot({ path: midShotPath })).catch((err) => pageErrors.push(`mid-stream screenshot: ${err}`));
  }
  const run = await runToEnd(page);
  await midShot;
  const s = run.state;
  report.seconds_to_complete = run.seconds;
  check("complete", s.phase === "complete", { phase: s.phase, error: s.error });
  const pct = (await page.textContent("#overall-text")).trim();
  check("progress_100", s.progress === 1 && pct === "100 %", { progress: s.progress, shown: pct });
  check("geometry_frames_drawn", s.geometryFramesDrawn >= 2, s.geometryFramesDrawn);
  check("appearance_frames_drawn", s.appearanceFramesDrawn >= 2, s.appearanceFramesDrawn);
  check("mesh_drawn", s.meshDrawn && s.view === "mesh", { meshDrawn: s.meshDrawn, view: s.view });
  const stageText = await page.$$eval("#stages li:not([hidden])", (rows) => rows.map((r) => [r.dataset.stage, r.className]));
  check("stages_done", stageText.length >= 5 && stageText.every(([, c]) => c === "done"), stageText);

  const meshPixels = await page.evaluate(canvasStats);
  await page.click("#show-voxels");
  const voxelPixels = await page.evaluate(canvasStats);
  for (const [name, px] of [["mesh", meshPixels], ["voxels", voxelPixels]]) {
    check(`canvas_${name}_not_blank`, px.objectFraction > 0.03 && px.distinctColours >= 30, px);
    check(`canvas_${name}_reddish_cup`, px.reddishFraction > 0.05, px);
  }

  const href = await page.getAttribute("#dl-glb", "href");
  const glb = await page.evaluate(async (url) => {
    const r = await fetch(url);
    const bytes = new Uint8Array(await r.arrayBuffer());
    return { status: r.status, type: r.headers.get("content-type"), size: bytes.length,
      magic: String.fromCharCode(...bytes.subarray(0, 4)) };
  }, href);
  check("glb_link_downloads", glb.status === 200 && glb.magic === "glTF" && glb.size > 1000 &&
    href === s.glbUrl && new URL(href).pathname.endsWith("/model.glb"), { href, ...glb });
  const otherLinks = await page.$$eval("#downloads a", (as) => as.map((a) => a.href));
  check("download_links", otherLinks.length === 3 && otherLinks.every((u) => u.includes("/v1/artifacts/")), otherLinks);

  await page.click("#show-mesh");
  await page.dblclick("#view"); // back to the home view, so the screenshot does not depend on timing
  await page.screenshot({ path: shotPath, fullPage: true });
  report.screenshot = shotPath;
  report.main_run = {
    events: s.events, eventCounts: s.eventCounts, geometryFramesDrawn: s.geometryFramesDrawn,
    appearanceFramesDrawn: s.appearanceFramesDrawn, voxelCount: s.voxelCount, renderMs: s.renderMs,
  };

  // 3. A lost frame: the viewer asks for a key frame and catches up.
  await page.close();
  page = await newPage(context, pageErrors, httpErrors);
  await page.goto(`${base}/?drop_frame=8`, { waitUntil: "load" });
  await choosePhotoAndClickCup(page);
  await page.click("#generate");
  await page.waitForFunction(() => window.viewerState.geometryFramesDrawn >= 1, null, { timeout: TIMEOUT_MS, polling: 10 });
  await page.click("#cancel");
  await page.waitForFunction(() => window.viewerState.phase !== "streaming", null, { timeout: TIMEOUT_MS });
  const stopped = await page.evaluate(() => ({ phase: window.viewerState.phase, frames: window.viewerState.framesDecoded,
    generateEnabled: !document.getElementById("generate").disabled }));
  check("stop_button_ends_the_run", stopped.phase === "stopped" && stopped.frames < 20 && stopped.generateEnabled, stopped);
  const lossy = (await runToEnd(page)).state;
  check("resync_after_lost_frame",
    lossy.phase === "complete" && lossy.droppedForTest === 8 && lossy.resyncs >= 1 &&
    lossy.keyFrameRequests.includes(202) && lossy.decodeErrors === 0 &&
    lossy.lastFrame.frameSeq === lossy.lastFrameEvent.frame_seq &&
    lossy.lastFrame.count === lossy.lastFrameEvent.voxel_count,
    { phase: lossy.phase, droppedForTest: lossy.droppedForTest, resyncs: lossy.resyncs,
      keyFrameRequests: lossy.keyFrameRequests, lastFrame: lossy.lastFrame, lastFrameEvent: lossy.lastFrameEvent });

  check("no_page_errors", pageErrors.length === 0, pageErrors);
  check("only_the_deliberate_http_error", httpErrors.length === 1 && httpErrors[0] === "POST /v1/generate 422", httpErrors);
} catch (err) {
  report.crash = String(err && err.stack ? err.stack : err);
  failures.push(`crash: ${err}`);
} finally {
  if (context) await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}
report.ok = failures.length === 0;
console.log(JSON.stringify(report));
process.exit(report.crash ? 2 : report.ok ? 0 : 1);
