// The bundled viewer: pick a photo, mark the object, POST /v1/generate, read the Server-Sent
// Events with fetch (EventSource cannot POST), and draw each voxel frame as it arrives with a
// small software renderer (orthographic cubes, painter's algorithm) on a 2D canvas.
//
// An ES module with no dependencies and no build step. The parts that do not touch the page
// (SSEParser, viewMatrix, voxelModel, meshModel, Renderer) are exported so Node can test them;
// the page itself starts only where there is a document.

import { ResyncNeeded, VoxelStreamDecoder, base64ToBytes, decodeSeedEvent } from "./voxel-codec.js";

// ------------------------------------------------------------------------------------ SSE

/** One SSE message block → { event, id, data } or null (comments, heartbeats, no data). */
function parseBlock(block) {
  const data = [];
  let event = "message";
  let id = null;
  for (const line of block.split("\n")) {
    if (line === "" || line[0] === ":") continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value[0] === " ") value = value.slice(1);
    if (field === "data") data.push(value);
    else if (field === "event") event = value;
    else if (field === "id") id = value;
  }
  return data.length ? { event, id, data: data.join("\n") } : null;
}

/**
 * Incremental Server-Sent Events parser: feed() the body's chunks as they arrive (bytes or
 * text, split anywhere, even inside a UTF-8 character or a CRLF), get back the messages
 * completed so far; end() flushes a last message that lacks its blank line.
 */
export class SSEParser {
  constructor() {
    this._utf8 = new TextDecoder("utf-8");
    this._buf = "";
  }

  feed(chunk) {
    this._buf += typeof chunk === "string" ? chunk : this._utf8.decode(chunk, { stream: true });
    return this._drain(false);
  }

  end() {
    this._buf += this._utf8.decode();
    return this._drain(true);
  }

  _drain(final) {
    let text = this._buf;
    let held = "";
    if (!final && text.endsWith("\r")) {
      held = "\r"; // may be the first half of a CRLF
      text = text.slice(0, -1);
    }
    const blocks = text.replace(/\r\n?/g, "\n").split("\n\n");
    let rest = blocks.pop();
    if (final) {
      blocks.push(rest);
      rest = "";
    }
    this._buf = rest + held;
    const out = [];
    for (const block of blocks) {
      const msg = parseBlock(block);
      if (msg) out.push(msg);
    }
    return out;
  }
}

// ------------------------------------------------------------------------------------ models

/** World → view rotation (row-major 3×3): turn by `yaw` about y, then tilt by `pitch` about x. */
export function viewMatrix(yaw, pitch) {
  const cy = Math.cos(yaw);
  const sy = Math.sin(yaw);
  const cp = Math.cos(pitch);
  const sp = Math.sin(pitch);
  return [cy, 0, sy, sp * sy, cp, -sp * cy, -cp * sy, sp, cp * cy];
}

const NEUTRAL = [188, 196, 210]; // geometry frames: a light grey-blue clay

/**
 * A voxel frame as something to draw. `coords` are grid units [x0,y0,z0, ...] (x right, y up,
 * z towards the camera) in an n³ grid; `colors` RGB per voxel or null. World space is the
 * unit cube [-0.5, 0.5]³, the same as the mesh preview's, so the two line up.
 */
export function voxelModel(coords, colors, gridSize) {
  const count = Math.floor(coords.length / 3);
  const pos = new Float32Array(3 * count);
  const lo = [Infinity, Infinity, Infinity];
  const hi = [-Infinity, -Infinity, -Infinity];
  for (let i = 0; i < 3 * count; i += 3) {
    for (let a = 0; a < 3; a++) {
      const w = (coords[i + a] + 0.5) / gridSize - 0.5;
      pos[i + a] = w;
      if (w < lo[a]) lo[a] = w;
      if (w > hi[a]) hi[a] = w;
    }
  }
  let rgb = colors;
  if (!rgb) {
    rgb = new Uint8Array(3 * count);
    for (let i = 0; i < 3 * count; i += 3) rgb.set(NEUTRAL, i);
  }
  const surface = gridSize <= MAX_SURFACE_GRID ? surfaceShading(coords, count, gridSize) : null;
  return {
    kind: "voxels", count, pos, rgb, colored: !!colors, size: 1 / gridSize,
    normals: surface && surface.normals, occlusion: surface && surface.occlusion,
    ...frame(lo, hi, count, 0.5 / gridSize),
  };
}

const MAX_SURFACE_GRID = 128; // above this the solid grid would cost too much memory; faces only
const WINDOW = 2; // the neighbourhood (5³) that gives a voxel its surface normal

/**
 * Smooth surface normals and an occlusion factor per voxel, so a curved object made of cubes
 * reads as curved. Frames carry only the visible shell (occupied voxels with an empty face
 * neighbour), so the solid is rebuilt first: every cell that the outside cannot reach through
 * face-adjacent empty cells is inside. A voxel's normal then points away from the centroid of
 * the solid cells around it; how much of that neighbourhood is solid says how sheltered it is.
 */
export function surfaceShading(coords, count, n) {
  const nn = n * n;
  const cells = new Uint8Array(nn * n); // 1 shell, 2 outside, 0 inside (or not reached)
  for (let i = 0; i < 3 * count; i += 3) cells[Math.round(coords[i]) + n * Math.round(coords[i + 1]) + nn * Math.round(coords[i + 2])] = 1;
  const queue = new Int32Array(nn * n);
  let head = 0;
  let tail = 0;
  const visit = (l) => {
    if (cells[l] === 0) {
      cells[l] = 2;
      queue[tail++] = l;
    }
  };
  for (let a = 0; a < n; a++) {
    for (let b = 0; b < n; b++) {
      for (const l of [a + n * b, a + n * b + nn * (n - 1), a + nn * b, a + n * (n - 1) + nn * b, n * a + nn * b, n - 1 + n * a + nn * b]) visit(l);
    }
  }
  while (head < tail) {
    const l = queue[head++];
    const x = l % n;
    const y = ((l / n) | 0) % n;
    const z = (l / nn) | 0;
    if (x > 0) visit(l - 1);
    if (x < n - 1) visit(l + 1);
    if (y > 0) visit(l - n);
    if (y < n - 1) visit(l + n);
    if (z > 0) visit(l - nn);
    if (z < n - 1) visit(l + nn);
  }
  const normals = new Float32Array(3 * count);
  const occlusion = new Float32Array(count);
  const flat = 3 / 5; // solid fraction of the window on a flat surface
  for (let i = 0; i < count; i++) {
    const x = Math.round(coords[3 * i]);
    const y = Math.round(coords[3 * i + 1]);
    const z = Math.round(coords[3 * i + 2]);
    let mx = 0, my = 0, mz = 0, solid = 0, total = 0;
    for (let dz = -WINDOW; dz <= WINDOW; dz++) {
      const zz = z + dz;
      for (let dy = -WINDOW; dy <= WINDOW; dy++) {
        const yy = y + dy;
        for (let dx = -WINDOW; dx <= WINDOW; dx++) {
          const xx = x + dx;
          total++;
          if (xx < 0 || yy < 0 || zz < 0 || xx >= n || yy >= n || zz >= n) continue;
          if (cells[xx + n * yy + nn * zz] !== 2) {
            mx += dx;
            my += dy;
            mz += dz;
            solid++;
          }
        }
      }
    }
    const len = Math.hypot(mx, my, mz);
    if (len > 0) {
      normals[3 * i] = -mx / len;
      normals[3 * i + 1] = -my / len;
      normals[3 * i + 2] = -mz / len;
    } else {
      normals[3 * i + 2] = 1;
    }
    const k = 1 - 1.1 * (solid / total - flat);
    occlusion[i] = k < 0.55 ? 0.55 : k > 1.15 ? 1.15 : k;
  }
  return { normals, occlusion };
}

