// SAM 3 clicks decoded in the browser: the server encodes the photo once (POST /v1/embed, the compact
// payload of docs/sam3-embedding-format.md); each click or box then runs the ONNX click decoder
// (GET /v1/models/sam3-click-decoder.onnx) in onnxruntime-web, from the vendored wasm build (on up
// to 4 threads when the page is cross-origin isolated, else on one). Once per photo, the decoder's
// photo graph (the same URL ending .photo.onnx; export version 4 and later) turns the features into the click
// graph's inputs; a version 3 decoder takes them laid out by tokenLayout. Mask selection and upsampling follow
// deployments/segmenter/sam3/onnx_decoder.py, so the browser's mask is the one POST /v1/segment would give
// for the same prompts.

import { apiFetch } from "./apikey.js";

const ORT_MODULE = new URL("./vendor/onnxruntime-web/ort.wasm.bundle.min.mjs", import.meta.url).href;
const ORT_WASM = new URL("./vendor/onnxruntime-web/ort-wasm-simd-threaded.wasm", import.meta.url).href;

let ortPromise = null;

/** onnxruntime-web, loaded once, configured for the vendored single-threaded wasm. */
export function loadOrt() {
  ortPromise ||= import(ORT_MODULE).then((ort) => {
    // The bundle carries its JS glue; only the binary is fetched (from here, never a CDN).
    ort.env.wasm.wasmPaths = { wasm: ORT_WASM };
    // Threads need SharedArrayBuffer, i.e. a cross-origin isolated page (GET / sends COOP/COEP).
    ort.env.wasm.numThreads = globalThis.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
    ort.env.wasm.proxy = false;
    return ort;
  });
  return ortPromise;
}

/** Parse an embedding payload (ArrayBuffer) → { header, tensors: name → {data: Float32Array, dims} }. */
export async function parseEmbedding(buf) {
  const dv = new DataView(buf);
  const magic = String.fromCharCode(...new Uint8Array(buf, 0, 4));
  if (magic !== "S3EB" || dv.getUint16(4, true) !== 1) throw new Error("not a version 1 SAM 3 embedding payload");
  const flags = dv.getUint16(6, true);
  const hlen = dv.getUint32(8, true);
  const blen = dv.getUint32(12, true);
  if (16 + hlen + blen !== buf.byteLength) throw new Error("embedding payload length does not match its header");
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 16, hlen)));
  let body = buf.slice(16 + hlen);
  if (flags & 1) {
    const stream = new Blob([body]).stream().pipeThrough(new DecompressionStream("deflate"));
    body = await new Response(stream).arrayBuffer();
  }
  if (body.byteLength !== header.body_bytes) throw new Error("embedding body has the wrong length");
  const tensors = {};
  for (const t of header.tensors) {
    const count = t.shape.reduce((a, b) => a * b, 1);
    let data;
    if (t.encoding === "f32") data = new Float32Array(body, t.offset, count);
    else if (t.encoding === "f16") data = halfToFloat(new Uint16Array(body, t.offset, count));
    else if (t.encoding === "u8") {
      const q = new Uint8Array(body, t.offset, count);
      const C = t.shape[1];
      const per = count / C;
      const lo = new Float32Array(body, t.lo_offset, C);
      const step = new Float32Array(body, t.step_offset, C);
      data = new Float32Array(count);
      for (let c = 0; c < C; c++) {
        const l = lo[c], s = step[c];
        for (let i = c * per, e = i + per; i < e; i++) data[i] = l + q[i] * s;
      }
    } else throw new Error(`unknown tensor encoding ${t.encoding}`);
    tensors[t.name] = { data, dims: t.shape };
  }
  return { header, tensors };
}

function halfToFloat(h) {
  const out = new Float32Array(h.length);
  for (let i = 0; i < h.length; i++) {
    const v = h[i];
    const s = v & 0x8000 ? -1 : 1;
    const e = (v >> 10) & 0x1f;
    const f = v & 0x3ff;
    out[i] = e === 0 ? s * 2 ** -14 * (f / 1024) : e === 31 ? (f ? NaN : s * Infinity) : s * 2 ** (e - 15) * (1 + f / 1024);
  }
  return out;
}

/**
 * The encoder's NCHW features → the click decoder's channels-last inputs (onnx_decoder_fast.token_layout),
 * once per photo: image_tokens (HW×C, row y·W + x), high_res_tokens_1 (4HW×C1, rows (y, x, i, j) for pixel
 * (2y+i, 2x+j)) and high_res_tokens_0 (16HW×C0, rows (y, x, i, j, i2, j2) for (4y+2i+i2, 4x+2j+j2)).
 * `tensors`: name → {data: Float32Array, dims: [1, C, h, w]} → name → {data, dims: [rows, C]}.
 */
