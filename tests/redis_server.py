"""A real redis-server on a loopback port for the tests (Debian package `redis-server`)."""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid

import pytest

from conftest import free_port

REDIS_SERVER = shutil.which("redis-server")
MISSING = None if REDIS_SERVER else "redis-server is not installed (apt-get install redis-server)"


class RedisServer:
    """`redis-server` in memory only (no RDB, no AOF), bound to 127.0.0.1."""

    def __init__(self):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + 10
        while time.monotonic() < end:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def redis_server():
    """A RedisServer for a test module (import this fixture into it); skipped without the binary."""
    if MISSING:
        pytest.skip(MISSING)
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "redis"])
def jobs_store_args(request) -> dict:
    """`args.jobs` keys for each store: SQLite beside the artifacts, or the module's Redis
    under a key prefix of its own."""
    if request.param == "sqlite":
        return {}
    url = request.getfixturevalue("redis_server").url
    return {"store_url": url, "store_prefix": f"test:{uuid.uuid4().hex}:"}