/** Centre, bounding radius and a radius to frame the view with, from a bounding box. */
function frame(lo, hi, count, pad) {
  if (!count) return { center: [0, 0, 0], radius: 0.5, fitRadius: 0.5 };
  const center = [0, 1, 2].map((a) => (lo[a] + hi[a]) / 2);
  const e = [0, 1, 2].map((a) => hi[a] - lo[a] + 2 * pad);
  const radius = 0.5 * Math.hypot(e[0], e[1], e[2]);
  // The silhouette fixes x and y from the first frame while the object swells in z: frame the
  // view as if it were already as deep as it is wide, so it does not zoom while it grows.
  const fitRadius = 0.5 * Math.hypot(e[0], e[1], Math.max(e[2], e[0], e[1]));
  return { center, radius, fitRadius };
}

/** A `mesh_preview` event (base64 float32 vertices, uint32 faces, uint8 colours) as a model. */
export function meshModel(ev) {
  const V = ev.vertex_count;
  const F = ev.face_count;
  const vb = base64ToBytes(ev.vertices_data);
  const fb = base64ToBytes(ev.faces_data);
  const cb = base64ToBytes(ev.vertex_colors_data);
  if (vb.length !== 12 * V || fb.length !== 12 * F || cb.length !== 3 * V) {
    throw new Error(`mesh preview sizes do not match its counts (${V} vertices, ${F} faces)`);
  }
  const pos = new Float32Array(vb.buffer, vb.byteOffset, 3 * V);
  const faces = new Uint32Array(fb.buffer, fb.byteOffset, 3 * F);
  for (let i = 0; i < faces.length; i++) {
    if (faces[i] >= V) throw new Error("mesh preview face refers to a missing vertex");
  }
  const lo = [Infinity, Infinity, Infinity];
  const hi = [-Infinity, -Infinity, -Infinity];
  for (let i = 0; i < 3 * V; i += 3) {
    for (let a = 0; a < 3; a++) {
      if (pos[i + a] < lo[a]) lo[a] = pos[i + a];
      if (pos[i + a] > hi[a]) hi[a] = pos[i + a];
    }
  }
  // Area-weighted vertex normals for smooth (Gouraud) shading; faces wind outwards.
  const normals = new Float32Array(3 * V);
  for (let f = 0; f < faces.length; f += 3) {
    const a = 3 * faces[f];
    const b = 3 * faces[f + 1];
    const c = 3 * faces[f + 2];
    const ux = pos[b] - pos[a], uy = pos[b + 1] - pos[a + 1], uz = pos[b + 2] - pos[a + 2];
    const vx = pos[c] - pos[a], vy = pos[c + 1] - pos[a + 1], vz = pos[c + 2] - pos[a + 2];
    const nx = uy * vz - uz * vy, ny = uz * vx - ux * vz, nz = ux * vy - uy * vx;
    for (const k of [a, b, c]) {
      normals[k] += nx;
      normals[k + 1] += ny;
      normals[k + 2] += nz;
    }
  }
  for (let i = 0; i < 3 * V; i += 3) {
    const l = Math.hypot(normals[i], normals[i + 1], normals[i + 2]) || 1;
    normals[i] /= l;
    normals[i + 1] /= l;
    normals[i + 2] /= l;
  }
  return { kind: "mesh", vertexCount: V, faceCount: F, pos, faces, normals, rgb: cb, ...frame(lo, hi, V, 0) };
}

// ------------------------------------------------------------------------------------ renderer

const LIGHT = (() => {
  const l = [-0.45, 0.75, 0.5]; // view space: from the upper left, in front
  const n = Math.hypot(...l);
  return l.map((v) => v / n);
})();
const AMBIENT = 0.45;
const DIFFUSE = 0.65;
const FACE_MIX = 0.45; // cube faces: this much flat face shading, the rest the smooth surface's
const FOG = 0.25; // the far side of the object is this much darker than the near side
const DEPTH_BUCKETS = 2048;
const BG_TOP = [52, 58, 72];
const BG_BOTTOM = [24, 27, 34];

const pack = (r, g, b) => (0xff000000 | (b << 16) | (g << 8) | r) >>> 0;
const clamp8 = (v) => (v > 255 ? 255 : v < 0 ? 0 : v | 0);

/**
 * The screen footprint of one cube for a given rotation and size (pixels): the pixels it
 * covers around its centre, each tagged with the visible face it belongs to and whether it
 * lies on the face's edge. Orthographic projection makes every cube's footprint the same, so
 * drawing a voxel is stamping it.
 */
