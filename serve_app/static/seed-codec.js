// The "full" encoding (formerly "seed", its wire name binary_uint8_xyzrgb): every frame whole,
// six bytes a voxel. Python: serve_app/protocol/full_codec.py.

import { FrameFormatError, base64ToBytes } from "./compact-message.js";

export const SEED_ENCODING = "binary_uint8_xyzrgb";

/**
 * Decode a geometry/appearance event in the seed encoding ("binary_uint8_xyzrgb"): six bytes a
 * voxel, each axis min/max-normalised to 0..255 against bounds_min/bounds_max.
 * Returns { count, gridSize, coords: Float32Array (grid units), colors: Uint8Array }.
 */
export function decodeSeedEvent(event) {
  if (!event || event.encoding !== SEED_ENCODING) {
    throw new FrameFormatError(`event encoding is ${event && event.encoding}, not "${SEED_ENCODING}"`);
  }
  const raw = base64ToBytes(event.voxel_data);
  if (raw.length % 6) throw new FrameFormatError("seed voxel data is not a multiple of 6 bytes");
  const lo = event.bounds_min;
  const hi = event.bounds_max;
  if (!Array.isArray(lo) || !Array.isArray(hi) || lo.length !== 3 || hi.length !== 3) {
    throw new FrameFormatError("seed event lacks bounds_min / bounds_max");
  }
  const count = raw.length / 6;
  const coords = new Float32Array(3 * count);
  const colors = new Uint8Array(3 * count);
  const scale = [0, 1, 2].map((a) => (hi[a] - lo[a]) / 255);
  for (let i = 0; i < count; i++) {
    for (let a = 0; a < 3; a++) {
      coords[3 * i + a] = lo[a] + raw[6 * i + a] * scale[a];
      colors[3 * i + a] = raw[6 * i + 3 + a];
    }
  }
  return { count, gridSize: event.grid_size, coords, colors };
}
