// Copies the viewer's third-party ES modules from node_modules into serve_app/static/vendor/,
// so the page works offline and the server needs no network or build step at run time.
//
//   npm ci && node tools/vendor_viewer.mjs
//
// What is copied (and nothing else): three.js core + the few example modules the viewer imports
// (GLTFLoader, OrbitControls, the meshopt decoder, and what they import in turn), Spark's ES module
// for Gaussian splats, and onnxruntime-web's wasm-only bundle with its one SIMD wasm binary.
// Versions come from the installed package.json files and go to vendor/VERSIONS.json;
// vendor/README.md (hand-written) says where each came from and under which licence.
import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync, existsSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const NM = join(ROOT, "node_modules");
const OUT = join(ROOT, "serve_app", "static", "vendor");

const version = (pkg) => JSON.parse(readFileSync(join(NM, pkg, "package.json"), "utf8")).version;

function copy(src, dst) {
  mkdirSync(dirname(dst), { recursive: true });
  copyFileSync(src, dst);
}

/** Copy an examples/jsm module and, recursively, the relative modules it imports. */
function copyThreeAddon(rel, seen = new Set()) {
  if (seen.has(rel)) return;
  seen.add(rel);
  const src = join(NM, "three", "examples", "jsm", rel);
  copy(src, join(OUT, "three", "addons", rel));
  const text = readFileSync(src, "utf8");
  // Only real import statements (line starts), not the examples in doc comments.
  for (const m of text.matchAll(/^\s*(?:import|export)\s[^;]*?from\s+['"](\.{1,2}\/[^'"]+)['"]/gm)) {
    copyThreeAddon(relative(join(NM, "three", "examples", "jsm"), resolve(dirname(src), m[1])), seen);
  }
}

rmSync(join(OUT, "three"), { recursive: true, force: true });
rmSync(join(OUT, "spark"), { recursive: true, force: true });
rmSync(join(OUT, "onnxruntime-web"), { recursive: true, force: true });

for (const f of ["three.module.js", "three.core.js"]) copy(join(NM, "three", "build", f), join(OUT, "three", f));
copy(join(NM, "three", "LICENSE"), join(OUT, "three", "LICENSE"));
for (const rel of ["loaders/GLTFLoader.js", "controls/OrbitControls.js", "libs/meshopt_decoder.module.js",
  "postprocessing/Pass.js"]) copyThreeAddon(rel);

copy(join(NM, "@sparkjsdev", "spark", "dist", "spark.module.min.js"), join(OUT, "spark", "spark.module.min.js"));
copy(join(NM, "@sparkjsdev", "spark", "LICENSE"), join(OUT, "spark", "LICENSE"));

const ORT = join(NM, "onnxruntime-web", "dist");
// The wasm-only bundle (no WebGPU/WebGL/JSEP code) and its one binary; the viewer runs it on one
// thread (numThreads = 1), so no SharedArrayBuffer or cross-origin isolation is needed.
for (const f of ["ort.wasm.bundle.min.mjs", "ort-wasm-simd-threaded.wasm"]) {
  copy(join(ORT, f), join(OUT, "onnxruntime-web", f));
}
if (!existsSync(join(OUT, "README.md"))) throw new Error("vendor/README.md is missing");

const versions = {
  three: version("three"),
  "@sparkjsdev/spark": version("@sparkjsdev/spark"),
  "onnxruntime-web": version("onnxruntime-web"),
};
writeFileSync(join(OUT, "VERSIONS.json"), JSON.stringify(versions, null, 2) + "\n");
console.log(JSON.stringify(versions));
