"""A raw-socket HTTP/1.1 client for tests that must control how fast (or whether) a
stream is read: httpx reads 64 KB at a time, which hides a slow reader."""
from __future__ import annotations

import json
import socket
import time
from urllib.parse import urlparse

import psutil


class RawStream:
    def __init__(self, base: str, path: str, body: dict, headers: dict | None = None, rcvbuf: int = 4096):
        u = urlparse(base)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # A small kernel buffer makes the reader's pace reach the server as TCP backpressure.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect((u.hostname, u.port))
        payload = json.dumps(body).encode()
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.sock.sendall((f"POST {path} HTTP/1.1\r\nHost: {u.hostname}\r\nContent-Type: application/json\r\n"
                           f"Content-Length: {len(payload)}\r\n{extra}Connection: close\r\n\r\n").encode() + payload)
        self.raw = b""

    def read(self, n: int = 65536, timeout: float = 60.0) -> bytes:
        self.sock.settimeout(timeout)
        data = self.sock.recv(n)
        self.raw += data
        return data

    def read_until(self, needle: bytes, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while needle not in self.raw:
            if not self.read(65536, max(0.1, end - time.monotonic())):
                raise AssertionError(f"stream ended before {needle!r}")

    def read_all(self, timeout: float = 120.0) -> None:
        while self.read(65536, timeout):
            pass

    def close(self) -> None:
        self.sock.close()

    @property
    def status(self) -> int:
        return int(self.raw.split(b" ", 2)[1])

    def body(self) -> bytes:
        head, _, rest = self.raw.partition(b"\r\n\r\n")
        if b"transfer-encoding: chunked" not in head.lower():
            return rest
        out = b""
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            out += rest[:size]
            rest = rest[size + 2:]
        return out


def serve_rss_mb(app: str) -> dict[str, float]:
    """Resident memory of the HTTP proxy and each of the app's replicas, in MB, keyed
    'name/pid' (Ray retitles a replica process while it serves a request)."""
    out = {}
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or []).strip()
        if "ProxyActor" in cmd or f"ServeReplica:{app}:" in cmd:
            name = cmd.split(":")[-1].split(".")[0].strip() if "ServeReplica" in cmd else "proxy"
            try:
                out[f"{name}/{p.info['pid']}"] = p.memory_info().rss / 2**20
            except psutil.Error:
                pass
    return out
