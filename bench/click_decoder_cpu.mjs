// The page side of bench/bench_click_decoder_cpu.py (run that, not this):
//   node bench/click_decoder_cpu.mjs REPS NAME=FILE.onnx NAME=PHOTO.onnx+CLICK.onnx ...   → one JSON line
// Each decoder runs in onnxruntime-web's wasm build (the one the page vendors) on one thread under
// Node, on the same random full-size features; clicks alternate between the decoders. Per click it
// records the process's CPU time (user + system), which other work on a shared machine inflates far
// less than wall time, and the wall time. A two-graph decoder (export v4 and later, onnx_decoder_photo) runs its
// photo graph once on the features (its CPU time: photo_cpu_ms), then its click graph per click.
import { readFileSync } from "node:fs";

import { selectMask, tokenLayout } from "../serve_app/static/sam3-click.js";

const [repsArg, ...specs] = process.argv.slice(2);
const reps = Number(repsArg);
// The npm package of the vendored version (its Node entry loads the same wasm binary from disk).
const ort = await import("onnxruntime-web/wasm");
ort.env.wasm.numThreads = 1;
const shapes = { image_embed: [1, 256, 72, 72], high_res_feats_0: [1, 32, 288, 288], high_res_feats_1: [1, 64, 144, 144] };
let seed = 1;
const rand = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648) - 0.5;
const tensors = {};
for (const [name, dims] of Object.entries(shapes)) {
  const data = new Float32Array(dims.reduce((a, b) => a * b, 1));
  for (let i = 0; i < data.length; i++) data[i] = rand();
  tensors[name] = { data, dims };
}
const nchw = Object.fromEntries(Object.entries(tensors).map(([k, t]) => [k, new ort.Tensor("float32", t.data, t.dims)]));
const c0 = process.cpuUsage();
const tokens = Object.fromEntries(Object.entries(tokenLayout(tensors)).map(([k, t]) => [k, new ort.Tensor("float32", t.data, t.dims)]));
const layout = process.cpuUsage(c0);
const runs = [];
const options = { executionProviders: ["wasm"], graphOptimizationLevel: "all" };
for (const spec of specs) {
  const [name, files] = spec.split("=");
  const [first, second] = files.split("+");
  const session = await ort.InferenceSession.create(readFileSync(second || first), options);
  let feeds = session.inputNames[0] === "image_tokens" ? tokens : nchw;
  let photoCpu = null;
  if (second) {
    const photo = await ort.InferenceSession.create(readFileSync(first), options);
    const p0 = process.cpuUsage();
    feeds = await photo.run(nchw);
    const p = process.cpuUsage(p0);
    photoCpu = Math.round((p.user + p.system) / 100) / 10;
  }
  runs.push({ name, session, feeds, photoCpu, cpu: [], wall: [], picks: [] });
}
for (let i = 0; i < reps; i++) {
  const prompts = { point_coords: new ort.Tensor("float32", Float32Array.from([500 + 7 * i, 400, 0, 0]), [1, 2, 2]),
    point_labels: new ort.Tensor("float32", Float32Array.from([1, -1]), [1, 2]),
    mask_input: new ort.Tensor("float32", new Float32Array(288 * 288), [1, 1, 288, 288]),
    has_mask_input: new ort.Tensor("float32", Float32Array.of(0), [1]) };
  for (const r of runs) {
    const cpu0 = process.cpuUsage();
    const w0 = performance.now();
    const feeds = { ...r.feeds, ...prompts };
    const out = await r.session.run(Object.fromEntries(r.session.inputNames.map((k) => [k, feeds[k]])));
    r.wall.push(performance.now() - w0);
    const cpu = process.cpuUsage(cpu0);
    r.cpu.push((cpu.user + cpu.system) / 1000);
    const m = out.masks.dims[2];
    const k = selectMask(out.iou_predictions.data, out.masks.data, m, true);
    r.picks.push(out.masks.data.slice(k * m * m, (k + 1) * m * m));
  }
}
const stats = (a) => {
  const s = a.slice(1).sort((x, y) => x - y); // the first click warms the session up
  return { median: Math.round(s[s.length >> 1] * 10) / 10, min: Math.round(s[0] * 10) / 10 };
};
const ref = runs[0];
const out = { reps, threads: 1, token_layout_cpu_ms: Math.round((layout.user + layout.system) / 100) / 10, decoders: {} };
for (const r of runs) {
  let same = 0, total = 0, err = 0, scale = 0;
  r.picks.forEach((p, i) => {
    for (let j = 0; j < p.length; j++) {
      const want = ref.picks[i][j];
      same += (p[j] > 0) === (want > 0);
      total++;
      err = Math.max(err, Math.abs(p[j] - want));
      scale = Math.max(scale, Math.abs(want));
    }
  });
  out.decoders[r.name] = { cpu_ms: stats(r.cpu), wall_ms: stats(r.wall), [`low_res_mask_agreement_with_${ref.name}`]: same / total,
    [`max_logit_difference_over_scale_vs_${ref.name}`]: Number((err / scale).toPrecision(3)) };
  if (r.photoCpu !== null) out.decoders[r.name].photo_graph_cpu_ms = r.photoCpu;
}
console.log(JSON.stringify(out));
