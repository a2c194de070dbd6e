// API key for deployments that require one (auth.enabled): asked for once when the server
// answers 401, kept for this tab only (sessionStorage) and sent as X-API-Key on API calls.
// Artifact downloads and the click decoder are open and need no key.
const KEY = "sam3d-api-key";

export function authHeaders(headers = {}) {
  const key = globalThis.sessionStorage?.getItem(KEY);
  return key ? { ...headers, "X-API-Key": key } : headers;
}

export async function apiFetch(url, init = {}, retried = false) {
  const response = await fetch(url, { ...init, headers: authHeaders(init.headers || {}) });
  if (response.status === 401 && !retried && typeof globalThis.prompt === "function") {
    const key = globalThis.prompt("This server needs an API key:");
    if (key && key.trim()) {
      globalThis.sessionStorage?.setItem(KEY, key.trim());
      return apiFetch(url, init, true);
    }
  }
  return response;
}
