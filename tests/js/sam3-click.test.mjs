// The browser's SAM 3 click decoding (serve_app/static/sam3-click.js) against vectors written by the
// server's Python (tests/vectors/make_click_vectors.py): the embedding payload reader, the mask choice
// and the bilinear upsampling (run: node --test tests/js/).
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { dirname, join } from "node:path";

import { parseEmbedding, selectMask, tokenLayout, upsampleMask } from "../../serve_app/static/sam3-click.js";

const VECTORS = join(dirname(fileURLToPath(import.meta.url)), "..", "vectors");
const load = (name) => JSON.parse(readFileSync(join(VECTORS, name), "utf8"));

test("embedding payload: header and every dequantised value as the Python codec decodes them", async () => {
  const bytes = readFileSync(join(VECTORS, "embedding_small.bin"));
  const want = load("embedding_small.json");
  const { header, tensors } = await parseEmbedding(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length));
  assert.deepEqual(header, want.header);
  for (const [name, values] of Object.entries(want.values)) {
    const got = tensors[name].data;
    assert.equal(got.length, values.length, name);
    for (let i = 0; i < values.length; i++) assert.ok(Math.abs(got[i] - values[i]) <= 1e-5 * (1 + Math.abs(values[i])), `${name}[${i}]`);
  }
});

test("embedding payload: a corrupt one is refused", async () => {
  const bytes = new Uint8Array(readFileSync(join(VECTORS, "embedding_small.bin")));
  const bad = bytes.slice();
  bad[0] = 0;
  await assert.rejects(parseEmbedding(bad.buffer), /SAM 3 embedding payload/);
  await assert.rejects(parseEmbedding(bytes.slice(0, bytes.length - 1).buffer), /length/);
});

test("mask choice and upsampling agree with select_mask and torch's bilinear interpolation", () => {
  for (const c of load("click_masks.json").cases) {
    const logits = Float32Array.from(c.logits);
    const side = c.m * c.m;
    assert.equal(selectMask(Float32Array.from(c.ious), logits, c.m, c.multimask), c.index);
    const mask = upsampleMask(logits.subarray(c.index * side, (c.index + 1) * side), c.m, c.width, c.height);
    let compared = 0;
    for (let i = 0; i < mask.length; i++) {
      if (Math.abs(c.upsampled[i]) < 1e-4) continue; // float32 vs float64 rounding at the threshold
      compared++;
      assert.equal(mask[i], c.upsampled[i] > 0 ? 1 : 0, `case m=${c.m} ${c.width}x${c.height} pixel ${i}`);
    }
    assert.ok(compared > 0.99 * mask.length);
  }
});

test("the decoder's channels-last inputs are laid out as onnx_decoder_fast.token_layout lays them out", () => {
  const v = load("token_layout.json");
  const tensors = Object.fromEntries(Object.entries(v.inputs).map(([k, t]) => [k, { data: Float32Array.from(t.data), dims: t.dims }]));
  const got = tokenLayout(tensors);
  for (const [name, want] of Object.entries(v.outputs)) {
    assert.deepEqual(got[name].dims, want.dims, name);
    assert.deepEqual(Array.from(got[name].data), want.data, name);
  }
  assert.throws(() => tokenLayout({ ...tensors, high_res_feats_0: tensors.high_res_feats_1 }), /expected 1x2x8x12/);
});