function cubeStamp(R, side) {
  const half = side / 2;
  // Screen half-vectors of the three cube axes (screen y points down).
  const ax = [0, 1, 2].map((k) => [R[k] * half, -R[3 + k] * half]);
  const faces = [];
  for (let k = 0; k < 3; k++) {
    const toward = R[6 + k];
    if (Math.abs(toward) < 1e-4) continue; // seen edge-on
    const sign = toward > 0 ? 1 : -1;
    const e1 = ax[(k + 1) % 3];
    const e2 = ax[(k + 2) % 3];
    const det = e1[0] * e2[1] - e1[1] * e2[0];
    if (Math.abs(det) < 1e-6) continue;
    faces.push({
      normal: [sign * R[k], sign * R[3 + k], sign * R[6 + k]],
      c: [sign * ax[k][0], sign * ax[k][1]], e1, e2, det,
      d1: Math.abs(det) / Math.hypot(e2[0], e2[1]), // pixels from the centre line to the u = ±1 edges
      d2: Math.abs(det) / Math.hypot(e1[0], e1[1]),
    });
  }
  const reach = Math.ceil(Math.abs(ax[0][0]) + Math.abs(ax[1][0]) + Math.abs(ax[2][0]) +
    Math.abs(ax[0][1]) + Math.abs(ax[1][1]) + Math.abs(ax[2][1])) + 1;
  const grow = 0.55; // overlap neighbours by about half a pixel so no gaps show
  // The cube's outline is the zonotope of the three axis vectors: a point is inside when, across
  // each axis's edge direction, it is no farther out than the three axes reach.
  const hull = ax.filter((a) => Math.hypot(a[0], a[1]) > 1e-6).map((a) => {
    const l = Math.hypot(a[0], a[1]);
    const nx = -a[1] / l;
    const ny = a[0] / l;
    return [nx, ny, ax.reduce((sum, b) => sum + Math.abs(nx * b[0] + ny * b[1]), 0) + grow];
  });
  const edge = side >= 5 ? 0.9 : 0; // outline width in pixels, only when cubes are big enough
  const dx = [];
  const dy = [];
  const tag = [];
  for (let py = -reach; py <= reach; py++) {
    for (let px = -reach; px <= reach; px++) {
      const qx = px + 0.5;
      const qy = py + 0.5;
      if (hull.some(([nx, ny, reach]) => Math.abs(nx * qx + ny * qy) > reach)) continue;
      let best = -1;
      let bestOut = Infinity;
      let onEdge = false;
      for (let f = 0; f < faces.length; f++) {
        const F = faces[f];
        const rx = qx - F.c[0];
        const ry = qy - F.c[1];
        const u = (rx * F.e2[1] - ry * F.e2[0]) / F.det;
        const v = (F.e1[0] * ry - F.e1[1] * rx) / F.det;
        const out = Math.max((Math.abs(u) - 1) * F.d1, (Math.abs(v) - 1) * F.d2); // px outside
        if (out < bestOut) {
          bestOut = out;
          best = f;
          onEdge = out > -edge;
        }
      }
      if (best >= 0) {
        dx.push(px);
        dy.push(py);
        tag.push(2 * best + (onEdge ? 1 : 0));
      }
    }
  }
  return { faces, dx: Int32Array.from(dx), dy: Int32Array.from(dy), tag: Uint8Array.from(tag) };
}

function lambert(n) {
  const d = n[0] * LIGHT[0] + n[1] * LIGHT[1] + n[2] * LIGHT[2];
  return AMBIENT + DIFFUSE * (d > 0 ? d : 0);
}

/**
 * Draws voxel and mesh models into its own RGBA pixel buffer (`pixels`, a Uint32Array in
 * canvas byte order), back to front. Knows nothing of the page: the viewer copies the
 * buffer into an ImageData; tests read it directly.
 */
export class Renderer {
  constructor(width, height) {
    this.resize(width, height);
    this._stampKey = "";
    this._stamp = null;
  }

  resize(width, height) {
    this.width = Math.max(1, width | 0);
    this.height = Math.max(1, height | 0);
    this.pixels = new Uint32Array(this.width * this.height);
    this._bg = new Uint32Array(this.width * this.height);
    for (let y = 0; y < this.height; y++) {
      const t = y / Math.max(1, this.height - 1);
      const c = pack(...BG_TOP.map((v, i) => Math.round(v + (BG_BOTTOM[i] - v) * t)));
      this._bg.fill(c, y * this.width, (y + 1) * this.width);
    }
  }

  clear() {
    this.pixels.set(this._bg);
  }

  /** Pixels per world unit for a camera {zoom, radius}: the radius spans 56 % of the short side. */
  scale(cam) {
    return (cam.zoom * 0.56 * Math.min(this.width, this.height)) / cam.radius;
  }

  /** Rotate and project `pos` around `center`; fills this._sx/_sy (pixels) and this._dz (view z). */
  _project(pos, n, center, R, s) {
    if (!this._sx || this._sx.length < n) {
      const cap = Math.max(n, 1024);
      this._sx = new Float32Array(cap);
      this._sy = new Float32Array(cap);
      this._dz = new Float32Array(cap);
      this._order = new Uint32Array(cap);
    }
    const cx = this.width / 2;
    const cy = this.height / 2;
    const [c0, c1, c2] = center;
    for (let i = 0, j = 0; i < n; i++, j += 3) {
      const x = pos[j] - c0;
      const y = pos[j + 1] - c1;
      const z = pos[j + 2] - c2;
      this._sx[i] = cx + s * (R[0] * x + R[1] * y + R[2] * z);
      this._sy[i] = cy - s * (R[3] * x + R[4] * y + R[5] * z);
      this._dz[i] = R[6] * x + R[7] * y + R[8] * z;
    }
  }

  /** Indices 0..n-1 ordered far to near by `depth` (counting sort on quantised depth). */
  _backToFront(depth, n, radius, keep = null) {
    const counts = (this._counts ||= new Uint32Array(DEPTH_BUCKETS + 1));
    counts.fill(0);
    const keys = (this._keys && this._keys.length >= n) ? this._keys : (this._keys = new Uint16Array(Math.max(n, 1024)));
    const q = (DEPTH_BUCKETS - 1) / (2 * radius);
    let m = 0;
    for (let i = 0; i < n; i++) {
      if (keep && !keep[i]) {
        keys[i] = DEPTH_BUCKETS;
        continue;
      }
      let k = ((depth[i] + radius) * q) | 0;
      k = k < 0 ? 0 : k >= DEPTH_BUCKETS ? DEPTH_BUCKETS - 1 : k;
      keys[i] = k;
      counts[k + 1]++;
      m++;
    }
    for (let k = 1; k <= DEPTH_BUCKETS; k++) counts[k] += counts[k - 1];
    const order = this._sortOut && this._sortOut.length >= n ? this._sortOut : (this._sortOut = new Uint32Array(Math.max(n, 1024)));
    for (let i = 0; i < n; i++) {
      const k = keys[i];
      if (k < DEPTH_BUCKETS) order[counts[k]++] = i;
    }
    return { order, count: m };
  }

