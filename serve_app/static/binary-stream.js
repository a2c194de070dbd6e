// The binary (octet-stream) transport: an 8-byte stream header, then records of events and of
// frames whose compact message travels as raw bytes (docs/frame-format.md). Python:
// serve_app/protocol/binary_transport.py.

import { MAX_BODY_BYTES } from "./compact-message.js";

export const PROTOCOL_VERSION = 1;
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
