// Click-to-segment before generating. The page asks GET /v1/capabilities once and then:
//  - SAM 3 backend ("browser_decoding"): the photo is embedded once on the server and every click or
//    box is decoded here (sam3-click.js); a text label goes to POST /v1/segment with the embedding id;
//  - otherwise (the embedded GrabCut segmenter): POST /v1/segment with the photo, per prompt change.
// Either way the result is a 0/1 mask of the photo as the page shows it (EXIF orientation applied, as
// the server applies it), which Generate then sends as the object mask at the photo's size; a mask
// decoded here is shown at most VIEW_MAX_SIDE pixels long and scaled to the photo for Generate.

import { Sam3Clicks, upsampleMask } from "./sam3-click.js";
import { errorOf } from "./stream.js";
import { apiFetch } from "./apikey.js";

/** Longest side of a mask decoded in the browser for showing (about the overlay's size on a laptop screen). */
export const VIEW_MAX_SIDE = 1024;

/** The size a width × height photo's mask is shown at: the photo's, or scaled down to VIEW_MAX_SIDE. */
export function viewSize(width, height) {
  const k = Math.min(1, VIEW_MAX_SIDE / Math.max(width, height));
  return [Math.max(1, Math.round(width * k)), Math.max(1, Math.round(height * k))];
}

async function fileBase64(file) {
  const bytes = new Uint8Array(await file.arrayBuffer());
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(text);
}

/** A PNG (base64) mask → 0/1 mask of width × height. */
async function pngMask(b64, width, height) {
  const blob = new Blob([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))], { type: "image/png" });
  const bitmap = await createImageBitmap(blob);
  const canvas = new OffscreenCanvas(width, height);
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(bitmap, 0, 0, width, height);
  const d = ctx.getImageData(0, 0, width, height).data;
  const mask = new Uint8Array(width * height);
  for (let i = 0; i < mask.length; i++) mask[i] = d[4 * i] > 127 ? 1 : 0;
  return mask;
}

/** A 0/1 mask → PNG blob (white object on black), for the multipart `mask` field. */
export async function maskPng(mask, width, height) {
  const canvas = new OffscreenCanvas(width, height);
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(width, height);
  for (let i = 0; i < mask.length; i++) {
    const v = mask[i] ? 255 : 0;
    img.data[4 * i] = v; img.data[4 * i + 1] = v; img.data[4 * i + 2] = v; img.data[4 * i + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
  return canvas.convertToBlob({ type: "image/png" });
}

export class Segmentation {
  /** `caps`: the /v1/capabilities answer. */
  constructor(caps, base = document.baseURI) {
    this.base = base;
    const seg = caps.segmenter || {};
    this.mode = seg.browser_decoding ? "browser" : (seg.routes || []).includes("/v1/segment") ? "server" : "none";
    this.backend = seg.backend || "none";
    this.sam3 = this.mode === "browser" ? new Sam3Clicks({ base, decoderUrl: seg.click_decoder_url.replace(/^\//, "") }) : null;
    this.photo = null;
    this.last = null; // the last result, for the page and its tests
    this.ready = Promise.resolve();
  }

  /** A new photo ({file, width, height}); with SAM 3 the embedding starts now, in the background. */
  setPhoto(photo) {
    this.photo = photo;
    this.last = null;
    this._b64 = null;
    this.ready = this.sam3 ? this.sam3.embed(photo.file, errorOf) : Promise.resolve();
    return this.ready;
  }

  /**
   * Prompts in photo pixels → { mask, width, height, ms, where } or null when there is nothing to
   * segment. `where` says who decoded it: "browser" or "server". Throws HttpError on a refusal.
   */
  async segment({ points = [], box = null, label = "" }) {
    if (!this.photo || this.mode === "none" || (!points.length && !box && !label)) return null;
    const { width, height } = this.photo;
    const t0 = performance.now();
    if (this.sam3 && !label) {
      await this.ready;
      // Shown at a view size (a phone photo has 12 M pixels: scaling the logits to it and drawing
      // them would take longer than the decoder); full() gives the photo-size mask, for Generate.
      const [vw, vh] = viewSize(width, height);
      const { mask, ms, logits, m } = await this.sam3.decode(points, box, vw, vh);
      this.last = { mask, width: vw, height: vh, ms, where: "browser",
        full: () => ({ mask: upsampleMask(logits, m, width, height), width, height }) };
      return this.last;
    }
    const body = { points, max_instances: 0 };
    if (box) body.box = [box.x_min, box.y_min, box.x_max, box.y_max];
    if (label) body.label = label;
    if (this.sam3) {
      await this.ready;
      body.embedding_id = this.sam3.embedding.id;
      body.points = points.map((p) => ({ ...p, x: (p.x * this.sam3.embedding.header.original_size[1]) / width,
        y: (p.y * this.sam3.embedding.header.original_size[0]) / height }));
      if (box) {
        const [eh, ew] = this.sam3.embedding.header.original_size;
        body.box = [box.x_min * ew / width, box.y_min * eh / height, box.x_max * ew / width, box.y_max * eh / height];
      }
    } else {
      this._b64 ||= await fileBase64(this.photo.file);
      body.image_b64 = this._b64;
    }
    const r = await apiFetch(new URL("v1/segment", this.base), {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
    });
    if (!r.ok) throw await errorOf(r);
    const out = await r.json();
    const mask = await pngMask(out.mask_png_b64, width, height);
    this.last = { mask, width, height, ms: performance.now() - t0, where: "server" };
    return this.last;
  }
}
