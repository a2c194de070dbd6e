// The JavaScript decoder against the shared vectors in tests/vectors (run: node --test tests/js/).
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { dirname, join } from "node:path";

import {
  BinaryStreamReader, FrameFormatError, RecordKind, ResyncNeeded, VoxelStreamDecoder,
  base64ToBytes, crc32, decodeSeedEvent, parseEventPayload, parseHeader, splitFramePayload,
} from "../../serve_app/static/voxel-codec.js";

const here = dirname(fileURLToPath(import.meta.url));
const VECTORS = join(here, "..", "vectors");
const load = (name) => JSON.parse(readFileSync(join(VECTORS, name), "utf8"));
const streamVectors = readdirSync(VECTORS)
  .filter((f) => f.endsWith(".json"))
  .map(load)
  .filter((v) => Array.isArray(v.messages));

function checkFrame(frame, e, where) {
  assert.equal(frame.streamId, e.stream_id, where);
  assert.equal(frame.gridSize, e.grid_size, where);
  assert.equal(frame.frameSeq, e.frame_seq, where);
  assert.equal(frame.baseSeq, e.base_seq, where);
  assert.equal(frame.key, e.key, where);
  assert.equal(frame.count, e.voxel_count, where);
  assert.deepEqual(Array.from(frame.coords), e.coords, where);
  if (e.colors === null) assert.equal(frame.colors, null, where);
  else assert.deepEqual(Array.from(frame.colors), e.colors, where);
  const n = e.grid_size;
  for (let i = 0; i < frame.count; i++) {
    const [x, y, z] = [frame.coords[3 * i], frame.coords[3 * i + 1], frame.coords[3 * i + 2]];
    assert.equal(frame.linear[i], x + n * y + n * n * z, where);
  }
}

async function expectFailure(promiseOrFn, kind, where) {
  const cls = kind === "resync" ? ResyncNeeded : FrameFormatError;
  await assert.rejects(async () => promiseOrFn(), (err) => {
    assert.ok(err instanceof cls, `${where}: expected ${cls.name}, got ${err && err.name}: ${err && err.message}`);
    return true;
  });
}

test("the vectors cover what the format must pin", () => {
  const names = streamVectors.map((v) => v.name);
  for (const n of ["empty_and_single", "growth_raw", "growth_deflate", "colour_changes", "grid_change",
    "corners_256", "missing_frame", "random_raw", "random_deflate", "errors"]) {
    assert.ok(names.includes(n), n);
  }
  const headers = streamVectors.flatMap((v) => v.messages)
    .filter((m) => !m.expect.error).map((m) => parseHeader(base64ToBytes(m.data)));
  assert.ok(headers.some((h) => h.compressed) && headers.some((h) => !h.compressed));
  assert.ok(headers.some((h) => h.key) && headers.some((h) => !h.key));
  assert.ok(headers.some((h) => h.gridSize === 256) && headers.some((h) => h.gridSize === 1));
});

for (const vector of streamVectors) {
  test(`vector ${vector.name}: async decode in order`, async () => {
    const dec = new VoxelStreamDecoder();
    for (const [i, m] of vector.messages.entries()) {
      const where = `${vector.name}[${i}] ${m.expect.reason || ""}`;
      const bytes = base64ToBytes(m.data);
      if (m.expect.error) {
        const before = new Map([...dec.streams].map(([k, s]) => [k, s.seq]));
        await expectFailure(() => dec.decode(bytes), m.expect.error, where);
        assert.deepEqual(new Map([...dec.streams].map(([k, s]) => [k, s.seq])), before, `${where}: state kept`);
      } else {
        checkFrame(await dec.decode(bytes), m.expect, where);
      }
    }
  });

  test(`vector ${vector.name}: decodeEvent and queued decodes`, async () => {
    const dec = new VoxelStreamDecoder();
    const pending = vector.messages.map((m) => dec.decodeEvent({ encoding: "compact", frame_data: m.data }));
    for (const [i, m] of vector.messages.entries()) {
      const where = `${vector.name}[${i}]`;
      if (m.expect.error) await expectFailure(() => pending[i], m.expect.error, where);
      else checkFrame(await pending[i], m.expect, where);
    }
  });

  const allRaw = vector.messages.every((m) => m.expect.error || !m.expect.compressed);
  if (allRaw) {
    test(`vector ${vector.name}: decodeSync`, async () => {
      const dec = new VoxelStreamDecoder();
      for (const [i, m] of vector.messages.entries()) {
        const where = `${vector.name}[${i}]`;
        const bytes = base64ToBytes(m.data);
        if (m.expect.error) {
          // A format error may also be "deflated: use decode()" for a corrupt deflated body.
          const cls = m.expect.error === "resync" ? ResyncNeeded : FrameFormatError;
          assert.throws(() => dec.decodeSync(bytes), cls, where);
        } else checkFrame(dec.decodeSync(bytes), m.expect, where);
      }
    });
  }
}

