// The stream client: POST /v1/generate and read its events as serve_app/protocol defines them,
// either as Server-Sent Events (text/event-stream) or as the binary octet-stream transport
// (docs/frame-format.md). Both give the same event objects; a binary FRAME record's compact
// message is attached to its event as `frame_message` (bytes) instead of base64 `frame_data`.
// No DOM: Node's tests (tests/js/stream.test.mjs) run it on the shared vectors in tests/vectors.

import { apiFetch } from "./apikey.js";
import {
  BinaryStreamReader, RecordKind, ResyncNeeded, decodeSeedEvent, parseEventPayload, splitFramePayload,
} from "./voxel-codec.js";

export const BINARY_MEDIA_TYPE = "application/octet-stream";

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

/** A refused request: the server's `{"error": {code, message}}`, or the status line. */
export class HttpError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** The error a non-2xx response carries, as an HttpError (never throws itself). */
export async function errorOf(response) {
  let code = `http_${response.status}`;
  let message = `the server answered ${response.status} ${response.statusText || ""}`.trim();
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
  return new HttpError(response.status, code, message);
}

/**
 * The events of a /v1/generate response body, in order, whichever transport it uses.
 * Unreadable SSE data and unknown binary record kinds are skipped (reported to `onSkip`);
 * a malformed binary stream throws.
 */
export async function* readEvents(response, { onSkip = () => {} } = {}) {
  const binary = (response.headers.get("content-type") || "").startsWith(BINARY_MEDIA_TYPE);
  const reader = response.body.getReader();
  const sse = binary ? null : new SSEParser();
  const records = binary ? new BinaryStreamReader() : null;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (binary) {
        if (done) {
          records.close();
          return;
        }
        for (const { kind, payload } of records.feed(value)) {
          if (kind === RecordKind.EVENT) yield parseEventPayload(payload);
          else if (kind === RecordKind.FRAME) {
            const { event, message } = splitFramePayload(payload);
            event.frame_message = message;
            yield event;
          } else onSkip(`record of unknown kind ${kind}`);
        }
      } else {
        for (const msg of done ? sse.end() : sse.feed(value)) {
          let ev;
          try {
            ev = JSON.parse(msg.data);
          } catch {
            onSkip(`unreadable event data: ${msg.data.slice(0, 80)}`);
            continue;
          }
          if (!ev.type) ev.type = msg.event;
          yield ev;
        }
        if (done) return;
      }
    }
  } finally {
    reader.releaseLock();
  }
}

/**
 * A geometry/appearance event → its voxels { count, gridSize, coords, colors, key?, frameSeq? }.
 * `decoder` is the stream's VoxelStreamDecoder (compact frames are deltas on the last one);
 * a delta without its base throws ResyncNeeded (ask for a key frame, then carry on).
 */
export function decodeFrame(decoder, ev) {
  if (ev.frame_message) return decoder.decode(ev.frame_message);
  if (ev.encoding === "compact") return decoder.decodeEvent(ev);
  return Promise.resolve(decodeSeedEvent(ev));
}

export { ResyncNeeded };

/**
 * POST the form to /v1/generate. Resolves to { response, requestId } once the headers are in;
 * a refusal (4xx/5xx) rejects with HttpError carrying the server's reason.
 */
export async function startGenerate(form, { binary = true, signal, base = globalThis.document?.baseURI } = {}) {
  const response = await apiFetch(new URL("v1/generate", base), {
    method: "POST", body: form, signal,
    headers: { Accept: binary ? BINARY_MEDIA_TYPE : "text/event-stream" },
  });
  if (!response.ok) throw await errorOf(response);
  return { response, requestId: response.headers.get("X-Sam3d-Request-Id") };
}

/** Ask the running stream for a key frame; resolves to the HTTP status (0: no answer). */
export async function requestKeyFrame(requestId, base = globalThis.document?.baseURI) {
  try {
    const r = await apiFetch(new URL(`v1/streams/${encodeURIComponent(requestId)}/keyframe`, base), { method: "POST" });
    return r.status;
  } catch {
    return 0;
  }
}
