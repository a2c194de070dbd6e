"""API keys and per-key quotas, as one ASGI middleware in front of the routes.

Keys are kept as SHA-256 digests with a name per key (`name:hexdigest` lines, from a file or
an environment variable holding a secret); a presented key (`Authorization: Bearer <key>` or
`X-API-Key: <key>`) is hashed and compared with every digest in constant time. Each key has a
request rate (a token bucket refilled per minute) and a number of concurrent streams; over
either, the answer is 429 with Retry-After. Quotas are counted per ingress replica.

Open without a key: health, the viewer, the protocol description, the ONNX click decoder and
artifact downloads (their ids are unguessable and expire with the store's retention).

    python -m serve_app.auth NAME   # prints a new key and the `NAME:digest` line to store
"""
from __future__ import annotations

import hashlib
import hmac
import math
import os
import secrets
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from serve_app.http_util import send_error
from sam3d_common.settings import AuthSettings, ConfigError

OPEN_PREFIXES = ("/v1/artifacts/", "/v1/models/")
OPEN_PATHS = ("/v1/protocol",)
STREAM_ROUTE = ("POST", "/v1/generate")


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeys:
    def __init__(self, digests: dict[str, str]):
        self._entries = [(name, bytes.fromhex(d)) for name, d in digests.items()]

    @classmethod
    def parse(cls, text: str, source: str) -> "ApiKeys":
        digests: dict[str, str] = {}
        for raw in text.replace(",", "\n").splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            name, _, hexd = line.partition(":")
            if not name or len(hexd) != 64 or any(c not in "0123456789abcdef" for c in hexd.lower()):
                raise ConfigError(f"{source}: each key is `name:sha256-hex` (64 hex digits); "
                                  f"create one with `python -m serve_app.auth NAME`")
            digests[name.strip()] = hexd.lower()
        return cls(digests)

    @classmethod
    def load(cls, settings: AuthSettings) -> "ApiKeys":
        text, sources = "", []
        if settings.keys_file:
            try:
                with open(settings.keys_file, encoding="utf-8") as f:
                    text += f.read() + "\n"
            except OSError as exc:
                raise ConfigError(f"auth.keys_file {settings.keys_file!r}: {exc.strerror}") from None
            sources.append(settings.keys_file)
        if settings.keys_env and os.environ.get(settings.keys_env):
            text += os.environ[settings.keys_env]
            sources.append(f"${settings.keys_env}")
        keys = cls.parse(text, " + ".join(sources) or "auth")
        if not keys._entries:
            raise ConfigError("auth is enabled but no API key is configured: set auth.keys_file or "
                              f"the {settings.keys_env or 'auth.keys_env'} environment variable")
        return keys

    def identify(self, presented: str) -> str | None:
        """The key's name, or None. Every digest is compared, each in constant time."""
        probe = hashlib.sha256(presented.encode()).digest()
        found = None
        for name, known in self._entries:
            if hmac.compare_digest(probe, known):
                found = name
        return found


@dataclass
class _Bucket:
    tokens: float
    stamp: float
    streams: int = 0


@dataclass
class Quota:
    """Per-key request rate (token bucket of `per_minute`) and concurrent streams."""

    per_minute: int
    streams: int
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    def _bucket(self, key: str) -> _Bucket:
        now = self.clock()
        b = self._buckets.setdefault(key, _Bucket(float(self.per_minute), now))
        b.tokens = min(float(self.per_minute), b.tokens + (now - b.stamp) * self.per_minute / 60)
        b.stamp = now
        return b

    def take_request(self, key: str) -> float:
        """0 when admitted, else the seconds until the next request would be."""
        b = self._bucket(key)
        if b.tokens >= 1:
            b.tokens -= 1
            return 0.0
        return (1 - b.tokens) * 60 / self.per_minute

    def open_stream(self, key: str) -> bool:
        b = self._bucket(key)
        if b.streams >= self.streams:
            return False
        b.streams += 1
        return True

    def close_stream(self, key: str) -> None:
        self._buckets[key].streams -= 1


def _protected(path: str) -> bool:
    return path.startswith("/v1/") and path not in OPEN_PATHS and not path.startswith(OPEN_PREFIXES)


def _presented(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"x-api-key":
            return value.decode("latin-1").strip()
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer":
                return token.strip()
    return None


class AuthMiddleware:
    def __init__(self, app, keys: ApiKeys, quota: Quota):
        self.app, self.keys, self.quota = app, keys, quota

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not _protected(scope["path"]):
            return await self.app(scope, receive, send)
        presented = _presented(scope["headers"])
        name = self.keys.identify(presented) if presented else None
        if name is None:
            return await send_error(send, 401, "unauthorized", "send a valid API key as `Authorization: Bearer "
                                "<key>` or `X-API-Key: <key>`", {"www-authenticate": "Bearer"})
        wait = self.quota.take_request(name)
        if wait > 0:
            return await send_error(send, 429, "rate_limited", f"API key {name!r} is over its "
                                f"{self.quota.per_minute} requests per minute",
                                {"retry-after": str(max(1, math.ceil(wait)))})
        scope.setdefault("state", {})["api_key"] = name
        if (scope["method"], scope["path"]) != STREAM_ROUTE:
            return await self.app(scope, receive, send)
        if not self.quota.open_stream(name):
            return await send_error(send, 429, "too_many_streams", f"API key {name!r} already has "
                                f"{self.quota.streams} streams open", {"retry-after": "5"})
        try:
            await self.app(scope, receive, send)
        finally:
            self.quota.close_stream(name)


def install_auth(app, settings: AuthSettings) -> None:
    """Add the middleware when auth is enabled; a missing or malformed key store fails at start."""
    if settings.enabled:
        app.add_middleware(AuthMiddleware, keys=ApiKeys.load(settings),
                           quota=Quota(settings.requests_per_minute, settings.max_concurrent_streams))


if __name__ == "__main__":
    if len(sys.argv) != 2 or ":" in sys.argv[1]:
        sys.exit("usage: python -m serve_app.auth NAME")
    key = secrets.token_urlsafe(32)
    print(f"key (give it to the client, store it nowhere else): {key}")
    print(f"line for auth.keys_file or ${AuthSettings().keys_env}: {sys.argv[1]}:{digest(key)}")