test("decodeSync refuses a deflated message and points at decode()", () => {
  const v = streamVectors.find((x) => x.name === "growth_deflate");
  const m = v.messages.find((x) => x.expect.compressed);
  assert.throws(() => new VoxelStreamDecoder().decodeSync(base64ToBytes(m.data)), /use decode\(\)/);
});

test("a resync error names the stream and both sequence numbers", async () => {
  const v = streamVectors.find((x) => x.name === "missing_frame");
  const dec = new VoxelStreamDecoder();
  await dec.decode(base64ToBytes(v.messages[0].data));
  await dec.decode(base64ToBytes(v.messages[1].data));
  const err = await dec.decode(base64ToBytes(v.messages[2].data)).catch((e) => e);
  assert.ok(err instanceof ResyncNeeded);
  assert.equal(err.streamId, "voxels");
  assert.equal(err.heldSeq, 1);
  assert.equal(err.baseSeq, 2);
  assert.equal(dec.heldSeq("voxels"), 1);
});

test("every truncation of a message fails with FrameFormatError", async () => {
  const v = streamVectors.find((x) => x.name === "growth_deflate");
  for (const m of v.messages.slice(0, 2)) {
    const bytes = base64ToBytes(m.data);
    for (let cut = 0; cut < bytes.length; cut += Math.max(1, bytes.length >> 6)) {
      await expectFailure(() => new VoxelStreamDecoder().decode(bytes.subarray(0, cut)), "format", `cut ${cut}`);
    }
  }
});

test("seed events decode to their voxels", () => {
  const seed = load("seed_events.json");
  assert.ok(seed.events.length >= 3);
  for (const [i, item] of seed.events.entries()) {
    const out = decodeSeedEvent(item.event);
    assert.equal(out.count, item.event.voxel_count, `event ${i}`);
    assert.equal(out.gridSize, 64);
    assert.deepEqual(Array.from(out.coords, Math.round), item.coords, `event ${i}`);
    assert.deepEqual(Array.from(out.colors), item.colors, `event ${i}`);
  }
  assert.throws(() => decodeSeedEvent({ encoding: "compact" }), FrameFormatError);
});

test("base64 matches Node's decoder and rejects bad text", () => {
  let seed = 1;
  for (let len = 0; len < 70; len++) {
    const bytes = new Uint8Array(len).map(() => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) & 0xff);
    const text = Buffer.from(bytes).toString("base64");
    assert.deepEqual(base64ToBytes(text), new Uint8Array(bytes));
    assert.deepEqual(base64ToBytes(text.replace(/=+$/, "")), new Uint8Array(bytes));
  }
  assert.throws(() => base64ToBytes("ab$d"), FrameFormatError);
  assert.throws(() => base64ToBytes("abcde"), FrameFormatError);
  assert.throws(() => base64ToBytes(null), FrameFormatError);
});

test("crc32 is the standard CRC-32", () => {
  assert.equal(crc32(new TextEncoder().encode("123456789")), 0xcbf43926);
  assert.equal(crc32(new Uint8Array(0)), 0);
});

function checkContainer(records, meta) {
  assert.equal(records.length, meta.records.length);
  return records.map((rec, i) => {
    const e = meta.records[i];
    assert.equal(rec.kind, e.kind, `record ${i}`);
    if (rec.kind === RecordKind.EVENT) assert.deepEqual(parseEventPayload(rec.payload), e.event);
    else if (rec.kind !== RecordKind.FRAME) assert.equal(rec.payload.length, e.payload_bytes);
    return rec;
  });
}

test("binary stream: records come out whole at any chunking, frames decode", async () => {
  const data = new Uint8Array(readFileSync(join(VECTORS, "container.bin")));
  const meta = load("container.json");
  assert.equal(data.length, meta.bytes);
  for (const size of [1, 3, 7, 64, 1000, data.length]) {
    const reader = new BinaryStreamReader();
    const records = [];
    for (let at = 0; at < data.length; at += size) records.push(...reader.feed(data.subarray(at, at + size)));
    reader.close();
    assert.equal(reader.version, 1);
    checkContainer(records, meta);
    const dec = new VoxelStreamDecoder();
    for (const [i, rec] of records.entries()) {
      if (rec.kind !== RecordKind.FRAME) continue;
      const { event, message } = splitFramePayload(rec.payload);
      assert.deepEqual(event, meta.records[i].event);
      checkFrame(await dec.decode(message), meta.records[i].frame, `record ${i}`);
    }
  }
});

test("binary stream: bad header, wrong version, oversized record and truncation are refused", () => {
  const data = new Uint8Array(readFileSync(join(VECTORS, "container.bin")));
  const bad = data.slice();
  bad[0] = 0x58;
  assert.throws(() => new BinaryStreamReader().feed(bad), /bad magic/);
  assert.throws(() => new BinaryStreamReader({ expectVersion: 2 }).feed(data), /version 1/);
  assert.throws(() => new BinaryStreamReader({ maxPayload: 100 }).feed(data), /exceeds/);
  const reader = new BinaryStreamReader();
  reader.feed(data.subarray(0, data.length - 1));
  assert.throws(() => reader.close(), /inside a record/);
  assert.throws(() => new BinaryStreamReader().close(), /inside a header/);
});
