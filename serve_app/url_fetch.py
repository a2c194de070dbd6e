"""Fetching `image_url` without letting a client reach what only the server can reach (SSRF).

Each connection resolves its host once, refuses unless every address is public (or inside a
network the operator allowed), and connects to the address it checked, so a second DNS answer
cannot swap in an internal one. Redirects are followed by hand, each hop checked the same way,
up to a bound; one deadline covers the whole fetch (resolution, connects, every read); the body
is capped in bytes and must start like a PNG, JPEG or WebP file. Every failure after the address
check gives the same message, so the error never tells a client what an address answered.
"""
from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Awaitable, Callable, Iterable

import httpcore
import httpx

from sam3d_common.errors import BadInput
from sam3d_common.settings import LimitsSettings

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# host, port → the addresses it resolves to (text). Tests pass one that maps names to any range.
Resolver = Callable[[str, int], Awaitable[list[str]]]

REDIRECTS = (301, 302, 303, 307, 308)
REFUSED = "image_url names a host this service does not fetch from"

# Ranges `ipaddress` calls global that still reach something other than the public host named:
# multicast, IPv4-compatible IPv6 (::a.b.c.d), NAT64 (well-known and local-use), 6to4 and
# Teredo (both carry an IPv4 address inside), and CGNAT, which older Pythons call neither.
_NOT_PUBLIC: tuple[Network, ...] = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "100.64.0.0/10", "224.0.0.0/4", "240.0.0.0/4",
    "::/96", "64:ff9b::/96", "64:ff9b:1::/48", "2001::/32", "2002::/16", "ff00::/8",
))


def is_public(ip: Address) -> bool:
    """True for an address on the public internet; IPv4-mapped IPv6 is judged as its IPv4."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_loopback or \
            ip.is_link_local or ip.is_unspecified or ip.is_private:
        return False
    return not any(ip in net for net in _NOT_PUBLIC if net.version == ip.version)


def address_allowed(ip: Address, allow: Iterable[Network] = ()) -> bool:
    """Public, or inside one of the operator's allowed networks (e.g. 127.0.0.0/8 for local dev)."""
    plain = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip
    return is_public(ip) or any(plain in net for net in allow if net.version == plain.version)


def host_allowed(host: str, hosts: Iterable[str]) -> bool:
    """`hosts` empty: any host. Otherwise an exact name, or `*.example.com` for its subdomains."""
    hosts = list(hosts)
    if not hosts:
        return True
    host = host.lower().rstrip(".")
    for pattern in hosts:
        pattern = pattern.lower().rstrip(".")
        if host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:])):
            return True
    return False


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [info[4][0] for info in infos]


class _CheckedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend with one change: connect_tcp resolves the host, checks every
    address and connects to the checked one (TLS still verifies the name from the URL)."""

    def __init__(self, limits: LimitsSettings, resolver: Resolver):
        self.limits = limits
        self.resolver = resolver
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        try:
            addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in await self.resolver(host, port)]
        except (OSError, ValueError):
            raise _Unreachable from None
        allow = self.limits.image_url_allow_networks
        if not addresses or not all(address_allowed(a, allow) for a in addresses):
            raise BadInput(REFUSED)
        return await self.inner.connect_tcp(str(addresses[0]), port, timeout=timeout,
                                            local_address=local_address, socket_options=socket_options)

    async def connect_unix_socket(self, *args, **kwargs):  # pragma: no cover - never asked for
        raise BadInput(REFUSED)

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class _Unreachable(Exception):
    """Anything that went wrong after the checks; reported without detail."""


_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")


def looks_like_image(head: bytes) -> bool:
    return head.startswith(_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def _checked_url(text: str, limits: LimitsSettings, base: httpx.URL | None = None) -> httpx.URL:
    """`text` parsed (against `base`, for a redirect's Location) and checked before any connect."""
    try:
        url = base.join(text) if base is not None else httpx.URL(text)
    except (httpx.InvalidURL, ValueError, TypeError):
        raise BadInput("image_url is not a valid URL") from None
    if url.port is not None and not 0 < url.port < 65536:
        raise BadInput("image_url is not a valid URL")
    if url.scheme not in ("http", "https") or not url.host:
        raise BadInput("image_url must be an http(s) or data: URL")
    if url.userinfo:
        raise BadInput("image_url must not carry a user name or password")
    if not host_allowed(url.host, limits.image_url_hosts):
        raise BadInput(REFUSED)
    return url


async def fetch_image(text: str, limits: LimitsSettings, resolver: Resolver = system_resolver) -> bytes:
    """GET an http(s) image under the rules above; BadInput for every refusal or failure."""
    url = _checked_url(text, limits)
    failed = (f"image_url could not be fetched as a PNG, JPEG or WebP image of at most "
              f"{limits.max_upload_bytes} bytes within {limits.image_url_timeout_s:g} s")
    pool = httpcore.AsyncConnectionPool(network_backend=_CheckedBackend(limits, resolver),
                                        max_connections=1, retries=0)
    try:
        async with pool, asyncio.timeout(limits.image_url_timeout_s):
            for hop in range(limits.image_url_max_redirects + 1):
                try:
                    got = await _get(pool, url, limits.max_upload_bytes)
                except BadInput:
                    if hop == 0:
                        raise
                    raise _Unreachable from None  # a refused hop says nothing about where it pointed
                if got is None:
                    raise _Unreachable  # neither 200 nor a redirect
                if isinstance(got, bytes):
                    return got
                try:
                    url = _checked_url(got, limits, base=url)
                except BadInput:
                    raise _Unreachable from None
            raise _Unreachable  # too many redirects
    except (_Unreachable, TimeoutError, OSError, httpcore.ConnectionNotAvailable, httpcore.ProtocolError,
            httpcore.TimeoutException, httpcore.NetworkError, httpcore.UnsupportedProtocol):
        raise BadInput(failed) from None


async def _get(pool: httpcore.AsyncConnectionPool, url: httpx.URL, cap: int) -> bytes | str | None:
    """The body of a 200 (bytes), a redirect's Location (str), or None for anything else."""
    target = httpcore.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path)
    headers = [(b"Host", url.netloc), (b"Accept", b"image/png, image/jpeg, image/webp"),
               (b"User-Agent", b"sam3d-serve")]
    async with pool.stream("GET", target, headers=headers) as resp:
        head = {k.lower(): v for k, v in resp.headers}
        if resp.status in REDIRECTS and head.get(b"location"):
            return head[b"location"].decode("latin-1")
        if resp.status != 200:
            return None
        return await _read_capped(resp, head.get(b"content-length"), cap)


async def _read_capped(resp: httpcore.Response, declared: bytes | None, cap: int) -> bytes:
    if declared is not None and (not declared.isdigit() or int(declared) > cap):
        raise _Unreachable
    chunks, total, sniffed = [], 0, False
    async for chunk in resp.aiter_stream():
        total += len(chunk)
        if total > cap:
            raise _Unreachable
        chunks.append(chunk)
        if not sniffed and total >= 12:
            if not looks_like_image(b"".join(chunks)[:12]):
                raise _Unreachable
            sniffed = True
    body = b"".join(chunks)
    if not looks_like_image(body[:12]):
        raise _Unreachable
    return body
