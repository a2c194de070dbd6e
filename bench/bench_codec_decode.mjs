// Decode time of the JavaScript voxel codec under Node, per message.
//
//   node bench/bench_codec_decode.mjs <vector.json> [more.json ...] [--reps 200]
//
// Each file is in the tests/vectors format ({name, messages: [{data: base64}, ...]}); the
// messages of a file are one stream, decoded in order by a fresh VoxelStreamDecoder each
// repetition (after warm-up runs for the JIT). Prints JSON: per file and message, the key flag,
// voxel count, bytes, whether deflated, and the median and minimum decode time in ms
// (async decode(), which inflates with DecompressionStream; and decodeSync() where the
// message is not deflated).
import { readFileSync } from "node:fs";
import { performance } from "node:perf_hooks";
import { VoxelStreamDecoder, base64ToBytes, parseHeader } from "../serve_app/static/voxel-codec.js";

const args = process.argv.slice(2);
let reps = 200;
const files = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--reps") reps = Number(args[++i]);
  else files.push(args[i]);
}
if (!files.length) {
  console.error("usage: node bench/bench_codec_decode.mjs <vector.json> [...] [--reps N]");
  process.exit(2);
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

const out = [];
for (const file of files) {
  const vector = JSON.parse(readFileSync(file, "utf8"));
  const messages = vector.messages.filter((m) => !(m.expect && m.expect.error)).map((m) => base64ToBytes(m.data));
  const headers = messages.map(parseHeader);
  const times = messages.map(() => []);
  const syncTimes = messages.map(() => []);
  const allRaw = headers.every((h) => !h.compressed);
  const warmup = Math.max(10, reps >> 2);
  for (let r = 0; r < warmup + reps; r++) {
    const dec = new VoxelStreamDecoder();
    for (let i = 0; i < messages.length; i++) {
      const t0 = performance.now();
      await dec.decode(messages[i]);
      const dt = performance.now() - t0;
      if (r >= warmup) times[i].push(dt);
    }
    if (allRaw) {
      const sync = new VoxelStreamDecoder();
      for (let i = 0; i < messages.length; i++) {
        const t0 = performance.now();
        sync.decodeSync(messages[i]);
        const dt = performance.now() - t0;
        if (r >= warmup) syncTimes[i].push(dt);
      }
    }
  }
  out.push({
    name: vector.name,
    messages: headers.map((h, i) => ({
      key: h.key, count: h.voxelCount, bytes: messages[i].length, compressed: h.compressed,
      ms_median: median(times[i]), ms_min: Math.min(...times[i]),
      sync_ms_median: allRaw ? median(syncTimes[i]) : null,
    })),
  });
}
console.log(JSON.stringify({ node: process.version, reps, results: out }));