export function tokenLayout(tensors) {
  const [, , H, W] = tensors.image_embed.dims;
  const out = {};
  for (const [name, src, levels] of [["image_tokens", "image_embed", 0], ["high_res_tokens_1", "high_res_feats_1", 1],
    ["high_res_tokens_0", "high_res_feats_0", 2]]) {
    const { data, dims } = tensors[src];
    const C = dims[1];
    const B = 1 << levels;
    const [h, w] = [H * B, W * B];
    if (dims[2] !== h || dims[3] !== w) throw new Error(`${src} is ${dims.join("x")}, expected 1x${C}x${h}x${w}`);
    // Row of pixel (Y, X): its cell's index times B², plus the bits of (Y mod B, X mod B) interleaved,
    // the coarsest first (i, j, then i2, j2).
    const sub = new Int32Array(B * B);
    for (let yy = 0; yy < B; yy++) {
      for (let xx = 0; xx < B; xx++) {
        let k = 0;
        for (let bit = levels - 1; bit >= 0; bit--) k = k * 4 + ((yy >> bit) & 1) * 2 + ((xx >> bit) & 1);
        sub[yy * B + xx] = k;
      }
    }
    const rowOf = new Int32Array(h * w);
    for (let Y = 0; Y < h; Y++) {
      for (let X = 0; X < w; X++) rowOf[Y * w + X] = ((Y >> levels) * W + (X >> levels)) * B * B + sub[(Y % B) * B + (X % B)];
    }
    const o = new Float32Array(data.length);
    const plane = h * w;
    for (let c = 0; c < C; c++) {
      const base = c * plane;
      for (let p = 0; p < plane; p++) o[rowOf[p] * C + c] = data[base + p];
    }
    out[name] = { data: o, dims: [plane, C] };
  }
  return out;
}

/** The output to show, as the tracker picks it (onnx_decoder.select_mask). */
export function selectMask(ious, masks, side, multimask, delta = 0.05, thresh = 0.98) {
  let best = 1;
  for (let k = 2; k < 4; k++) if (ious[k] > ious[best]) best = k;
  if (multimask) return best;
  let inner = 0;
  let outer = 0;
  for (let i = 0, n = side * side; i < n; i++) {
    const v = masks[i];
    if (v > delta) inner++;
    if (v > -delta) outer++;
  }
  return (outer > 0 ? inner / outer : 1) >= thresh ? 0 : best;
}

/** m×m logits → W×H 0/1 mask: bilinear with half-pixel centres (align_corners=false), threshold 0. */
export function upsampleMask(logits, m, width, height) {
  const out = new Uint8Array(width * height);
  const x0 = new Int32Array(width), x1 = new Int32Array(width), fx = new Float32Array(width);
  for (let x = 0; x < width; x++) {
    const sx = Math.max(0, ((x + 0.5) * m) / width - 0.5);
    x0[x] = Math.min(m - 1, Math.floor(sx));
    x1[x] = Math.min(m - 1, x0[x] + 1);
    fx[x] = sx - x0[x];
  }
  for (let y = 0; y < height; y++) {
    const sy = Math.max(0, ((y + 0.5) * m) / height - 0.5);
    const y0 = Math.min(m - 1, Math.floor(sy));
    const y1 = Math.min(m - 1, y0 + 1);
    const fy = sy - y0;
    const r0 = y0 * m, r1 = y1 * m;
    for (let x = 0; x < width; x++) {
      const a = logits[r0 + x0[x]] + (logits[r0 + x1[x]] - logits[r0 + x0[x]]) * fx[x];
      const b = logits[r1 + x0[x]] + (logits[r1 + x1[x]] - logits[r1 + x0[x]]) * fx[x];
      out[y * width + x] = a + (b - a) * fy > 0 ? 1 : 0;
    }
  }
  return out;
}

/**
 * ORT tensors of the decoder's per-photo inputs, from the parsed embedding's NCHW tensors: the photo
 * graph's outputs (`photoSession`, export version 4 and later), else the features laid out by tokenLayout.
 */
export async function decoderFeeds(tensors, photoSession = null) {
  const ort = await loadOrt();
  if (photoSession) {
    const nchw = {};
    for (const name of photoSession.inputNames) nchw[name] = new ort.Tensor("float32", tensors[name].data, tensors[name].dims);
    return photoSession.run(nchw);
  }
  const feeds = {};
  for (const [name, t] of Object.entries(tokenLayout(tensors))) feeds[name] = new ort.Tensor("float32", t.data, t.dims);
  return feeds;
}

/** The photo graph's URL beside a click decoder's (routes_segment.ONNX_PHOTO_ROUTE). */
export function photoGraphUrl(decoderUrl) {
  return decoderUrl.replace(/\.onnx$/, "") + ".photo.onnx";
}