  /** Voxels as shaded cubes. cam: {yaw, pitch, zoom, radius}. */
  drawVoxels(model, cam) {
    const W = this.width;
    const H = this.height;
    const buf = this.pixels;
    const n = model.count;
    if (!n) return 0;
    const R = viewMatrix(cam.yaw, cam.pitch);
    const s = this.scale(cam);
    const side = s * model.size;
    const key = `${R.map((v) => v.toFixed(5)).join(",")}|${side.toFixed(3)}`;
    if (key !== this._stampKey) {
      this._stamp = cubeStamp(R, side);
      this._stampKey = key;
    }
    const { faces, dx, dy, tag } = this._stamp;
    const faceShade = faces.map((F) => lambert(F.normal));
    const nf = faces.length;
    const shade = new Float32Array(6);
    const normals = model.normals;
    const occlusion = model.occlusion;
    this._project(model.pos, n, model.center, R, s);
    const radius = model.radius;
    const { order } = this._backToFront(this._dz, n, radius);
    const cols = new Uint32Array(6);
    const rgb = model.rgb;
    const T = dx.length;
    for (let o = 0; o < n; o++) {
      const i = order[o];
      const fog = 1 - FOG * (0.5 - (0.5 * this._dz[i]) / radius);
      const r = rgb[3 * i] * fog;
      const g = rgb[3 * i + 1] * fog;
      const b = rgb[3 * i + 2] * fog;
      if (normals) {
        const j = 3 * i;
        const smooth = lambert([R[0] * normals[j] + R[1] * normals[j + 1] + R[2] * normals[j + 2],
          R[3] * normals[j] + R[4] * normals[j + 1] + R[5] * normals[j + 2],
          R[6] * normals[j] + R[7] * normals[j + 1] + R[8] * normals[j + 2]]);
        for (let f = 0; f < nf; f++) shade[2 * f] = (FACE_MIX * faceShade[f] + (1 - FACE_MIX) * smooth) * occlusion[i];
      } else {
        for (let f = 0; f < nf; f++) shade[2 * f] = faceShade[f];
      }
      for (let f = 0; f < nf; f++) shade[2 * f + 1] = 0.82 * shade[2 * f]; // outline: darker
      for (let t = 0; t < 2 * nf; t++) cols[t] = pack(clamp8(r * shade[t]), clamp8(g * shade[t]), clamp8(b * shade[t]));
      const bx = Math.round(this._sx[i]);
      const by = Math.round(this._sy[i]);
      for (let t = 0; t < T; t++) {
        const x = bx + dx[t];
        const y = by + dy[t];
        if (x < 0 || y < 0 || x >= W || y >= H) continue;
        buf[y * W + x] = cols[tag[t]];
      }
    }
    return n;
  }

  /** The mesh preview: back-face culled triangles, sorted far to near, Gouraud-shaded. */
  drawMesh(model, cam) {
    const V = model.vertexCount;
    if (!V) return 0;
    const R = viewMatrix(cam.yaw, cam.pitch);
    const s = this.scale(cam);
    this._project(model.pos, V, model.center, R, s);
    const sx = this._sx;
    const sy = this._sy;
    const dz = this._dz;
    const lit = (this._lit && this._lit.length >= 3 * V) ? this._lit : (this._lit = new Float32Array(3 * V));
    const nrm = model.normals;
    const rgb = model.rgb;
    const radius = model.radius;
    for (let i = 0, j = 0; i < V; i++, j += 3) {
      const n = [R[0] * nrm[j] + R[1] * nrm[j + 1] + R[2] * nrm[j + 2],
        R[3] * nrm[j] + R[4] * nrm[j + 1] + R[5] * nrm[j + 2],
        R[6] * nrm[j] + R[7] * nrm[j + 1] + R[8] * nrm[j + 2]];
      const k = lambert(n) * (1 - FOG * (0.5 - (0.5 * dz[i]) / radius));
      lit[j] = rgb[j] * k;
      lit[j + 1] = rgb[j + 1] * k;
      lit[j + 2] = rgb[j + 2] * k;
    }
    const faces = model.faces;
    const F = model.faceCount;
    const depth = (this._fdepth && this._fdepth.length >= F) ? this._fdepth : (this._fdepth = new Float32Array(F));
    const keep = (this._fkeep && this._fkeep.length >= F) ? this._fkeep : (this._fkeep = new Uint8Array(F));
    for (let f = 0, j = 0; f < F; f++, j += 3) {
      const a = faces[j];
      const b = faces[j + 1];
      const c = faces[j + 2];
      // Screen y points down, so a triangle facing the viewer winds clockwise on screen.
      const cross = (sx[b] - sx[a]) * (sy[c] - sy[a]) - (sy[b] - sy[a]) * (sx[c] - sx[a]);
      keep[f] = cross < 0 ? 1 : 0;
      depth[f] = (dz[a] + dz[b] + dz[c]) / 3;
    }
    const { order, count } = this._backToFront(depth, F, radius, keep);
    for (let o = 0; o < count; o++) {
      const j = 3 * order[o];
      this._triangle(faces[j], faces[j + 1], faces[j + 2], lit);
    }
    return count;
  }

  _triangle(a, b, c, lit) {
    const W = this.width;
    const H = this.height;
    const buf = this.pixels;
    const sx = this._sx;
    const sy = this._sy;
    const x0 = sx[a], y0 = sy[a], x1 = sx[b], y1 = sy[b], x2 = sx[c], y2 = sy[c];
    const area = (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0);
    if (area === 0) return;
    const inv = 1 / area;
    const minX = Math.max(0, Math.floor(Math.min(x0, x1, x2)));
    const maxX = Math.min(W - 1, Math.ceil(Math.max(x0, x1, x2)));
    const minY = Math.max(0, Math.floor(Math.min(y0, y1, y2)));
    const maxY = Math.min(H - 1, Math.ceil(Math.max(y0, y1, y2)));
    const A = 3 * a, B = 3 * b, C = 3 * c;
    const eps = -1e-4;
    for (let y = minY; y <= maxY; y++) {
      const py = y + 0.5;
      for (let x = minX; x <= maxX; x++) {
        const px = x + 0.5;
        const w0 = ((x1 - px) * (y2 - py) - (y1 - py) * (x2 - px)) * inv;
        if (w0 < eps) continue;
        const w1 = ((x2 - px) * (y0 - py) - (y2 - py) * (x0 - px)) * inv;
        if (w1 < eps) continue;
        const w2 = 1 - w0 - w1;
        if (w2 < eps) continue;
        buf[y * W + x] = pack(
          clamp8(w0 * lit[A] + w1 * lit[B] + w2 * lit[C]),
          clamp8(w0 * lit[A + 1] + w1 * lit[B + 1] + w2 * lit[C + 1]),
          clamp8(w0 * lit[A + 2] + w1 * lit[B + 2] + w2 * lit[C + 2]),
        );
      }
    }
  }
}

// ------------------------------------------------------------------------------------ the page

const STAGES = [
  ["request", "Request"],
  ["prompt_enhancer", "Prompt"],
  ["image_generator", "Image"],
  ["segmenter", "Segmenting"],
  ["geometry", "Geometry"],
  ["appearance", "Colours"],
  ["mesh_baker", "Meshing"],
  ["store", "Saving"],
];
const TEXT_ONLY_STAGES = new Set(["prompt_enhancer", "image_generator"]);
const HOME = { yaw: -0.55, pitch: 0.38, zoom: 1 };
const IDLE_BEFORE_SPIN_MS = 2500;
const SPIN_RAD_PER_S = 0.45;
const LOG_LIMIT = 300;
const MAX_VIEW_PIXELS = 1.1e6;

