// Decoders for the sam3d-serve voxel stream: the "compact" frame format (key and delta frames),
// the "seed" encoding, the binary (octet-stream) transport, and base64.
//
// An ES module with no dependencies and no build step; runs in browsers and in Node 18+.
// The byte layout is specified in docs/frame-format.md; the Python side is
// serve_app/protocol/compact_codec.py and binary_transport.py; tests/vectors pins both.
//
//   const dec = new VoxelStreamDecoder();
//   const frame = await dec.decodeEvent(event);   // event.encoding === "compact"
//   frame.coords  Uint16Array [x0,y0,z0, x1,...]  frame.colors Uint8Array [r0,g0,b0, ...] | null
//
// Decoded arrays are shared with the decoder's state: read them, do not modify them.

export const FORMAT_VERSION = 1;
export const PROTOCOL_VERSION = 1;
export const COMPACT_ENCODING = "compact";
export const SEED_ENCODING = "binary_uint8_xyzrgb";
export const MAX_BODY_BYTES = 64 << 20;

const MAGIC_0 = 0x56; // "V"
const MAGIC_1 = 0x58; // "X"
const HEADER_SIZE = 19;
const FLAG_KEY = 0x01;
const FLAG_DEFLATE = 0x02;
const FLAG_COLORS = 0x04;
const KNOWN_FLAGS = FLAG_KEY | FLAG_DEFLATE | FLAG_COLORS;
const SET_BITMAP = 0;
const SET_RUNS = 1;
const SET_GAPS = 2;
const COLOR_SPATIAL = 0;
const COLOR_TEMPORAL = 1;
const U32_MAX = 0xffffffff;

/** The message is not a valid compact frame: corrupt, truncated or of an unknown version. */
export class FrameFormatError extends Error {
  constructor(message) {
    super(message);
    this.name = "FrameFormatError";
  }
}

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

// ------------------------------------------------------------------------------------ base64

const B64_INDEX = (() => {
  const table = new Uint8Array(128).fill(255);
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  for (let i = 0; i < alphabet.length; i++) table[alphabet.charCodeAt(i)] = i;
  return table;
})();

/** Standard base64 (RFC 4648, "=" padding optional) to bytes; throws FrameFormatError. */
export function base64ToBytes(text) {
  if (typeof text !== "string") throw new FrameFormatError("base64 input is not a string");
  let end = text.length;
  while (end > 0 && text.charCodeAt(end - 1) === 61) end--; // "="
  if (text.length - end > 2 || end % 4 === 1) throw new FrameFormatError("base64 text has a bad length");
  const out = new Uint8Array(Math.floor((end * 3) / 4));
  let acc = 0;
  let bits = 0;
  let o = 0;
  for (let i = 0; i < end; i++) {
    const c = text.charCodeAt(i);
    const v = c < 128 ? B64_INDEX[c] : 255;
    if (v === 255) throw new FrameFormatError(`invalid base64 character at ${i}`);
    acc = ((acc << 6) | v) & 0xffffff;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[o++] = (acc >> bits) & 0xff;
    }
  }
  return out;
}