/** One photo's SAM 3 embedding in the browser, and the click decoder that runs on it. */
export class Sam3Clicks {
  constructor({ base = document.baseURI, decoderUrl = "v1/models/sam3-click-decoder.onnx", photoUrl = null } = {}) {
    this.base = base;
    this.decoderUrl = decoderUrl;
    this.photoUrl = photoUrl || photoGraphUrl(decoderUrl);
    this.session = null;
    this.photoSession = null;
    this.embedding = null;
    this.timings = {};
  }

  /** Fetch the decoder (cached by the browser) and start its session, and its photo graph's when it
   * has one; once per page. */
  async loadDecoder() {
    if (this.session) return this.session;
    const t0 = performance.now();
    const ort = await loadOrt();
    const create = async (url) => {
      const r = await fetch(new URL(url, this.base));
      if (!r.ok) throw new Error(`the click decoder could not be fetched (${r.status})`);
      return ort.InferenceSession.create(new Uint8Array(await r.arrayBuffer()), { executionProviders: ["wasm"], graphOptimizationLevel: "all" });
    };
    const session = await create(this.decoderUrl);
    if (session.inputNames[0] === "photo_0") this.photoSession = await create(this.photoUrl);
    this.session = session;
    this.timings.decoder_load_ms = performance.now() - t0;
    return this.session;
  }

  /** The click graph's per-photo inputs for the parsed embedding's NCHW tensors (see decoderFeeds). */
  async photoFeeds(tensors) {
    await this.loadDecoder();
    const t0 = performance.now();
    const feeds = await decoderFeeds(tensors, this.photoSession);
    this.timings.photo_ms = performance.now() - t0;
    return feeds;
  }

  /** POST the photo to /v1/embed once; resolves when clicks can be decoded. `onError(HttpError)`. */
  async embed(file, errorOf) {
    const t0 = performance.now();
    this.embedding = null;
    const form = new FormData();
    form.append("image", file, file.name || "photo");
    const [, res] = await Promise.all([this.loadDecoder(), apiFetch(new URL("v1/embed", this.base), { method: "POST", body: form })]);
    if (!res.ok) throw await errorOf(res);
    const { header, tensors } = await parseEmbedding(await res.arrayBuffer());
    const ort = await loadOrt();
    this.embedding = { header, feeds: await this.photoFeeds(tensors), maskSide: tensors.high_res_feats_0.dims[2], id: res.headers.get("X-Embedding-Id"), bytes: Number(res.headers.get("content-length")) || 0 };
    this.timings.embed_ms = performance.now() - t0;
    return this.embedding;
  }

  /**
   * Decode prompts given in photo pixels (photo is width × height as the page shows it):
   * points [{x, y, label}], box {x_min, y_min, x_max, y_max} or null → { mask (0/1, width×height), ms }.
   */
  async decode(points, box, width, height) {
    if (!this.embedding) throw new Error("no embedding yet");
    const t0 = performance.now();
    const ort = await loadOrt();
    const { header, feeds } = this.embedding;
    // Photo pixels → encoder input. The server may have scaled the photo before encoding
    // (header.original_size), but relative positions are the same, so the photo's size is enough.
    const S = header.input_size;
    const sx = S / width, sy = S / height;
    const coords = [];
    const labels = [];
    for (const p of points) {
      coords.push(p.x * sx, p.y * sy);
      labels.push(p.label);
    }
    if (box) {
      coords.push(box.x_min * sx, box.y_min * sy, box.x_max * sx, box.y_max * sy);
      labels.push(2, 3);
    }
    coords.push(0, 0);
    labels.push(-1);
    const n = labels.length;
    const side = this.embedding.maskSide; // mask_input is as large as high_res_feats_0
    const all = {
      ...feeds,
      point_coords: new ort.Tensor("float32", Float32Array.from(coords), [1, n, 2]),
      point_labels: new ort.Tensor("float32", Float32Array.from(labels), [1, n]),
    };
    if (this.session.inputNames.includes("mask_input")) { // export version 3 and the reference take a previous mask
      all.mask_input = new ort.Tensor("float32", new Float32Array(side * side), [1, 1, side, side]);
      all.has_mask_input = new ort.Tensor("float32", Float32Array.of(0), [1]);
    }
    const out = await this.session.run(Object.fromEntries(this.session.inputNames.map((k) => [k, all[k]])));
    const masks = out.masks.data;
    const m = out.masks.dims[2];
    const k = selectMask(out.iou_predictions.data, masks, m, points.length === 1 && !box);
    const logits = masks.slice(k * m * m, (k + 1) * m * m);
    const mask = upsampleMask(logits, m, width, height);
    return { mask, ms: performance.now() - t0, index: k, score: out.iou_predictions.data[k], logits, m };
  }
}
