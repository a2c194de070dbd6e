"""Serve an ASGI app with uvicorn on a free loopback port, in a daemon thread (test servers)."""
from __future__ import annotations

import socket
import threading
import time

import httpx
import uvicorn


def serve_in_thread(app, tries: int = 200) -> str:
    """Start `app` on 127.0.0.1 and wait (up to `tries` × 50 ms) until /healthz answers 200;
    returns the base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(tries):
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.05)
    return url
