// The viewer's API-key handling: a 401 asks once, the key is kept for the tab and sent after.
import assert from "node:assert/strict";
import { test } from "node:test";

import { apiFetch, authHeaders } from "../../serve_app/static/apikey.js";

function storage() {
  const data = new Map();
  return { getItem: (k) => data.get(k) ?? null, setItem: (k, v) => data.set(k, String(v)) };
}

test("a 401 asks for the key once, retries with it, and later calls send it", async () => {
  globalThis.sessionStorage = storage();
  const seen = [];
  let asked = 0;
  globalThis.prompt = () => { asked += 1; return " k-123 "; };
  globalThis.fetch = async (url, init) => {
    seen.push(init.headers["X-API-Key"] ?? null);
    return { status: init.headers["X-API-Key"] === "k-123" ? 200 : 401 };
  };
  const r = await apiFetch("http://127.0.0.1/v1/capabilities", { method: "GET" });
  assert.equal(r.status, 200);
  assert.deepEqual(seen, [null, "k-123"]);
  await apiFetch("http://127.0.0.1/v1/generate", { method: "POST", headers: { Accept: "text/event-stream" } });
  assert.deepEqual(seen, [null, "k-123", "k-123"]);
  assert.equal(asked, 1);
  assert.deepEqual(authHeaders({ Accept: "x" }), { Accept: "x", "X-API-Key": "k-123" });
});

test("a refused prompt gives the 401 back, and no key is stored", async () => {
  globalThis.sessionStorage = storage();
  globalThis.prompt = () => null;
  globalThis.fetch = async () => ({ status: 401 });
  const r = await apiFetch("http://127.0.0.1/v1/embed", { method: "POST" });
  assert.equal(r.status, 401);
  assert.deepEqual(authHeaders(), {});
});
