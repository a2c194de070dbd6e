import { readFileSync } from "node:fs";
const ort = await import("onnxruntime-web/wasm");
ort.env.wasm.numThreads = 1;
const x = new Float32Array(82944 * 32); for (let i = 0; i < x.length; i++) x[i] = Math.sin(i) * 3;
for (const name of process.argv.slice(2)) {
  const s = await ort.InferenceSession.create(readFileSync(`/tmp/click/mb_${name}.onnx`), { executionProviders: ["wasm"], graphOptimizationLevel: "all" });
  const t = new ort.Tensor("float32", x, [82944, 32]);
  const cpu = [];
  for (let i = 0; i < 7; i++) { const c0 = process.cpuUsage(); await s.run({ x: t }); const c = process.cpuUsage(c0); cpu.push((c.user + c.system) / 1000); }
  cpu.sort((a, b) => a - b);
  console.log(name, "cpu ms min", cpu[0].toFixed(1), "median", cpu[3].toFixed(1));
}
