// Decoders for the sam3d-serve voxel stream: the "compact" frame format (key and delta frames),
// the "seed" encoding, the binary (octet-stream) transport, and base64.
//
// ES modules with no dependencies and no build step; run in browsers and in Node 18+. This one is
// the stream decoder (key and delta frames, one state per stream id) and the one import for all
// of the above: it re-exports the names of compact-message.js (header, CRC, inflate, base64),
// seed-codec.js and binary-stream.js; compact-sets.js and compact-colours.js read the body.
// The byte layout is specified in docs/frame-format.md; the Python side is
// serve_app/protocol/compact_codec.py and binary_transport.py; tests/vectors pins both.
//
//   const dec = new VoxelStreamDecoder();
//   const frame = await dec.decodeEvent(event);   // event.encoding === "compact"
//   frame.coords  Uint16Array [x0,y0,z0, x1,...]  frame.colors Uint8Array [r0,g0,b0, ...] | null
//
// Decoded arrays are shared with the decoder's state: read them, do not modify them.

import { FrameFormatError, base64ToBytes, inflate, parseHeader } from "./compact-message.js";
import { applyToggles, readSet } from "./compact-sets.js";
import { readColors } from "./compact-colours.js";

export {
  FORMAT_VERSION, MAX_BODY_BYTES, FrameFormatError, base64ToBytes, crc32, inflate, parseHeader,
} from "./compact-message.js";
export { SEED_ENCODING, decodeSeedEvent } from "./seed-codec.js";
export {
  BinaryStreamReader, PROTOCOL_VERSION, RecordKind, STREAM_MAGIC, parseEventPayload, splitFramePayload,
} from "./binary-stream.js";

export const COMPACT_ENCODING = "compact";

/** A delta frame that does not apply to what the decoder holds; ask the server for a key frame. */
export class ResyncNeeded extends Error {
  constructor(streamId, heldSeq, baseSeq, reason = "") {
    const held = heldSeq === null ? "nothing" : `frame ${heldSeq}`;
    super(`stream "${streamId}": delta applies to frame ${baseSeq} but the decoder holds ${held}` +
      `${reason ? ` (${reason})` : ""}; request a key frame`);
    this.name = "ResyncNeeded";
    this.streamId = streamId;
    this.heldSeq = heldSeq;
    this.baseSeq = baseSeq;
  }
}

function toCoords(linear, n) {
  const coords = new Uint16Array(3 * linear.length);
  const nn = n * n;
  for (let i = 0, o = 0; i < linear.length; i++, o += 3) {
    const l = linear[i];
    const z = (l / nn) | 0;
    const rest = l - z * nn;
    const y = (rest / n) | 0;
    coords[o] = rest - y * n;
    coords[o + 1] = y;
    coords[o + 2] = z;
  }
  return coords;
}

// ------------------------------------------------------------------------------------ decoder

/**
 * Decodes compact frame messages in the order the server sent them, keeping one state per
 * stream id. A message that fails (FrameFormatError, ResyncNeeded) leaves the state as it was.
 * decode() is async (compressed bodies go through DecompressionStream) and calls are queued,
 * so they apply in the order made; decodeSync() handles uncompressed messages only.
 */
export class VoxelStreamDecoder {
  constructor() {
    this.streams = new Map();
    this.lastHeader = null;
    this._tail = Promise.resolve();
  }

  reset(streamId) {
    if (streamId === undefined) this.streams.clear();
    else this.streams.delete(streamId);
  }

  heldSeq(streamId = "voxels") {
    const held = this.streams.get(streamId);
    return held ? held.seq : null;
  }

  /** Decode the `frame_data` of a geometry/appearance event in the compact encoding. */
  decodeEvent(event) {
    if (!event || event.encoding !== COMPACT_ENCODING) {
      return Promise.reject(new FrameFormatError(`event encoding is ${event && event.encoding}, not "${COMPACT_ENCODING}"`));
    }
    let bytes;
    try {
      bytes = base64ToBytes(event.frame_data);
    } catch (err) {
      return Promise.reject(err);
    }
    return this.decode(bytes);
  }

  decode(msg) {
    const run = this._tail.then(() => this._decode(msg));
    this._tail = run.catch(() => {});
    return run;
  }

  decodeSync(msg) {
    const h = parseHeader(msg);
    if (h.compressed) throw new FrameFormatError("the message is deflated; use decode()");
    return this._finish(h, msg.subarray(h.bodyOffset, h.bodyEnd), this._check(h));
  }

  async _decode(msg) {
    const h = parseHeader(msg);
    const held = this._check(h);
    let body = msg.subarray(h.bodyOffset, h.bodyEnd);
    if (h.compressed) body = await inflate(body);
    return this._finish(h, body, held);
  }

  _check(h) {
    const held = this.streams.get(h.streamId) || null;
    if (!h.key) {
      if (!held || held.seq !== h.baseSeq) throw new ResyncNeeded(h.streamId, held ? held.seq : null, h.baseSeq);
      if (held.gridSize !== h.gridSize) throw new ResyncNeeded(h.streamId, held.seq, h.baseSeq, "grid size differs");
    }
    return held;
  }

  _finish(h, body, held) {
    const r = { buf: body, pos: 0 };
    const n = h.gridSize;
    const occ = readSet(r, n * n * n);
    let linear = occ;
    let basePos = null;
    if (h.key) {
      if (occ.length !== h.voxelCount) throw new FrameFormatError(`frame decodes to ${occ.length} voxels, header says ${h.voxelCount}`);
    } else {
      ({ linear, basePos } = applyToggles(held.linear, occ, h.voxelCount));
    }
    const colors = h.hasColors ? readColors(r, linear.length, h.key ? null : held, basePos) : null;
    if (r.pos !== body.length) throw new FrameFormatError(`${body.length - r.pos} unexpected bytes after the frame body`);
    this.streams.set(h.streamId, { gridSize: n, linear, colors, seq: h.frameSeq });
    this.lastHeader = h;
    return {
      streamId: h.streamId, gridSize: n, frameSeq: h.frameSeq, key: h.key,
      baseSeq: h.key ? null : h.baseSeq, count: linear.length,
      linear, coords: toCoords(linear, n), colors,
    };
  }
}
