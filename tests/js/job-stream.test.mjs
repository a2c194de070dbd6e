// The viewer's job client (serve_app/static/job-stream.js) over real HTTP on loopback, against a
// small node:http server that plays the jobs API's events route: a 503 while a replica is
// replaced, a connection cut mid-stream, then a resume honouring Last-Event-ID with a key frame.
// The Python side of the same contract is tested in tests/test_jobs.py (run: node --test tests/js/).
import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";

import { cancelJob, jobEvents, submitJob } from "../../serve_app/static/job-stream.js";
import { HttpError } from "../../serve_app/static/stream.js";

const LOG = [
  { type: "loading", stage: "request", seq: 0 },
  { type: "loading", stage: "segmenter", seq: 1 },
  { type: "geometry", stage: "geometry", seq: 2, step: 1, total_steps: 3 },
  { type: "geometry", stage: "geometry", seq: 3, step: 2, total_steps: 3 },
  { type: "geometry", stage: "geometry", seq: 4, step: 3, total_steps: 3 },
  { type: "mesh_preview", stage: "mesh_baker", seq: 5 },
  { type: "complete", stage: "store", seq: 6 },
];
const sse = (ev, id = ev.seq) => `event: ${ev.type}\nid: ${id}\ndata: ${JSON.stringify(ev)}\n\n`;

/** Serve `script`: one handler per events request, in order; records each request's headers. */
async function serve(script) {
  const seen = [];
  const server = createServer((req, res) => {
    if (req.method === "POST" && req.url === "/v1/jobs") {
      res.writeHead(202, { "content-type": "application/json" });
      res.end(JSON.stringify({ job_id: "a".repeat(32), events_url: "/v1/jobs/j/events", cancel_url: "/v1/jobs/j" }));
      return;
    }
    if (req.method === "DELETE") {
      seen.push({ method: "DELETE", url: req.url });
      res.writeHead(200, { "content-type": "application/json" });
      res.end("{}");
      return;
    }
    seen.push({ method: req.method, url: req.url, lastEventId: req.headers["last-event-id"] ?? null });
    script[seen.length - 1](res, req.headers["last-event-id"]);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { base: `http://127.0.0.1:${server.address().port}/`, seen, close: () => server.close() };
}

const refuse = (status, code) => (res) => {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify({ error: { code, message: `${code} (test)` } }));
};

test("resumes after a 503 and a cut connection: every event once, a key frame, Last-Event-ID sent", async () => {
  const srv = await serve([
    refuse(503, "busy"), // a replica being replaced: retried
    (res) => { // three events, then the connection is cut
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.write(LOG.slice(0, 3).map((e) => sse(e)).join(""));
      setTimeout(() => res.socket.destroy(), 20);
    },
    (res, last) => { // missed non-frame events after `last`, a key frame of the voxels, the rest
      assert.equal(last, "2");
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.end(sse({ ...LOG[3], key_frame: true }) + LOG.slice(4).map((e) => sse(e)).join(""));
    },
  ]);
  const resumes = [];
  const got = [];
  try {
    const job = await submitJob(new FormData(), { base: srv.base });
    for await (const ev of jobEvents(job, { base: srv.base, binary: false, backoffMs: 1,
      onResume: (last, attempt) => resumes.push([last, attempt]) })) got.push(ev);
  } finally {
    srv.close();
  }
  assert.deepEqual(got.map((e) => e.seq), [0, 1, 2, 3, 4, 5, 6]);
  assert.equal(got[3].key_frame, true);
  assert.deepEqual(resumes, [[null, 1], [2, 1]]);
  assert.deepEqual(srv.seen.map((s) => s.lastEventId), [null, null, "2"]);
});

test("a key frame with an older seq still arrives; events already seen are not repeated", async () => {
  const srv = await serve([
    (res) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.write(LOG.slice(0, 5).map((e) => sse(e)).join(""));
      setTimeout(() => res.socket.destroy(), 20);
    },
    (res) => { // the stored picture is older than the client's position; the log replays from 0
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.end(LOG.slice(0, 2).map((e) => sse(e)).join("") + sse({ ...LOG[3], key_frame: true }, 4) +
        LOG.slice(5).map((e) => sse(e)).join(""));
    },
  ]);
  const got = [];
  try {
    for await (const ev of jobEvents({ job_id: "j", events_url: "/v1/jobs/j/events" }, { base: srv.base, binary: false, backoffMs: 1 })) {
      got.push(`${ev.seq}${ev.key_frame ? "k" : ""}`);
    }
  } finally {
    srv.close();
  }
  assert.deepEqual(got, ["0", "1", "2", "3", "4", "3k", "5", "6"]);
});

test("a 4xx ends the stream with the server's reason; reconnect() asks for a new connection", async () => {
  const srv = await serve([refuse(404, "not_found")]);
  try {
    const events = jobEvents({ job_id: "j", events_url: "/v1/jobs/j/events" }, { base: srv.base, binary: false });
    await assert.rejects(events.next(), (err) => err instanceof HttpError && err.status === 404 && /not_found/.test(err.message));
  } finally {
    srv.close();
  }
  const again = await serve([
    (res) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.write(LOG.slice(0, 3).map((e) => sse(e)).join("")); // and stays open
    },
    (res, last) => {
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.end(sse({ ...LOG[4], key_frame: true }, last) + LOG.slice(5).map((e) => sse(e)).join(""));
    },
  ]);
  const control = {};
  const got = [];
  try {
    for await (const ev of jobEvents({ job_id: "j", events_url: "/v1/jobs/j/events" }, { base: again.base, binary: false, control })) {
      got.push(ev.seq);
      if (ev.seq === 2) control.reconnect(); // as the viewer does after a frame it cannot decode
    }
    assert.equal(await cancelJob({ cancel_url: "/v1/jobs/j" }, again.base), 200);
  } finally {
    again.close();
  }
  assert.deepEqual(got, [0, 1, 2, 4, 5, 6]);
  assert.deepEqual(again.seen.map((s) => (s.method === "DELETE" ? "DELETE" : s.lastEventId)), [null, "2", "DELETE"]);
});
