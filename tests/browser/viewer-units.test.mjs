// The viewer's page-independent parts under Node: the incremental SSE parser, the voxel and
// mesh models, and the software renderer (run: node --test tests/browser/).
import { test } from "node:test";
import assert from "node:assert/strict";

import {
  Renderer, SSEParser, meshModel, surfaceShading, viewMatrix, voxelModel,
} from "../../serve_app/static/viewer.js";

// ------------------------------------------------------------------------------------ SSE

// As serve_app.protocol.events.format_sse writes them, plus what any SSE server may add:
// comments, a heartbeat, multi-line data, CRLF line ends and raw UTF-8.
const EVENTS = [
  { type: "loading", seq: 0, message: "accepted" },
  { type: "geometry", seq: 1, frame_data: "VlgBBQQAAAAAAAAAAAADAAAAAXY=" },
  { type: "loading", seq: 2, message: "café ✓ — 漢字 🙂" },
];
const sse = (ev) => `event: ${ev.type}\nid: ${ev.seq}\ndata: ${JSON.stringify(ev)}\n\n`;
const BODY = `: comment\n\n${sse(EVENTS[0])}:heartbeat\n\n${sse(EVENTS[1])}${sse(EVENTS[2])}`;
const utf8 = (s) => new TextEncoder().encode(s);

function parseAll(chunks) {
  const p = new SSEParser();
  const out = [];
  for (const c of chunks) out.push(...p.feed(c));
  out.push(...p.end());
  return out;
}

test("SSE: every event, whatever byte the body is split at (inside UTF-8 too)", () => {
  const bytes = utf8(BODY);
  for (let cut = 0; cut <= bytes.length; cut++) {
    const msgs = parseAll([bytes.subarray(0, cut), bytes.subarray(cut)]);
    assert.deepEqual(msgs.map((m) => JSON.parse(m.data)), EVENTS, `cut at ${cut}`);
    assert.deepEqual(msgs.map((m) => m.event), EVENTS.map((e) => e.type));
    assert.deepEqual(msgs.map((m) => m.id), EVENTS.map((e) => String(e.seq)));
  }
});

test("SSE: one byte at a time, CRLF and CR line ends", () => {
  for (const eol of ["\r\n", "\r"]) {
    const bytes = utf8(BODY.replace(/\n/g, eol));
    const msgs = parseAll(Array.from(bytes, (b) => Uint8Array.of(b)));
    assert.deepEqual(msgs.map((m) => JSON.parse(m.data)), EVENTS, JSON.stringify(eol));
  }
});

test("SSE: events complete only at their blank line; multi-line data; a last event without one", () => {
  const p = new SSEParser();
  assert.deepEqual(p.feed("event: x\ndata: {\"a\":\ndata: 1}\n"), []);
  assert.deepEqual(p.feed("\n"), [{ event: "x", id: null, data: "{\"a\":\n1}" }]);
  assert.deepEqual(p.feed("data:no-space\n\ndata: tail"), [{ event: "message", id: null, data: "no-space" }]);
  assert.deepEqual(p.end(), [{ event: "message", id: null, data: "tail" }]);
});

// ------------------------------------------------------------------------------------ models

test("viewMatrix is a rotation; yaw and pitch 0 look straight down -z", () => {
  assert.deepEqual(viewMatrix(0, 0).map((v) => v + 0), [1, 0, 0, 0, 1, 0, 0, 0, 1]);
  const R = viewMatrix(0.7, -0.3);
  for (let i = 0; i < 3; i++) {
    for (let j = 0; j < 3; j++) {
      const dot = R[3 * i] * R[3 * j] + R[3 * i + 1] * R[3 * j + 1] + R[3 * i + 2] * R[3 * j + 2];
      assert.ok(Math.abs(dot - (i === j ? 1 : 0)) < 1e-12);
    }
  }
  // Positive pitch looks down from above: the top (+y) faces the viewer.
  assert.ok(viewMatrix(0, 0.4)[7] > 0);
});

test("voxelModel: grid to the mesh preview's unit cube; neutral colour without colours", () => {
  const m = voxelModel(Uint16Array.of(0, 0, 0, 3, 3, 3), null, 4);
  assert.deepEqual(Array.from(m.pos), [-0.375, -0.375, -0.375, 0.375, 0.375, 0.375]);
  assert.deepEqual(m.center, [0, 0, 0]);
  assert.equal(m.size, 0.25);
  assert.equal(m.colored, false);
  assert.deepEqual(Array.from(m.rgb.subarray(0, 3)), Array.from(m.rgb.subarray(3, 6)));
  const c = voxelModel(Uint16Array.of(1, 2, 3), Uint8Array.of(200, 10, 20), 4);
  assert.deepEqual(Array.from(c.rgb), [200, 10, 20]);
});

/** The shell of a solid ball, as the server sends it: voxels with an empty face neighbour. */
function ballShell(n, r) {
  const inside = (x, y, z) => (x - n / 2 + 0.5) ** 2 + (y - n / 2 + 0.5) ** 2 + (z - n / 2 + 0.5) ** 2 <= r * r;
  const coords = [];
  for (let z = 0; z < n; z++) {
    for (let y = 0; y < n; y++) {
      for (let x = 0; x < n; x++) {
        if (!inside(x, y, z)) continue;
        const nb = [[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]];
        if (nb.some(([a, b, c]) => !inside(x + a, y + b, z + c))) coords.push(x, y, z);
      }
    }
  }
  return Uint16Array.from(coords);
}

