"""A tiny HTTP server on loopback that counts the connections it accepts (SSRF tests).

Routes: /img.png (a PNG), /img.webp (a WebP header), /html, /secret (401 with a body),
/redirect?to=URL, /loop (redirects to itself), /drip (a PNG at 1 byte per 0.2 s),
/big (declares more bytes than any cap), /chunked-big (sends 64 KiB chunks without a length).
"""
from __future__ import annotations

import asyncio
import io
from urllib.parse import parse_qs, urlsplit

from PIL import Image


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


class LoopbackServer:
    def __init__(self):
        self.connections = 0
        self.requests: list[str] = []
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    async def __aenter__(self) -> "LoopbackServer":
        hosts = ["127.0.0.1", "::1"]
        try:
            self.server = await asyncio.start_server(self._handle, hosts, 0)
        except OSError:  # no IPv6 loopback here
            self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        ports = {s.getsockname()[1] for s in self.server.sockets}
        if len(ports) != 1:  # two sockets, two ports: keep the IPv4 one only
            await self.__aexit__()
            self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        await self.server.wait_closed()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            target = head.split(b" ", 2)[1].decode()
            self.requests.append(target)
            await self._answer(urlsplit(target), writer)
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _answer(self, url, writer: asyncio.StreamWriter) -> None:
        def send(status: str, body: bytes = b"", headers: dict | None = None) -> None:
            lines = [f"HTTP/1.1 {status}", "Connection: close", f"Content-Length: {len(body)}"]
            lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)

        if url.path == "/img.png":
            send("200 OK", png(), {"Content-Type": "image/png"})
        elif url.path == "/img.webp":
            send("200 OK", b"RIFF\x10\x00\x00\x00WEBPVP8 ", {"Content-Type": "image/webp"})
        elif url.path == "/html":
            send("200 OK", b"<html>" + b"x" * 100, {"Content-Type": "text/html"})
        elif url.path == "/secret":
            send("401 Unauthorized", b"secret-dashboard-body")
        elif url.path == "/redirect":
            send("302 Found", headers={"Location": parse_qs(url.query)["to"][0]})
        elif url.path == "/loop":
            send("302 Found", headers={"Location": "/loop"})
        elif url.path == "/big":
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 999999999\r\n\r\n"
                         + png())
        elif url.path == "/chunked-big":
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + png())
            for _ in range(64):
                writer.write(b"\0" * 65536)
                await writer.drain()
        elif url.path == "/drip":
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 100000\r\n\r\n")
            for byte in png() * 1000:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.2)
        else:
            send("404 Not Found")
        await writer.drain()
