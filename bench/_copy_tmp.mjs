import { readFileSync } from "node:fs";
const ort = await import("onnxruntime-web/wasm");
ort.env.wasm.numThreads = 1;
for (const file of process.argv.slice(2)) {
  const session = await ort.InferenceSession.create(readFileSync(file), { executionProviders: ["wasm"], graphOptimizationLevel: "all" });
  const feeds = {};
  for (const m of session.inputMetadata) {
    const dims = m.shape.map((d) => (typeof d === "number" ? d : 2));
    feeds[m.name] = new ort.Tensor("float32", new Float32Array(dims.reduce((a, b) => a * b, 1)).fill(0.5), dims);
  }
  const cpu = [];
  for (let i = 0; i < 9; i++) { const c0 = process.cpuUsage(); await session.run(feeds); const c = process.cpuUsage(c0); cpu.push((c.user + c.system) / 1000); }
  cpu.sort((a, b) => a - b);
  console.log(file, "cpu ms min", cpu[0].toFixed(1), "median", cpu[4].toFixed(1));
}