test("surfaceShading: normals of a ball's shell point outwards", () => {
  const n = 32;
  const coords = ballShell(n, 11);
  const count = coords.length / 3;
  const { normals, occlusion } = surfaceShading(coords, count, n);
  let worst = 1;
  for (let i = 0; i < count; i++) {
    const d = [0, 1, 2].map((a) => coords[3 * i + a] - n / 2 + 0.5);
    const len = Math.hypot(...d);
    const dot = (d[0] * normals[3 * i] + d[1] * normals[3 * i + 1] + d[2] * normals[3 * i + 2]) / len;
    worst = Math.min(worst, dot);
    assert.ok(occlusion[i] >= 0.55 && occlusion[i] <= 1.15);
  }
  assert.ok(worst > 0.85, `a normal points ${Math.acos(worst)} rad off the radius`);
});

function meshEvent(vertices, faces, colors) {
  const b64 = (typed) => Buffer.from(typed.buffer, typed.byteOffset, typed.byteLength).toString("base64");
  return {
    vertices_data: b64(Float32Array.from(vertices)), faces_data: b64(Uint32Array.from(faces)),
    vertex_colors_data: b64(Uint8Array.from(colors)), vertex_count: vertices.length / 3, face_count: faces.length / 3,
  };
}

test("meshModel refuses sizes that disagree with the counts and faces out of range", () => {
  const ok = meshEvent([0, 0, 0, 1, 0, 0, 0, 1, 0], [0, 1, 2], [1, 2, 3, 4, 5, 6, 7, 8, 9]);
  assert.equal(meshModel(ok).faceCount, 1);
  assert.throws(() => meshModel({ ...ok, vertex_count: 4 }), /do not match/);
  assert.throws(() => meshModel(meshEvent([0, 0, 0, 1, 0, 0, 0, 1, 0], [0, 1, 3], [0, 0, 0, 0, 0, 0, 0, 0, 0])), /missing vertex/);
});

// ------------------------------------------------------------------------------------ renderer

const RGBA = (px) => [px & 0xff, (px >>> 8) & 0xff, (px >>> 16) & 0xff, px >>> 24];
const FRONT = { yaw: 0, pitch: 0, zoom: 1, radius: 0.5 };

test("painter's order: the nearer voxel covers the farther one, whatever their order in the frame", () => {
  const r = new Renderer(64, 64);
  for (const coords of [[1, 1, 0, 1, 1, 3], [1, 1, 3, 1, 1, 0]]) {
    const colors = coords[2] === 3 ? [250, 0, 0, 0, 0, 250] : [0, 0, 250, 250, 0, 0]; // the z = 3 voxel is red
    const m = voxelModel(Uint16Array.from(coords), Uint8Array.from(colors), 4);
    r.clear();
    r.drawVoxels(m, FRONT);
    const [red, green, blue, alpha] = RGBA(r.pixels[32 * 64 + 32]);
    assert.equal(alpha, 255);
    assert.ok(red > 100 && blue < 20 && green < 20, `centre pixel ${[red, green, blue]}`);
  }
});

test("voxels land where the projection puts them and leave the rest as background", () => {
  const r = new Renderer(80, 60);
  r.clear();
  const background = r.pixels.slice();
  const m = voxelModel(Uint16Array.of(0, 0, 0, 7, 0, 0), null, 8); // two voxels 7 apart on x
  const cam = { yaw: 0, pitch: 0, zoom: 1, radius: m.radius };
  r.drawVoxels(m, cam);
  const s = r.scale(cam);
  const changed = [];
  for (let i = 0; i < r.pixels.length; i++) if (r.pixels[i] !== background[i]) changed.push(i % 80);
  assert.ok(changed.length > 0);
  // Seen head-on, a voxel is a square of side s/8 pixels around its projected centre.
  const half = (7 / 8) * s / 2;
  for (const x of changed) assert.ok(Math.abs(Math.abs(x + 0.5 - 40) - half) <= s / 16 + 1.5, `pixel column ${x}`);
});

test("mesh: front faces drawn with interpolated colours, back faces culled", () => {
  // Two triangles in the z = 0 plane: one wound to face +z (the viewer), one to face -z.
  const v = [-0.4, -0.4, 0, 0.4, -0.4, 0, 0, 0.4, 0];
  const facing = meshModel(meshEvent(v, [0, 1, 2], [255, 0, 0, 0, 255, 0, 0, 0, 255]));
  const away = meshModel(meshEvent(v, [0, 2, 1], [255, 0, 0, 0, 255, 0, 0, 0, 255]));
  const r = new Renderer(50, 50);
  r.clear();
  const background = r.pixels.slice();
  assert.equal(r.drawMesh(away, { ...FRONT, radius: 0.6 }), 0);
  assert.deepEqual(r.pixels, background);
  assert.equal(r.drawMesh(facing, { ...FRONT, radius: 0.6 }), 1);
  const [red, green, blue] = RGBA(r.pixels[28 * 50 + 25]); // near the centroid: all three colours mix
  assert.ok(red > 30 && green > 30 && blue > 30, `${[red, green, blue]}`);
  const [redCorner, , blueCorner] = RGBA(r.pixels[39 * 50 + 10]); // near the red bottom-left vertex
  assert.ok(redCorner > 2 * blueCorner, `${redCorner} vs ${blueCorner}`);
});
