// Index sets of the "compact" frame body: LEB128 varints and sorted sets of voxel indices sent
// as a bitmap, runs or gaps (occupancy, toggles, changed-colour positions), and the XOR of a
// delta's toggles with the frame it applies to. Pure byte reading, no stream state.
// The Python twin is serve_app/protocol/compact_sets.py.

import { FrameFormatError } from "./compact-message.js";

const SET_BITMAP = 0;
const SET_RUNS = 1;
const SET_GAPS = 2;
const U32_MAX = 0xffffffff;

// ------------------------------------------------------------------------------------ varints and index sets

function readVarint(r) {
  const buf = r.buf;
  let value = 0;
  let scale = 1;
  for (let k = 0; k < 5; k++) {
    if (r.pos >= buf.length) throw new FrameFormatError("message ends inside a varint");
    const b = buf[r.pos++];
    value += (b & 0x7f) * scale;
    if (b < 0x80) {
      if (value > U32_MAX) throw new FrameFormatError("varint larger than 32 bits");
      return value;
    }
    scale *= 128;
  }
  throw new FrameFormatError("varint longer than 5 bytes");
}

/** One index set (sorted, unique) over [0, universe) as a Uint32Array. */
export function readSet(r, universe) {
  if (r.pos >= r.buf.length) throw new FrameFormatError("message ends before an index set");
  const method = r.buf[r.pos++];
  if (method === SET_BITMAP) return readBitmap(r, universe);
  if (method !== SET_RUNS && method !== SET_GAPS) throw new FrameFormatError(`unknown index set method ${method}`);
  const count = readVarint(r);
  if (count > r.buf.length - r.pos) throw new FrameFormatError("message ends inside a varint list");
  return method === SET_GAPS ? readGaps(r, count, universe) : readRuns(r, count, universe);
}

function readBitmap(r, universe) {
  const buf = r.buf;
  const nbytes = Math.ceil(universe / 8);
  const start = r.pos;
  if (start + nbytes > buf.length) throw new FrameFormatError("message ends inside a bitmap");
  const tailBits = universe & 7;
  if (tailBits && buf[start + nbytes - 1] >> tailBits) {
    throw new FrameFormatError("bitmap sets bits past the end of its range");
  }
  let count = 0;
  for (let i = start; i < start + nbytes; i++) {
    let b = buf[i];
    while (b) {
      b &= b - 1;
      count++;
    }
  }
  const out = new Uint32Array(count);
  let o = 0;
  for (let i = 0; i < nbytes; i++) {
    let b = buf[start + i];
    while (b) {
      const low = b & -b;
      out[o++] = i * 8 + (31 - Math.clz32(low));
      b ^= low;
    }
  }
  r.pos = start + nbytes;
  return out;
}

function readGaps(r, count, universe) {
  const out = new Uint32Array(count);
  let prev = -1;
  for (let i = 0; i < count; i++) {
    prev += readVarint(r) + 1;
    if (prev >= universe) throw new FrameFormatError("index set runs past the end of its range");
    out[i] = prev;
  }
  return out;
}

function readRuns(r, count, universe) {
  const runs = new Float64Array(count);
  let end = 0;
  let total = 0;
  for (let i = 0; i < count; i++) {
    const v = readVarint(r);
    runs[i] = v;
    end += v;
    if (i & 1) total += v;
  }
  if (end > universe) throw new FrameFormatError("runs cover more than the range");
  const out = new Uint32Array(total);
  let o = 0;
  let at = 0;
  for (let i = 0; i < count; i++) {
    const len = runs[i];
    if (i & 1) for (let k = 0; k < len; k++) out[o++] = at + k;
    at += len;
  }
  return out;
}

/** base XOR toggles (both sorted), and for each result its position in base or -1. */
export function applyToggles(base, toggles, expected) {
  if (toggles.length === 0) {
    if (base.length !== expected) {
      throw new FrameFormatError(`frame decodes to ${base.length} voxels, header says ${expected}`);
    }
    return { linear: base, basePos: null };
  }
  const nb = base.length;
  const nt = toggles.length;
  if (expected > nb + nt) throw new FrameFormatError(`frame decodes to fewer voxels than the header's ${expected}`);
  const linear = new Uint32Array(expected);
  const basePos = new Int32Array(expected);
  let i = 0;
  let j = 0;
  let k = 0;
  while (i < nb || j < nt) {
    let v;
    let from;
    if (j >= nt || (i < nb && base[i] < toggles[j])) {
      v = base[i];
      from = i++;
    } else if (i >= nb || toggles[j] < base[i]) {
      v = toggles[j++];
      from = -1;
    } else {
      i++;
      j++;
      continue;
    }
    if (k >= expected) throw new FrameFormatError(`frame decodes to more voxels than the header's ${expected}`);
    linear[k] = v;
    basePos[k++] = from;
  }
  if (k !== expected) throw new FrameFormatError(`frame decodes to ${k} voxels, header says ${expected}`);
  return { linear, basePos };
}
