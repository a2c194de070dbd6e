// The colour section of a "compact" frame body: exact RGB888 colours as three planes of residuals
// mod 256, either spatial (against the previous voxel) or temporal (the listed voxels only,
// against the base frame's colour). The Python twin is serve_app/protocol/compact_colours.py.

import { FrameFormatError } from "./compact-message.js";
import { readSet } from "./compact-sets.js";

const COLOR_SPATIAL = 0;
const COLOR_TEMPORAL = 1;

function readPlanes(r, count) {
  const start = r.pos;
  if (start + 3 * count > r.buf.length) throw new FrameFormatError("message ends inside the colour planes");
  r.pos = start + 3 * count;
  return start;
}

export function readColors(r, count, held, basePos) {
  if (r.pos >= r.buf.length) throw new FrameFormatError("message ends before the colour section");
  const buf = r.buf;
  const mode = buf[r.pos++];
  const out = new Uint8Array(3 * count);
  if (mode === COLOR_SPATIAL) {
    const p = readPlanes(r, count);
    let red = 0;
    let green = 0;
    let blue = 0;
    for (let i = 0, o = 0; i < count; i++, o += 3) {
      red = (red + buf[p + i]) & 0xff;
      green = (green + buf[p + count + i]) & 0xff;
      blue = (blue + buf[p + 2 * count + i]) & 0xff;
      out[o] = red;
      out[o + 1] = green;
      out[o + 2] = blue;
    }
    return out;
  }
  if (mode !== COLOR_TEMPORAL) throw new FrameFormatError(`unknown colour mode ${mode}`);
  if (!held || !held.colors) throw new FrameFormatError("temporal colours need a base frame with colours");
  const changed = readSet(r, count);
  const m = changed.length;
  const p = readPlanes(r, m);
  const prev = held.colors;
  if (basePos === null) out.set(prev); // same voxels as the base
  else {
    for (let i = 0, o = 0; i < count; i++, o += 3) {
      const b = basePos[i];
      if (b >= 0) {
        out[o] = prev[3 * b];
        out[o + 1] = prev[3 * b + 1];
        out[o + 2] = prev[3 * b + 2];
      }
    }
  }
  let c = 0; // walks `changed` alongside the voxels, to check every new voxel is listed
  for (let i = 0; basePos !== null && i < count; i++) {
    while (c < m && changed[c] < i) c++;
    if (basePos[i] < 0 && (c >= m || changed[c] !== i)) throw new FrameFormatError("a voxel new in this frame has no colour");
  }
  for (let j = 0; j < m; j++) {
    const o = 3 * changed[j];
    out[o] = (out[o] + buf[p + j]) & 0xff;
    out[o + 1] = (out[o + 1] + buf[p + m + j]) & 0xff;
    out[o + 2] = (out[o + 2] + buf[p + 2 * m + j]) & 0xff;
  }
  return out;
}
