// The page side of bench/bench_click_decoder_cpu.py --profile (run that, not this):
//   node bench/click_decoder_profile.mjs REPS NAME=FILE.onnx ...   → the profiler's events
// Runs each click graph REPS times in onnxruntime-web's wasm build on one thread with the session
// profiler on, on random inputs of the graph's own shapes (one click). The profiler writes its JSON
// events to stdout, each graph's after a line "@@graph NAME"; the Python side sums them.
import { readFileSync, writeSync } from "node:fs";

const [repsArg, ...specs] = process.argv.slice(2);
const reps = Number(repsArg);
const ort = await import("onnxruntime-web/wasm");
ort.env.wasm.numThreads = 1;
let seed = 7;
const rand = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648) - 0.5;
for (const spec of specs) {
  const [name, file] = spec.split("=");
  const session = await ort.InferenceSession.create(readFileSync(file), { executionProviders: ["wasm"], graphOptimizationLevel: "all", enableProfiling: true });
  const feeds = {};
  for (const m of session.inputMetadata) {
    const dims = m.shape.map((d) => (typeof d === "number" ? d : 2));
    const data = new Float32Array(dims.reduce((a, b) => a * b, 1));
    for (let i = 0; i < data.length; i++) data[i] = rand();
    feeds[m.name] = new ort.Tensor("float32", data, dims);
  }
  feeds.point_coords = new ort.Tensor("float32", Float32Array.from([500, 400, 0, 0]), [1, 2, 2]);
  feeds.point_labels = new ort.Tensor("float32", Float32Array.from([1, -1]), [1, 2]);
  if (feeds.has_mask_input) { feeds.has_mask_input.data[0] = 0; feeds.mask_input.data.fill(0); }
  for (let i = 0; i < reps; i++) await session.run(feeds);
  writeSync(1, `@@graph ${name}\n`); // the profiler writes its events to the same descriptor, after this line
  session.endProfiling();
  await session.release();
}