// ------------------------------------------------------------------------------------ CRC-32

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/** CRC-32 (the zlib / PNG polynomial) of bytes[start, end). */
export function crc32(bytes, start = 0, end = bytes.length) {
  let c = 0xffffffff;
  for (let i = start; i < end; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

// ------------------------------------------------------------------------------------ header

const UTF8 = new TextDecoder("utf-8", { fatal: true });

/** Parse and check a message's header and CRC trailer; throws FrameFormatError. */
export function parseHeader(msg) {
  if (!(msg instanceof Uint8Array)) throw new FrameFormatError("a frame message must be a Uint8Array");
  if (msg.length < HEADER_SIZE + 4) throw new FrameFormatError(`message of ${msg.length} bytes is shorter than a header`);
  if (msg[0] !== MAGIC_0 || msg[1] !== MAGIC_1) throw new FrameFormatError("not a compact voxel frame (bad magic)");
  const dv = new DataView(msg.buffer, msg.byteOffset, msg.byteLength);
  const version = msg[2];
  if (version !== FORMAT_VERSION) {
    throw new FrameFormatError(`frame format version ${version} is not supported (this decoder reads ${FORMAT_VERSION})`);
  }
  const sidLen = msg[18];
  const bodyOffset = HEADER_SIZE + sidLen;
  const bodyEnd = msg.length - 4;
  if (bodyOffset > bodyEnd) throw new FrameFormatError("message ends inside its stream id");
  if (crc32(msg, 0, bodyEnd) !== dv.getUint32(bodyEnd, true)) {
    throw new FrameFormatError("CRC-32 mismatch: the message is truncated or corrupted");
  }
  const flags = msg[3];
  if (flags & ~KNOWN_FLAGS) throw new FrameFormatError(`unknown flags 0x${flags.toString(16)}`);
  const gridSize = dv.getUint16(4, true);
  if (gridSize < 1 || gridSize > 256) throw new FrameFormatError(`grid size ${gridSize} outside 1..256`);
  const voxelCount = dv.getUint32(14, true);
  if (voxelCount > gridSize ** 3) throw new FrameFormatError(`${voxelCount} voxels do not fit a ${gridSize}^3 grid`);
  let streamId;
  try {
    streamId = UTF8.decode(msg.subarray(HEADER_SIZE, bodyOffset));
  } catch {
    throw new FrameFormatError("stream id is not UTF-8");
  }
  return {
    version, flags, gridSize, voxelCount, streamId, bodyOffset, bodyEnd,
    frameSeq: dv.getUint32(6, true),
    baseSeq: dv.getUint32(10, true),
    key: (flags & FLAG_KEY) !== 0,
    compressed: (flags & FLAG_DEFLATE) !== 0,
    hasColors: (flags & FLAG_COLORS) !== 0,
  };
}

// ------------------------------------------------------------------------------------ inflate

/** Inflate a zlib (RFC 1950) stream with the platform's DecompressionStream("deflate"). */
export async function inflate(bytes, maxBytes = MAX_BODY_BYTES) {
  if (typeof DecompressionStream !== "function") {
    throw new FrameFormatError("this runtime has no DecompressionStream; ask the server for uncompressed frames");
  }
  const ds = new DecompressionStream("deflate");
  const writer = ds.writable.getWriter();
  const reader = ds.readable.getReader();
  const writing = writer.write(bytes).then(() => writer.close()).catch(() => {});
  const chunks = [];
  let total = 0;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      total += value.length;
      if (total > maxBytes) {
        reader.cancel().catch(() => {});
        throw new FrameFormatError(`inflated body exceeds ${maxBytes} bytes`);
      }
      chunks.push(value);
    }
  } catch (err) {
    if (err instanceof FrameFormatError) throw err;
    throw new FrameFormatError(`body does not inflate: ${err && err.message ? err.message : err}`);
  }
  await writing;
  if (chunks.length === 1) return chunks[0];
  const out = new Uint8Array(total);
  let o = 0;
  for (const c of chunks) {
    out.set(c, o);
    o += c.length;
  }
  return out;
}

