// The viewer's stream client (serve_app/static/stream.js) against the shared vectors: container.bin
// (binary transport) and sse_stream.txt (the same events as SSE, written by serve_app.protocol) must
// read to the same events and frames (run: node --test tests/js/).
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { dirname, join } from "node:path";

import { SSEParser, decodeFrame, errorOf, readEvents } from "../../serve_app/static/stream.js";
import { VoxelStreamDecoder } from "../../serve_app/static/voxel-codec.js";

const VECTORS = join(dirname(fileURLToPath(import.meta.url)), "..", "vectors");
const container = new Uint8Array(readFileSync(join(VECTORS, "container.bin")));
const sseBytes = new Uint8Array(readFileSync(join(VECTORS, "sse_stream.txt")));
const meta = JSON.parse(readFileSync(join(VECTORS, "container.json"), "utf8"));
const expected = meta.records.filter((r) => r.kind === 1 || r.kind === 2);

/** A fetch Response whose body arrives in chunks of `size` bytes. */
function response(bytes, type, size) {
  const body = new ReadableStream({
    start(c) {
      for (let at = 0; at < bytes.length; at += size) c.enqueue(bytes.slice(at, at + size));
      c.close();
    },
  });
  return new Response(body, { headers: { "content-type": type } });
}

async function collect(res) {
  const skipped = [];
  const events = [];
  for await (const ev of readEvents(res, { onSkip: (s) => skipped.push(s) })) events.push(ev);
  return { events, skipped };
}

async function checkEvents(events) {
  assert.equal(events.length, expected.length);
  const dec = new VoxelStreamDecoder();
  for (const [i, ev] of events.entries()) {
    const want = expected[i];
    const { frame_message: msg, frame_data: data, ...fields } = ev;
    assert.deepEqual(fields, want.event, `event ${i}`);
    if (want.kind !== 2) continue;
    assert.ok(msg || data, `event ${i} carries its frame`);
    const f = await decodeFrame(dec, ev);
    assert.equal(f.count, want.frame.voxel_count);
    assert.equal(f.frameSeq, want.frame.frame_seq);
    assert.deepEqual(Array.from(f.coords), want.frame.coords);
    if (want.frame.colors) assert.deepEqual(Array.from(f.colors), want.frame.colors);
  }
}

test("binary transport: the container vector's events and frames, at any chunking", async () => {
  for (const size of [1, 5, 64, container.length]) {
    const { events, skipped } = await collect(response(container, "application/octet-stream", size));
    assert.deepEqual(skipped, ["record of unknown kind 9"]);
    await checkEvents(events);
  }
});

test("SSE transport: the same events from the Python-written SSE vector, at any chunking", async () => {
  for (const size of [1, 7, 100, sseBytes.length]) {
    const { events, skipped } = await collect(response(sseBytes, "text/event-stream", size));
    assert.deepEqual(skipped, []);
    await checkEvents(events);
  }
});

test("a binary stream cut inside a record throws", async () => {
  await assert.rejects(collect(response(container.subarray(0, container.length - 3), "application/octet-stream", 50)),
    /stream ended inside a record/);
});

test("errorOf: the server's reason, or the status line, plus Retry-After", async () => {
  const e = await errorOf(new Response(JSON.stringify({ error: { code: "bad_input", message: "no image" } }),
    { status: 422, headers: { "content-type": "application/json" } }));
  assert.deepEqual([e.status, e.code, e.message], [422, "bad_input", "no image"]);
  const f = await errorOf(new Response("busy", { status: 503, statusText: "Service Unavailable", headers: { "Retry-After": "3" } }));
  assert.deepEqual([f.code, f.message], ["http_503", "the server answered 503 Service Unavailable (try again in 3 s)"]);
});

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
