// The page side of bench/bench_viewer_browser.py (run that, not this):
//   node bench/viewer_browser.mjs IN.json PHOTO.png   → one JSON line of measurements
import { readFileSync } from "node:fs";

import { chromium } from "playwright-core";

const [inPath, photoPath] = process.argv.slice(2);
const input = JSON.parse(readFileSync(inPath, "utf8"));
const FLAGS = ["--no-sandbox", "--enable-unsafe-swiftshader", "--use-angle=swiftshader", "--ignore-gpu-blocklist",
  "--disable-background-networking", "--disable-component-update"];
const REPS = 30;

const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", headless: true, args: FLAGS });
const out = {};
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(`${input.url}/?test=1`);
  await page.waitForFunction(() => window.viewer && window.viewer.state.phase === "ready", null, { timeout: 60_000 });

  // 1. A 30,000-voxel frame: decode, fill, draw + upload.
  out.voxel_frame = await page.evaluate(async ({ keyUrl, deltaUrl, reps }) => {
    const { VoxelStreamDecoder } = await import("./static/voxel-codec.js");
    const bytes = async (u) => new Uint8Array(await (await fetch(u)).arrayBuffer());
    const key = await bytes(keyUrl);
    const delta = await bytes(deltaUrl);
    const { scene } = window.viewer;
    const gl = scene.renderer.getContext();
    const px = new Uint8Array(4);
    const med = (a) => [...a].sort((x, y) => x - y)[a.length >> 1];
    const t = { key_decode: [], delta_decode: [], fill: [], draw_upload: [], decode_fill: [] };
    scene.reset();
    for (let i = 0; i < reps; i++) {
      const dec = new VoxelStreamDecoder();
      let t0 = performance.now();
      const f = await dec.decode(key);
      const t1 = performance.now();
      const g = await dec.decode(delta);
      const t2 = performance.now();
      scene.setVoxels(g.coords, g.colors, g.gridSize);
      const t3 = performance.now();
      scene.render();
      gl.readPixels(0, 0, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, px); // waits for the draw (and the upload)
      const t4 = performance.now();
      t.key_decode.push(t1 - t0); t.delta_decode.push(t2 - t1); t.fill.push(t3 - t2); t.draw_upload.push(t4 - t3);
      t.decode_fill.push(t2 - t1 + t3 - t2);
      if (f.count !== g.count) throw new Error("frames differ in count");
    }
    // The upload alone: the bytes setVoxels leaves for the GPU (matrices + colours) into buffers of
    // their size, as three's bufferSubData does, then a readback that waits for the GL queue.
    const mesh = scene.voxels;
    const n = mesh.count;
    const mats = mesh.instanceMatrix.array.subarray(0, 16 * n);
    const cols = mesh.instanceColor.array.subarray(0, 3 * n);
    const bufs = [mats, cols].map((a) => {
      const b = gl.createBuffer();
      gl.bindBuffer(gl.ARRAY_BUFFER, b);
      gl.bufferData(gl.ARRAY_BUFFER, a.byteLength, gl.DYNAMIC_DRAW);
      return b;
    });
    t.upload = [];
    for (let i = 0; i < reps; i++) {
      const t0 = performance.now();
      [mats, cols].forEach((a, k) => {
        gl.bindBuffer(gl.ARRAY_BUFFER, bufs[k]);
        gl.bufferSubData(gl.ARRAY_BUFFER, 0, a);
      });
      gl.readPixels(0, 0, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, px);
      t.upload.push(performance.now() - t0);
    }
    bufs.forEach((b) => gl.deleteBuffer(b));
    gl.bindBuffer(gl.ARRAY_BUFFER, null);
    t.decode_fill_upload = t.decode_fill.map((v, i) => v + t.upload[i]);
    const r = Object.fromEntries(Object.entries(t).map(([k, v]) => [`${k}_ms_median`, Math.round(med(v) * 100) / 100]));
    return { ...r, voxels: scene.stats().instancesDrawn, upload_bytes: mats.byteLength + cols.byteLength, reps };
  }, { keyUrl: input.key_url, deltaUrl: input.delta_url, reps: REPS });

  // 2. Click → mask in the browser (tiny SAM 3 decoder, onnxruntime-web wasm, one thread).
  await page.setInputFiles("#file", photoPath);
  await page.waitForFunction(() => window.viewer.segmentation.sam3 && window.viewer.segmentation.sam3.embedding, null, { timeout: 120_000 });
  out.click_to_mask = await page.evaluate(async () => {
    const s = window.viewer.segmentation.sam3;
    const times = [];
    for (let i = 0; i < 21; i++) times.push((await s.decode([{ x: 280 + i, y: 230, label: 1 }], null, 600, 400)).ms);
    const warm = times.slice(1).sort((a, b) => a - b);
    return { decoder: "tiny (tests: sam3_testing.write_tiny_checkpoint)", embedding_shapes: s.embedding.header.tensors.map((t) => t.shape),
      first_ms: Math.round(times[0] * 10) / 10, median_ms: Math.round(warm[warm.length >> 1] * 10) / 10,
      p90_ms: Math.round(warm[Math.floor(warm.length * 0.9)] * 10) / 10, decoder_load_ms: Math.round(s.timings.decoder_load_ms),
      embed_ms: Math.round(s.timings.embed_ms) };
  });

  // 2a. A phone photo's size (4032×3024): click → overlay drawn, decoding at the photo's size (as the
  // page did) vs at the view size it decodes at now (segment.js viewSize), the overlay drawn either way.
  out.click_to_overlay_phone_photo = await page.evaluate(async () => {
    const { viewSize } = await import("./static/segment.js");
    const s = window.viewer.segmentation.sam3;
    const { panel } = window.viewer;
    const [W, H] = [4032, 3024];
    const saved = panel.photo;
    panel.photo = { ...saved, width: W, height: H };
    const t = { photo_size: [], view_size: [] };
    for (let i = 0; i < 6; i++) {
      for (const [k, [w, h]] of [["photo_size", [W, H]], ["view_size", viewSize(W, H)]]) {
        const t0 = performance.now();
        const r = await s.decode([{ x: (280 + i) * W / 600, y: 230 * H / 400, label: 1 }], null, w, h);
        panel.setMask(r.mask, w, h);
        t[k].push(performance.now() - t0);
      }
    }
    panel.photo = saved;
    panel.setMask(null);
    const med = (a) => Math.round(a.slice(1).sort((x, y) => x - y)[(a.length - 1) >> 1] * 10) / 10;
    return { decoder: "tiny", photo: [W, H], view: viewSize(W, H), photo_size_ms_median: med(t.photo_size), view_size_ms_median: med(t.view_size) };
  });

  // 2b. The full-size decoder on random full-size features: the pair the page uses (export v4, photo
  // graph once per photo), the single graph before it (page_v3, features laid out once per photo) and
  // the tracker's graph as exported before both (reference, NCHW inputs), clicks alternating.
  out.click_to_mask_full_size = await page.evaluate(async (urls) => {
    const { Sam3Clicks, loadOrt } = await import("./static/sam3-click.js");
    const ort = await loadOrt();
    const shapes = { image_embed: [1, 256, 72, 72], high_res_feats_0: [1, 32, 288, 288], high_res_feats_1: [1, 64, 144, 144] };
    const tensors = {};
    for (const [name, dims] of Object.entries(shapes)) {
      const data = new Float32Array(dims.reduce((a, b) => a * b, 1));
      for (let i = 0; i < data.length; i++) data[i] = Math.random() - 0.5;
      tensors[name] = { data, dims };
    }
    const nchw = Object.fromEntries(Object.entries(tensors).map(([k, t]) => [k, new ort.Tensor("float32", t.data, t.dims)]));
    const runs = {};
    for (const name of ["reference", "page", "page_v3"]) {
      const s = new Sam3Clicks({ decoderUrl: urls[name].replace(/^\//, ""), photoUrl: (urls[`${name}_photo`] || "").replace(/^\//, "") || null });
      await s.loadDecoder();
      const feeds = name === "reference" ? nchw : await s.photoFeeds(tensors);
      s.embedding = { header: { input_size: 1008, original_size: [400, 600] }, feeds, maskSide: 288 };
      runs[name] = { s, times: [], masks: [] };
    }
    for (let i = 0; i < 21; i++) {
      for (const r of Object.values(runs)) {
        const res = await r.s.decode([{ x: 280 + i, y: 230, label: 1 }], null, 600, 400);
        r.times.push(res.ms);
        if (i < 3) r.masks.push(res.mask);
      }
    }
    const r1 = (v) => Math.round(v * 10) / 10;
    const out = { decoder: "full size, random weights", threads: ort.env.wasm.numThreads,
      cross_origin_isolated: globalThis.crossOriginIsolated };
    const ref = runs.reference;
    for (const [name, r] of Object.entries(runs)) {
      const warm = r.times.slice(1).sort((a, b) => a - b);
      let same = 0, total = 0;
      r.masks.forEach((m, k) => { for (let i = 0; i < m.length; i++) { same += m[i] === ref.masks[k][i]; total++; } });
      out[name] = { first_ms: r1(r.times[0]), median_ms: r1(warm[warm.length >> 1]), p90_ms: r1(warm[Math.floor(warm.length * 0.9)]),
        min_ms: r1(warm[0]), decoder_load_ms: Math.round(r.s.timings.decoder_load_ms), mask_agreement_with_reference: same / total };
      if (r.s.timings.photo_ms !== undefined) out[name].photo_ms = r1(r.s.timings.photo_ms);
    }
    out.median_ratio_reference_over_page = r1(out.reference.median_ms / out.page.median_ms);
    out.median_ratio_page_v3_over_page = Math.round((out.page_v3.median_ms / out.page.median_ms) * 100) / 100;
    out.min_ratio_page_v3_over_page = Math.round((out.page_v3.min_ms / out.page.min_ms) * 100) / 100;
    return out;
  }, input.full_decoder_urls);

  // 3. Orbiting a 200,000-triangle GLB.
  out.glb_orbit = await page.evaluate(async (url) => {
    const { scene, setView } = window.viewer;
    const t0 = performance.now();
    const triangles = await scene.loadGLB(url);
    const loadMs = performance.now() - t0;
    setView("glb");
    const cam = scene.camera;
    const target = scene.controls.target.clone();
    const off = cam.position.clone().sub(target);
    const frames = await new Promise((resolve) => {
      let n = 0;
      const start = performance.now();
      function step(now) {
        const a = ((now - start) / 1000) * 0.8;
        cam.position.set(target.x + off.x * Math.cos(a) - off.z * Math.sin(a), target.y + off.y,
          target.z + off.x * Math.sin(a) + off.z * Math.cos(a));
        cam.lookAt(target);
        scene.render();
        n++;
        if (now - start < 4000) requestAnimationFrame(step);
        else resolve({ n, ms: now - start });
      }
      requestAnimationFrame(step);
    });
    return { triangles, load_ms: Math.round(loadMs), fps: Math.round((frames.n / frames.ms) * 10000) / 10,
      canvas: [scene.canvas.width, scene.canvas.height] };
  }, input.glb_url);
  out.page_errors = errors;
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