// ------------------------------------------------------------------------------------ body

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
function readSet(r, universe) {
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
function applyToggles(base, toggles, expected) {
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

function readPlanes(r, count) {
  const start = r.pos;
  if (start + 3 * count > r.buf.length) throw new FrameFormatError("message ends inside the colour planes");
  r.pos = start + 3 * count;
  return start;
}

function readColors(r, count, held, basePos) {
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

// ------------------------------------------------------------------------------------ seed

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

// ------------------------------------------------------------------------------------ binary stream

export const STREAM_MAGIC = "S3DF";
export const RecordKind = Object.freeze({ EVENT: 1, FRAME: 2 });
const STREAM_HEADER_SIZE = 8;
const RECORD_HEADER_SIZE = 5;

/**
 * Incremental reader of the octet-stream transport: feed(chunk) returns the complete records
 * as [{ kind, payload }]. Checks the 8-byte stream header first (magic, protocol version);
 * unknown record kinds are returned as they are, for the caller to skip. Throws Error on a
 * bad header or an oversized record.
 */
export class BinaryStreamReader {
  constructor({ expectVersion = PROTOCOL_VERSION, maxPayload = MAX_BODY_BYTES } = {}) {
    this.expectVersion = expectVersion;
    this.maxPayload = maxPayload;
    this.version = null;
    this._buf = new Uint8Array(1 << 16);
    this._start = 0;
    this._end = 0;
  }

  _append(chunk) {
    const used = this._end - this._start;
    if (this._end + chunk.length > this._buf.length) {
      if (used + chunk.length <= this._buf.length) {
        this._buf.copyWithin(0, this._start, this._end);
      } else {
        let size = this._buf.length;
        while (size < used + chunk.length) size *= 2;
        const next = new Uint8Array(size);
        next.set(this._buf.subarray(this._start, this._end));
        this._buf = next;
      }
      this._start = 0;
      this._end = used;
    }
    this._buf.set(chunk, this._end);
    this._end += chunk.length;
  }

  feed(chunk) {
    this._append(chunk);
    const out = [];
    const buf = this._buf;
    const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    if (this.version === null) {
      if (this._end - this._start < STREAM_HEADER_SIZE) return out;
      const s = this._start;
      const magic = String.fromCharCode(buf[s], buf[s + 1], buf[s + 2], buf[s + 3]);
      if (magic !== STREAM_MAGIC) throw new Error("not a sam3d binary frame stream (bad magic)");
      const version = dv.getUint16(s + 4, true);
      if (this.expectVersion !== null && version !== this.expectVersion) {
        throw new Error(`stream protocol version ${version}, this reader speaks ${this.expectVersion}`);
      }
      this.version = version;
      this._start += STREAM_HEADER_SIZE;
    }
    while (this._end - this._start >= RECORD_HEADER_SIZE) {
      const kind = buf[this._start];
      const length = dv.getUint32(this._start + 1, true);
      if (length > this.maxPayload) throw new Error(`record of ${length} bytes exceeds the ${this.maxPayload}-byte limit`);
      const end = this._start + RECORD_HEADER_SIZE + length;
      if (end > this._end) break;
      out.push({ kind, payload: buf.slice(this._start + RECORD_HEADER_SIZE, end) });
      this._start = end;
    }
    if (this._start === this._end) this._start = this._end = 0;
    return out;
  }

  /** Throw if the stream ended inside its header or a record. */
  close() {
    if (this.version === null || this._end !== this._start) {
      throw new Error(`stream ended inside a ${this.version === null ? "header" : "record"} (${this._end - this._start} bytes left)`);
    }
  }
}

const UTF8_LOOSE = new TextDecoder("utf-8");

/** A record's JSON payload (EVENT records) as an object. */
export function parseEventPayload(payload) {
  const event = JSON.parse(UTF8_LOOSE.decode(payload));
  if (event === null || typeof event !== "object" || Array.isArray(event)) throw new Error("event record is not a JSON object");
  return event;
}

/** A FRAME record's payload → { event, message }: the event's fields and the compact frame message. */
export function splitFramePayload(payload) {
  if (payload.length < 4) throw new Error("frame record shorter than its JSON length");
  const n = new DataView(payload.buffer, payload.byteOffset, payload.byteLength).getUint32(0, true);
  if (4 + n > payload.length) throw new Error("frame record ends inside its JSON");
  return { event: parseEventPayload(payload.subarray(4, 4 + n)), message: payload.subarray(4 + n) };
}
