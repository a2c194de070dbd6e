// The envelope of a "compact" voxel frame message: base64 (how it arrives in an SSE event),
// the 19-byte header, the CRC-32 trailer and the deflated body (docs/frame-format.md, section 3),
// and FrameFormatError, the error every corrupt message throws. Nothing here reads inside the
// body: compact-sets.js and compact-colours.js do, and voxel-codec.js puts them together.
// The Python twin is serve_app/protocol/compact_message.py.

export const FORMAT_VERSION = 1;
export const MAX_BODY_BYTES = 64 << 20;

const MAGIC_0 = 0x56; // "V"
const MAGIC_1 = 0x58; // "X"
const HEADER_SIZE = 19;
const FLAG_KEY = 0x01;
const FLAG_DEFLATE = 0x02;
const FLAG_COLORS = 0x04;
const KNOWN_FLAGS = FLAG_KEY | FLAG_DEFLATE | FLAG_COLORS;

/** The message is not a valid compact frame: corrupt, truncated or of an unknown version. */
export class FrameFormatError extends Error {
  constructor(message) {
    super(message);
    this.name = "FrameFormatError";
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
