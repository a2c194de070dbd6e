// temporary: per-op profile of a click graph in onnxruntime-web wasm (1 thread)
import { readFileSync } from "node:fs";
const ort = await import("onnxruntime-web/wasm");
ort.env.wasm.numThreads = 1;
const [file, reps = "4"] = process.argv.slice(2);
const session = await ort.InferenceSession.create(readFileSync(file), { executionProviders: ["wasm"], graphOptimizationLevel: "all", enableProfiling: true });
let seed = 1;
const rand = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648) - 0.5;
const feeds = {};
for (const m of session.inputMetadata) {
  const dims = m.shape.map((d) => (typeof d === "number" ? d : 2));
  const n = dims.reduce((a, b) => a * b, 1);
  const data = new Float32Array(n);
  for (let i = 0; i < n; i++) data[i] = rand();
  feeds[m.name] = new ort.Tensor("float32", data, dims);
}
if (feeds.point_coords) {
  feeds.point_coords = new ort.Tensor("float32", Float32Array.from([500, 400, 0, 0]), [1, 2, 2]);
  feeds.point_labels = new ort.Tensor("float32", Float32Array.from([1, -1]), [1, 2]);
}
if (feeds.has_mask_input) { feeds.has_mask_input.data[0] = 0; feeds.mask_input.data.fill(0); }
const logs = [];
const orig = console.log;
console.log = (...a) => logs.push(a.join(" "));
for (let i = 0; i < Number(reps); i++) {
  const c0 = process.cpuUsage();
  await session.run(feeds);
  const c = process.cpuUsage(c0);
  console.error("cpu ms", (c.user + c.system) / 1000);
}
session.endProfiling();
console.log = orig;
console.error("log lines", logs.length, logs.slice(0, 3).join("\n").slice(0, 600));
