// Jobs that outlive the viewer's connection (docs/jobs.md): POST /v1/jobs, then read the job's
// events from its events_url; when the connection drops, reconnect with Last-Event-ID = the
// highest seq seen. The server then sends the missed non-frame events, one key frame of the
// current voxels (`key_frame: true`, which may carry an older seq) and the live events, so
// the picture is complete again without replaying every frame. No DOM: Node can run it.

import { apiFetch } from "./apikey.js";
import { BINARY_MEDIA_TYPE, HttpError, errorOf, readEvents } from "./stream.js";

const FINAL = new Set(["complete", "error"]);

/** POST the form to /v1/jobs; resolves to the job's status ({ job_id, events_url, … }). */
export async function submitJob(form, { signal, base = globalThis.document?.baseURI } = {}) {
  const response = await apiFetch(new URL("v1/jobs", base), { method: "POST", body: form, signal });
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

/** DELETE the job (cancel it); resolves to the HTTP status, 0 when there was no answer. */
export async function cancelJob(job, base = globalThis.document?.baseURI) {
  try {
    return (await apiFetch(new URL(job.cancel_url.replace(/^\//, ""), base), { method: "DELETE" })).status;
  } catch {
    return 0;
  }
}

const pause = (ms, signal) => new Promise((resolve) => {
  const t = setTimeout(resolve, ms);
  signal?.addEventListener("abort", () => { clearTimeout(t); resolve(); }, { once: true });
});

/**
 * The job's events, in order, across reconnections, until `complete` or `error`.
 * A refusal (4xx/5xx answer) throws HttpError; a dropped connection is retried up to
 * `retries` times in a row (backoff `backoffMs` × attempt), each reported to
 * `onResume(lastSeq, attempt, reason)`. `signal` aborts for good. `control.reconnect()`
 * (set here) reconnects at once, e.g. to get a key frame after a lost one. `dropAfter`
 * (tests): close the first connection once that many events have arrived, as a drop would.
 */
export async function* jobEvents(job, {
  binary = true, signal, base = globalThis.document?.baseURI, retries = 8, backoffMs = 400,
  onResume = () => {}, onSkip = () => {}, dropAfter = null, control = {},
} = {}) {
  let last = null;
  let attempt = 0;
  let received = 0;
  let asked = false;
  for (;;) {
    const conn = new AbortController();
    control.reconnect = () => {
      asked = true;
    };
    const abort = () => conn.abort();
    signal?.addEventListener("abort", abort, { once: true });
    let reason = "the stream ended before the job did";
    try {
      const headers = { Accept: binary ? BINARY_MEDIA_TYPE : "text/event-stream" };
      if (last !== null) headers["Last-Event-ID"] = String(last);
      const response = await apiFetch(new URL(job.events_url.replace(/^\//, ""), base), { headers, signal: conn.signal });
      if (!response.ok) throw await errorOf(response);
      for await (const ev of readEvents(response, { onSkip })) {
        attempt = 0;
        if (last !== null && ev.seq <= last && !ev.key_frame) continue; // already seen
        if (last === null || ev.seq > last) last = ev.seq;
        yield ev;
        if (FINAL.has(ev.type)) return;
        // What was read but not yet handed over is dropped: the next connection replays it.
        if (asked) break;
        if (dropAfter !== null && ++received === dropAfter) {
          dropAfter = null;
          reason = "dropped on purpose (test)";
          break;
        }
      }
    } catch (err) {
      // A 4xx is final; a 5xx may be a replica being replaced: retried like a drop.
      if (signal?.aborted || (err instanceof HttpError && err.status < 500)) throw err;
      reason = err.message || String(err);
    } finally {
      signal?.removeEventListener("abort", abort);
      conn.abort(); // close this connection (a no-op once it has ended)
    }
    if (asked) { // a reconnection asked for: no pause, not a failure
      asked = false;
      continue;
    }
    if (++attempt > retries) throw new Error(`the connection to job ${job.job_id} failed ${retries} times: ${reason}`);
    onResume(last, attempt, reason);
    await pause(backoffMs * (attempt - 1), signal);
    if (signal?.aborted) throw new DOMException("aborted", "AbortError");
  }
}