const fmtBytes = (n) => (n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(1)} MB` : `${Math.max(1, Math.round(n / 1024))} kB`);

/** An image, decoded, or null when it cannot be loaded or decoded. */
async function loadImage(url) {
  const img = new Image();
  img.src = url;
  try {
    await img.decode();
    return img;
  } catch {
    return null;
  }
}

function freshState() {
  return {
    phase: "idle", // idle · streaming · complete · error · stopped
    requestId: null,
    progress: 0,
    stage: null,
    events: 0,
    eventCounts: {},
    framesDecoded: 0,
    geometryFramesDrawn: 0,
    appearanceFramesDrawn: 0,
    meshDrawn: false,
    view: "voxels",
    voxelCount: 0,
    lastFrame: null, // {type, frameSeq, count} of the last frame decoded
    lastFrameEvent: null, // {type, frame_seq, voxel_count} of the last frame event received
    resyncs: 0,
    keyFrameRequests: [],
    decodeErrors: 0,
    droppedForTest: null,
    error: null,
    complete: null,
    glbUrl: null,
    renderMs: 0,
  };
}

function startPage() {
  const $ = (id) => document.getElementById(id);
  const el = {
    file: $("file"), fileName: $("file-name"), wrap: $("photo-wrap"), photo: $("photo"),
    overlay: $("overlay"), summary: $("prompt-summary"), undo: $("undo"), clear: $("clear"),
    label: $("label"), geoEvery: $("geo-every"), colEvery: $("col-every"),
    generate: $("generate"), cancel: $("cancel"), view: $("view"), viewInfo: $("view-info"), viewEmpty: $("view-empty"),
    showVoxels: $("show-voxels"), showMesh: $("show-mesh"), error: $("error"),
    overall: document.querySelector(".overall"), overallBar: $("overall-bar"), overallText: $("overall-text"),
    stages: $("stages"), downloads: $("downloads"), timings: $("timings"), log: $("log"),
    dlGlb: $("dl-glb"), dlGlbSize: $("dl-glb-size"), dlPly: $("dl-ply"), dlPlySize: $("dl-ply-size"), dlMask: $("dl-mask"),
  };
  const state = freshState();
  window.viewerState = state;
  // Test hook: ?drop_frame=N skips the frame event with frame_seq N once, as if it were lost,
  // to exercise the resynchronisation path (delta → ResyncNeeded → key frame request).
  const dropParam = new URLSearchParams(location.search).get("drop_frame");
  const dropFrameSeq = dropParam === null ? null : Number(dropParam);

  // ---------------------------------------------------------------- photo and prompts
  let photo = null; // {file, width, height, url}
  let points = []; // {x, y, label} in photo pixels
  let box = null; // {x_min, y_min, x_max, y_max}
  let history = [];
  let drag = null;
  let maskLayer = null; // canvas at photo size, the segmenter's mask tinted

  function setPhotoError(message) {
    el.fileName.textContent = message;
    el.fileName.classList.add("bad");
  }

  async function loadPhoto(file) {
    if (!file) return;
    const url = URL.createObjectURL(file);
    const probe = await loadImage(url);
    if (!probe) {
      URL.revokeObjectURL(url);
      setPhotoError(`${file.name}: not an image this browser can show`);
      return;
    }
    if (photo) URL.revokeObjectURL(photo.url);
    photo = { file, url, width: probe.naturalWidth, height: probe.naturalHeight };
    el.photo.src = url;
    el.photo.hidden = false;
    await el.photo.decode().catch(() => {});
    el.wrap.classList.remove("empty");
    el.fileName.classList.remove("bad");
    el.fileName.textContent = `${file.name} · ${photo.width}×${photo.height}`;
    points = [];
    box = null;
    history = [];
    maskLayer = null;
    layoutOverlay();
    promptsChanged();
    el.generate.disabled = busy;
  }

  function layoutOverlay() {
    if (!photo) return;
    const dpr = window.devicePixelRatio || 1;
    const img = el.photo;
    Object.assign(el.overlay.style, {
      left: `${img.offsetLeft}px`, top: `${img.offsetTop}px`,
      width: `${img.offsetWidth}px`, height: `${img.offsetHeight}px`,
    });
    el.overlay.width = Math.round(img.offsetWidth * dpr);
    el.overlay.height = Math.round(img.offsetHeight * dpr);
    drawOverlay();
  }

  function toPhoto(e) {
    const r = el.overlay.getBoundingClientRect();
    const x = ((e.clientX - r.left) / r.width) * photo.width;
    const y = ((e.clientY - r.top) / r.height) * photo.height;
    return {
      x: Math.min(photo.width - 1, Math.max(0, Math.round(x * 10) / 10)),
      y: Math.min(photo.height - 1, Math.max(0, Math.round(y * 10) / 10)),
    };
  }

  function drawOverlay() {
    const c = el.overlay;
    const ctx = c.getContext("2d");
    ctx.clearRect(0, 0, c.width, c.height);
    if (!photo) return;
    const k = c.width / photo.width;
    const dpr = window.devicePixelRatio || 1;
    if (maskLayer) {
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(maskLayer, 0, 0, c.width, c.height);
    }
    const shown = drag && drag.moved && !drag.background ? boxFrom(drag.from, drag.to) : box;
    if (shown) {
      ctx.save();
      ctx.lineWidth = 2 * dpr;
      ctx.setLineDash([6 * dpr, 4 * dpr]);
      ctx.strokeStyle = "#ffd23f";
      ctx.shadowColor = "rgba(0,0,0,0.6)";
      ctx.shadowBlur = 3 * dpr;
      ctx.strokeRect(shown.x_min * k, shown.y_min * k, (shown.x_max - shown.x_min) * k, (shown.y_max - shown.y_min) * k);
      ctx.restore();
    }
    for (const p of points) {
      const x = p.x * k;
      const y = p.y * k;
      const r = 7 * dpr;
      ctx.beginPath();
      ctx.arc(x, y, r, 0, 2 * Math.PI);
      ctx.fillStyle = p.label ? "#2ecc71" : "#e74c3c";
      ctx.fill();
      ctx.lineWidth = 2 * dpr;
      ctx.strokeStyle = "#fff";
      ctx.stroke();
      ctx.beginPath();
      ctx.moveTo(x - r * 0.5, y);
      ctx.lineTo(x + r * 0.5, y);
      if (p.label) {
        ctx.moveTo(x, y - r * 0.5);
        ctx.lineTo(x, y + r * 0.5);
      }
      ctx.stroke();
    }
  }

  function boxFrom(a, b) {
    return {
      x_min: Math.min(a.x, b.x), y_min: Math.min(a.y, b.y),
      x_max: Math.max(a.x, b.x), y_max: Math.max(a.y, b.y),
    };
  }

  function remember() {
    history.push({ points: points.slice(), box });
  }

  function promptsChanged() {
    const obj = points.filter((p) => p.label).length;
    const bg = points.length - obj;
    const parts = [`${obj} object point${obj === 1 ? "" : "s"}`, `${bg} background point${bg === 1 ? "" : "s"}`,
      box ? `box ${Math.round(box.x_max - box.x_min)}×${Math.round(box.y_max - box.y_min)}` : "no box"];
    el.summary.textContent = parts.join(", ");
    el.undo.disabled = history.length === 0;
    el.clear.disabled = !points.length && !box;
    drawOverlay();
  }

  el.overlay.addEventListener("contextmenu", (e) => e.preventDefault());
  el.overlay.addEventListener("pointerdown", (e) => {
    if (!photo || e.button === 1) return;
    e.preventDefault();
    el.overlay.setPointerCapture(e.pointerId);
    const at = toPhoto(e);
    drag = { from: at, to: at, x: e.clientX, y: e.clientY, moved: false, background: e.shiftKey || e.button === 2 };
  });
  el.overlay.addEventListener("pointermove", (e) => {
    if (!drag) return;
    drag.to = toPhoto(e);
    if (Math.hypot(e.clientX - drag.x, e.clientY - drag.y) > 5) drag.moved = true;
    if (drag.moved) drawOverlay();
  });
  el.overlay.addEventListener("pointerup", (e) => {
    if (!drag) return;
    const d = drag;
    drag = null;
    d.to = toPhoto(e);
    const b = boxFrom(d.from, d.to);
    if (d.moved && !d.background && b.x_max - b.x_min >= 3 && b.y_max - b.y_min >= 3) {
      remember();
      box = b;
    } else if (!d.moved) {
      remember();
      points.push({ x: d.from.x, y: d.from.y, label: d.background ? 0 : 1 });
    }
    promptsChanged();
  });
  el.overlay.addEventListener("pointercancel", () => {
    drag = null;
    drawOverlay();
  });
  el.undo.addEventListener("click", () => {
    const last = history.pop();
    if (last) ({ points, box } = last);
    promptsChanged();
  });
  el.clear.addEventListener("click", () => {
    remember();
    points = [];
    box = null;
    promptsChanged();
  });
  el.file.addEventListener("change", () => loadPhoto(el.file.files[0]));
  el.wrap.addEventListener("dragover", (e) => {
    e.preventDefault();
    el.wrap.classList.add("drop");
  });
  el.wrap.addEventListener("dragleave", () => el.wrap.classList.remove("drop"));
  el.wrap.addEventListener("drop", (e) => {
    e.preventDefault();
    el.wrap.classList.remove("drop");
    const file = [...(e.dataTransfer?.files || [])].find((f) => f.type.startsWith("image/"));
    if (file) loadPhoto(file);
  });
  new ResizeObserver(layoutOverlay).observe(el.photo);

  /** The segmenter's mask over the photo: a blue tint inside, a bright outline on its edge. */
  async function showMask(url) {
    const img = await loadImage(url);
    if (!img) return;
    const w = img.naturalWidth;
    const h = img.naturalHeight;
    const layer = document.createElement("canvas");
    layer.width = w;
    layer.height = h;
    const ctx = layer.getContext("2d");
    ctx.drawImage(img, 0, 0);
    const px = ctx.getImageData(0, 0, w, h);
    const d = px.data;
    const inside = new Uint8Array(w * h);
    for (let i = 0; i < w * h; i++) inside[i] = d[4 * i] > 127 ? 1 : 0;
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const i = y * w + x;
        const edge = inside[i] && (x === 0 || y === 0 || x === w - 1 || y === h - 1 ||
          !inside[i - 1] || !inside[i + 1] || !inside[i - w] || !inside[i + w]);
        d.set(edge ? [120, 200, 255, 255] : inside[i] ? [60, 140, 255, 64] : [0, 0, 0, 0], 4 * i);
      }
    }
    ctx.putImageData(px, 0, 0);
    maskLayer = layer;
    drawOverlay();
  }

  // ---------------------------------------------------------------- 3D view
  const renderer = new Renderer(1, 1);
  const viewCtx = el.view.getContext("2d");
  let image = null;
  const cam = { ...HOME, radius: 0.5 };
  let voxels = null;
  let mesh = null;
  let lastInteraction = -Infinity;
  let rotating = null;

  function sizeView() {
    // Device pixels, but at most about a million of them: the renderer's cost grows with them.
    const css = el.view.clientWidth * el.view.clientHeight;
    const dpr = Math.min(window.devicePixelRatio || 1, Math.sqrt(MAX_VIEW_PIXELS / Math.max(1, css)));
    const w = Math.max(1, Math.round(el.view.clientWidth * dpr));
    const h = Math.max(1, Math.round(el.view.clientHeight * dpr));
    if (w !== renderer.width || h !== renderer.height || !image) {
      el.view.width = w;
      el.view.height = h;
      renderer.resize(w, h);
      image = new ImageData(new Uint8ClampedArray(renderer.pixels.buffer), w, h);
    }
  }

  function render() {
    sizeView();
    const t0 = performance.now();
    renderer.clear();
    const model = state.view === "mesh" && mesh ? mesh : voxels;
    if (model) {
      cam.radius = Math.max(cam.radius, model.fitRadius);
      if (model.kind === "mesh") renderer.drawMesh(model, cam);
      else renderer.drawVoxels(model, cam);
    }
    viewCtx.putImageData(image, 0, 0);
    el.viewEmpty.hidden = !!model || state.phase === "streaming";
    state.renderMs = Math.round((performance.now() - t0) * 10) / 10;
    return !!model;
  }

  function setView(which) {
    state.view = which;
    el.showVoxels.classList.toggle("on", which === "voxels");
    el.showMesh.classList.toggle("on", which === "mesh");
    if (which === "mesh" && mesh) {
      el.viewInfo.textContent = `mesh preview · ${mesh.vertexCount.toLocaleString()} vertices · ${mesh.faceCount.toLocaleString()} triangles`;
    } else if (voxels) {
      el.viewInfo.textContent = voxelInfo;
    }
    render();
  }
  let voxelInfo = "";
  el.showVoxels.addEventListener("click", () => setView("voxels"));
  el.showMesh.addEventListener("click", () => setView("mesh"));

  el.view.addEventListener("pointerdown", (e) => {
    el.view.setPointerCapture(e.pointerId);
    rotating = { x: e.clientX, y: e.clientY };
    lastInteraction = performance.now();
  });
  el.view.addEventListener("pointermove", (e) => {
    if (!rotating) return;
    cam.yaw += (e.clientX - rotating.x) * 0.01;
    cam.pitch = Math.max(-1.45, Math.min(1.45, cam.pitch + (e.clientY - rotating.y) * 0.01));
    rotating = { x: e.clientX, y: e.clientY };
    lastInteraction = performance.now();
    render();
  });
  const stopRotating = () => {
    rotating = null;
    lastInteraction = performance.now();
  };
  el.view.addEventListener("pointerup", stopRotating);
  el.view.addEventListener("pointercancel", stopRotating);
  el.view.addEventListener("wheel", (e) => {
    e.preventDefault();
    cam.zoom = Math.max(0.3, Math.min(5, cam.zoom * Math.exp(-e.deltaY * 0.0015)));
    lastInteraction = performance.now();
    render();
  }, { passive: false });
  el.view.addEventListener("dblclick", () => {
    Object.assign(cam, HOME);
    lastInteraction = performance.now();
    render();
  });
  new ResizeObserver(() => render()).observe(el.view);

  let lastTick = performance.now();
  function tick(now) {
    const dt = Math.min(0.1, (now - lastTick) / 1000);
    lastTick = now;
    if (!rotating && (voxels || mesh) && now - lastInteraction > IDLE_BEFORE_SPIN_MS) {
      cam.yaw += dt * SPIN_RAD_PER_S;
      render();
    }
    requestAnimationFrame(tick);
  }
  requestAnimationFrame(tick);

  // ---------------------------------------------------------------- progress
  const stageRows = new Map();
  for (const [name, title] of STAGES) {
    const li = document.createElement("li");
    li.dataset.stage = name;
    li.innerHTML = '<span class="mark"></span><span class="name"></span><div class="bar small"><div class="fill"></div></div><span class="detail"></span>';
    li.querySelector(".name").textContent = title;
    el.stages.append(li);
    stageRows.set(name, { li, fill: li.querySelector(".fill"), detail: li.querySelector(".detail") });
  }

  function resetProgress() {
    for (const [name, row] of stageRows) {
      row.li.className = "pending";
      row.li.hidden = TEXT_ONLY_STAGES.has(name);
      row.fill.style.width = "0";
      row.detail.textContent = "";
    }
    setOverall(0);
    el.overall.classList.remove("done", "failed");
  }

  function setOverall(p) {
    el.overallBar.style.width = `${(p * 100).toFixed(1)}%`;
    el.overallText.textContent = `${Math.floor(p * 100 + 1e-9)} %`;
  }

  function stageEvent(ev, detail) {
    const at = STAGES.findIndex(([name]) => name === ev.stage);
    if (at < 0) return;
    STAGES.forEach(([name], i) => {
      const row = stageRows.get(name);
      if (i < at && row.li.className !== "done") {
        row.li.className = "done";
        row.fill.style.width = "100%";
      }
    });
    const row = stageRows.get(ev.stage);
    row.li.hidden = false;
    const finished = ev.total_steps > 0 && ev.step >= ev.total_steps;
    row.li.className = finished ? "done" : "active";
    if (ev.total_steps > 0) row.fill.style.width = `${(100 * ev.step) / ev.total_steps}%`;
    row.detail.textContent = detail;
    row.detail.title = detail;
  }

  function log(text) {
    const li = document.createElement("li");
    li.textContent = text;
    el.log.append(li);
    while (el.log.childElementCount > LOG_LIMIT) el.log.firstElementChild.remove();
    el.log.scrollTop = el.log.scrollHeight;
  }

  function showError(code, message) {
    el.error.hidden = false;
    el.error.textContent = "";
    const b = document.createElement("b");
    b.textContent = message;
    const c = document.createElement("span");
    c.className = "muted";
    c.textContent = ` (${code})`;
    el.error.append(b, c);
  }

  function fail(code, message, status = null) {
    state.phase = "error";
    state.error = { code, message, status };
    showError(code, message);
    el.overall.classList.add("failed");
    const row = state.stage && stageRows.get(state.stage);
    if (row) row.li.className = "failed";
    log(`error ${code}: ${message}`);
  }

  // ---------------------------------------------------------------- the stream
  let busy = false;
  let controller = null;
  let decoder = null;
  let keyFrameAsked = false;
  let dropped = false;

  async function requestKeyFrame(reason) {
    if (keyFrameAsked || !state.requestId) return;
    keyFrameAsked = true;
    state.resyncs++;
    log(`resync: ${reason}; asking for a key frame`);
    try {
      const r = await fetch(new URL(`v1/streams/${encodeURIComponent(state.requestId)}/keyframe`, document.baseURI), { method: "POST" });
      state.keyFrameRequests.push(r.status);
      if (!r.ok) log(`key frame request answered ${r.status}: ${(await errorOf(r)).message}; waiting for the next periodic key frame`);
    } catch (err) {
      state.keyFrameRequests.push(0);
      log(`key frame request failed: ${err.message}`);
    }
  }

  async function onFrame(ev) {
    state.lastFrameEvent = { type: ev.type, frame_seq: ev.frame_seq ?? null, voxel_count: ev.voxel_count };
    if (dropFrameSeq !== null && !dropped && ev.frame_seq === dropFrameSeq) {
      dropped = true;
      state.droppedForTest = dropFrameSeq;
      log(`frame ${dropFrameSeq} dropped on purpose (drop_frame)`);
      return `frame ${ev.frame_seq} dropped`;
    }
    let frame;
    try {
      frame = ev.encoding === "compact" ? await decoder.decodeEvent(ev) : decodeSeedEvent(ev);
    } catch (err) {
      if (err instanceof ResyncNeeded) {
        requestKeyFrame(err.message);
        return "waiting for a key frame";
      }
      state.decodeErrors++;
      log(`frame ${ev.frame_seq} could not be decoded: ${err.message}`);
      requestKeyFrame("a frame failed to decode");
      return "frame lost";
    }
    if (frame.key) keyFrameAsked = false;
    state.framesDecoded++;
    const colored = ev.type === "appearance" && frame.colors;
    voxels = voxelModel(frame.coords, colored ? frame.colors : null, frame.gridSize);
    state.voxelCount = voxels.count;
    state.lastFrame = { type: ev.type, frameSeq: frame.frameSeq ?? null, count: frame.count, key: !!frame.key };
    const kind = frame.key === undefined ? "" : frame.key ? " · key frame" : " · delta";
    voxelInfo = `${ev.type} ${ev.step}/${ev.total_steps} · ${voxels.count.toLocaleString()} voxels${kind}`;
    if (state.view !== "mesh") el.viewInfo.textContent = voxelInfo;
    if (render()) {
      if (ev.type === "geometry") state.geometryFramesDrawn++;
      else state.appearanceFramesDrawn++;
    }
    return `${voxels.count.toLocaleString()} voxels`;
  }

  function onMesh(ev) {
    try {
      mesh = meshModel(ev);
    } catch (err) {
      log(`mesh preview unusable: ${err.message}`);
      return "unusable";
    }
    el.showVoxels.disabled = !voxels;
    el.showMesh.disabled = false;
    setView("mesh");
    state.meshDrawn = true;
    return `${mesh.faceCount.toLocaleString()} triangles`;
  }

  function onComplete(ev) {
    state.phase = "complete";
    state.complete = ev;
    const url = (u) => new URL(u, document.baseURI).href;
    state.glbUrl = url(ev.model_glb_url);
    el.dlGlb.href = state.glbUrl;
    el.dlPly.href = url(ev.gaussian_splat_url);
    el.dlMask.href = url(ev.mask_url);
    const sizes = ev.artifacts || {};
    el.dlGlbSize.textContent = sizes["model.glb"] ? fmtBytes(sizes["model.glb"].size_bytes) : "";
    el.dlPlySize.textContent = sizes["splat.ply"] ? fmtBytes(sizes["splat.ply"].size_bytes) : "";
    const timings = Object.entries(ev.timings || {}).map(([k, v]) => `${k.replace("_", " ")} ${v.toFixed(2)} s`);
    el.timings.textContent = `done in ${ev.t.toFixed(1)} s${timings.length ? ` · ${timings.join(" · ")}` : ""}`;
    el.downloads.hidden = false;
    for (const [, row] of stageRows) {
      if (!row.li.hidden) {
        row.li.className = "done";
        row.fill.style.width = "100%";
      }
    }
    el.overall.classList.add("done");
    return `${Object.keys(sizes).length} artifacts`;
  }

  async function onEvent(ev) {
    state.events++;
    state.eventCounts[ev.type] = (state.eventCounts[ev.type] || 0) + 1;
    state.requestId ||= ev.request_id;
    state.stage = ev.stage || state.stage;
    if (typeof ev.progress === "number" && ev.progress >= state.progress) {
      state.progress = ev.progress;
      setOverall(ev.progress);
    }
    let detail = ev.message || "";
    switch (ev.type) {
      case "loading":
        if (ev.mask_url) {
          showMask(new URL(ev.mask_url, document.baseURI).href);
          detail = `mask ${(100 * ev.mask_fraction).toFixed(1)} %`;
        }
        break;
      case "geometry":
      case "appearance":
        detail = await onFrame(ev);
        break;
      case "mesh_preview":
        detail = onMesh(ev);
        break;
      case "glb_ready":
        detail = `GLB ${fmtBytes(ev.size_bytes)}`;
        break;
      case "complete":
        detail = onComplete(ev);
        break;
      case "error":
        fail(ev.code, ev.message);
        return;
      default:
        break;
    }
    const steps = ev.total_steps ? `${ev.step}/${ev.total_steps}` : "";
    stageEvent(ev, [steps, detail].filter(Boolean).join(" · "));
    log(`${(ev.t ?? 0).toFixed(2).padStart(6)} s  ${ev.type.padEnd(12)} ${(ev.stage || "").padEnd(11)} ${steps.padStart(5)}  ${detail}`);
  }

  async function errorOf(response) {
    let code = `http_${response.status}`;
    let message = `the server answered ${response.status} ${response.statusText}`.trim();
    try {
      const body = await response.json();
      if (body && body.error && body.error.message) {
        message = body.error.message;
        code = body.error.code || code;
      }
    } catch {
      // not JSON: keep the status line
    }
    const retry = response.headers.get("Retry-After");
    if (retry) message += ` (try again in ${retry} s)`;
    return { code, message };
  }

  function resetRun() {
    Object.assign(state, freshState(), { phase: "streaming" });
    decoder = new VoxelStreamDecoder();
    keyFrameAsked = false;
    dropped = false;
    voxels = null;
    mesh = null;
    maskLayer = null;
    cam.radius = 0.05;
    voxelInfo = "waiting for the first frame…";
    el.viewInfo.textContent = voxelInfo;
    el.showVoxels.disabled = true;
    el.showMesh.disabled = true;
    setView("voxels");
    el.error.hidden = true;
    el.downloads.hidden = true;
    el.log.textContent = "";
    resetProgress();
    drawOverlay();
  }

  async function generate() {
    if (!photo || busy) return;
    busy = true;
    el.generate.disabled = true;
    el.cancel.hidden = false;
    resetRun();
    const form = new FormData();
    form.append("image", photo.file, photo.file.name || "photo");
    if (points.length) form.append("point_prompts", JSON.stringify(points));
    if (box) form.append("box_prompts", JSON.stringify([box]));
    if (el.label.value.trim()) form.append("segmentation_label", el.label.value.trim());
    form.append("stream_geometry_every", el.geoEvery.value || "1");
    form.append("stream_colors_every", el.colEvery.value || "1");
    form.append("encoding", "compact");
    controller = new AbortController();
    log(`POST v1/generate: ${points.length} point(s)${box ? ", a box" : ""}`);
    try {
      const response = await fetch(new URL("v1/generate", document.baseURI), {
        method: "POST", body: form, headers: { Accept: "text/event-stream" }, signal: controller.signal,
      });
      if (!response.ok) {
        const { code, message } = await errorOf(response);
        fail(code, message, response.status);
        return;
      }
      state.requestId = response.headers.get("X-Sam3d-Request-Id");
      const reader = response.body.getReader();
      const parser = new SSEParser();
      for (;;) {
        const { value, done } = await reader.read();
        for (const msg of done ? parser.end() : parser.feed(value)) {
          let ev;
          try {
            ev = JSON.parse(msg.data);
          } catch {
            log(`unreadable event data: ${msg.data.slice(0, 80)}`);
            continue;
          }
          if (!ev.type) ev.type = msg.event;
          await onEvent(ev);
        }
        if (done) break;
      }
      if (state.phase === "streaming") fail("incomplete", "the stream ended without a `complete` event");
    } catch (err) {
      if (controller.signal.aborted) {
        state.phase = "stopped";
        const row = state.stage && stageRows.get(state.stage);
        if (row) row.detail.textContent = "stopped";
        log("stopped by the user");
      } else {
        fail("network", `the connection failed: ${err.message}`);
      }
    } finally {
      busy = false;
      controller = null;
      el.generate.disabled = !photo;
      el.cancel.hidden = true;
      el.showVoxels.disabled = !voxels;
    }
  }

  el.generate.addEventListener("click", generate);
  el.cancel.addEventListener("click", () => controller && controller.abort());
  resetProgress();
  render();
}

if (typeof document !== "undefined") {
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", startPage);
  else startPage();
}
