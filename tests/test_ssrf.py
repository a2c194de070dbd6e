"""SSRF findings of issue 10: `image_url` must not reach internal addresses in any spelling,
through redirects or slowly, and its errors must not tell what a target answered.

Traffic goes to a loopback listener only. Every other range is checked through the address
check itself or a test resolver that maps names to it, and a guard makes any connection
attempt to a non-loopback address fail the test before a packet leaves.
"""
from __future__ import annotations

import ipaddress
import time

import httpcore
import pytest

from sam3d_common.errors import BadInput
from loopback_http import LoopbackServer, png
from serve_app import url_fetch
from serve_app.inputs import fetch_url
from sam3d_common.settings import LimitsSettings, load_settings
from serve_app.url_fetch import REFUSED, address_allowed, fetch_image, host_allowed, is_public

LOOPBACK_OK = LimitsSettings(image_url_allow_networks=["127.0.0.0/8", "::1/128"], image_url_timeout_s=5)


@pytest.fixture(autouse=True)
def only_loopback(monkeypatch):
    """Any connect to a non-loopback address fails here, so a faulty check sends nothing."""
    attempts: list[str] = []
    real = httpcore.AnyIOBackend.connect_tcp

    async def guarded(self, host, port, **kw):
        attempts.append(host)
        if not ipaddress.ip_address(host).is_loopback:
            raise AssertionError(f"tried to connect to {host}")
        return await real(self, host, port, **kw)

    monkeypatch.setattr(httpcore.AnyIOBackend, "connect_tcp", guarded)
    return attempts


def resolver_for(table: dict[str, list[str]]):
    async def resolve(host: str, port: int) -> list[str]:
        if host in table:
            return table[host]
        return await url_fetch.system_resolver(host, port)  # numeric spellings, localhost
    return resolve


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "2130706433", "0x7f000001",
                                  "127.1", "017700000001", "[::ffff:127.0.0.1]", "127.0.0.2"])
async def test_ssrf_loopback_refused_in_every_spelling_without_connecting(host, only_loopback):
    async with LoopbackServer() as srv:
        with pytest.raises(BadInput, match=REFUSED):
            await fetch_url(srv.url("/img.png", host), LimitsSettings())
        assert srv.connections == 0
    assert only_loopback == []


INTERNAL = ["10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
            "224.0.0.1", "240.0.0.1", "255.255.255.255", "192.0.0.1", "198.18.0.1",
            "::", "::1", "fe80::1", "fd00::1", "ff02::1", "::ffff:10.0.0.1", "::ffff:169.254.169.254",
            "::7f00:1", "64:ff9b::a9fe:a9fe", "64:ff9b:1::1", "2002:7f00:1::", "2001::1"]


@pytest.mark.parametrize("address", INTERNAL)
def test_ssrf_address_check_refuses_non_public_ranges(address):
    assert not is_public(ipaddress.ip_address(address))
    assert not address_allowed(ipaddress.ip_address(address))


def test_ssrf_address_check_passes_public_and_operator_networks():
    assert is_public(ipaddress.ip_address("93.184.216.34"))
    assert is_public(ipaddress.ip_address("2606:2800:220:1::1"))
    allow = [ipaddress.ip_network("10.1.0.0/16")]
    assert address_allowed(ipaddress.ip_address("10.1.2.3"), allow)
    assert address_allowed(ipaddress.ip_address("::ffff:10.1.2.3"), allow)
    assert not address_allowed(ipaddress.ip_address("10.2.0.1"), allow)


@pytest.mark.parametrize("address", ["169.254.169.254", "10.0.0.1", "fd00::1", "::ffff:192.168.0.1",
                                     "64:ff9b::a9fe:a9fe"])
async def test_ssrf_names_resolving_inside_are_refused_before_connecting(address, only_loopback):
    resolve = resolver_for({"metadata.test": [address]})
    with pytest.raises(BadInput, match=REFUSED):
        await fetch_image("http://metadata.test/latest/meta-data/", LimitsSettings(), resolve)
    assert only_loopback == []


async def test_ssrf_one_internal_answer_among_public_ones_is_refused(only_loopback):
    resolve = resolver_for({"mixed.test": ["93.184.216.34", "127.0.0.1"]})
    with pytest.raises(BadInput, match=REFUSED):
        await fetch_image("http://mixed.test/x.png", LimitsSettings(), resolve)
    assert only_loopback == []


async def test_ssrf_connects_to_the_address_it_checked_not_a_second_answer(only_loopback):
    """DNS rebinding: the name resolves once per connection, and that answer is the one used."""
    answers = iter([["127.0.0.1"], ["10.0.0.1"]])
    calls = []

    async def rebinding(host, port):
        calls.append(host)
        return next(answers)

    async with LoopbackServer() as srv:
        body = await fetch_image(f"http://rebind.test:{srv.port}/img.png", LOOPBACK_OK, rebinding)
    assert body == png() and calls == ["rebind.test"] and only_loopback == ["127.0.0.1"]


async def test_ssrf_operator_allowed_network_fetches_an_image():
    async with LoopbackServer() as srv:
        assert await fetch_image(srv.url("/img.png"), LOOPBACK_OK) == png()
        assert await fetch_image(srv.url("/img.webp"), LOOPBACK_OK)
        assert srv.connections == 2


async def test_ssrf_redirect_to_a_refused_address_is_not_followed(only_loopback):
    resolve = resolver_for({"good.test": ["127.0.0.1"], "evil.test": ["169.254.169.254"]})
    limits = LimitsSettings(image_url_allow_networks=["127.0.0.0/8"], image_url_hosts=["good.test"])
    async with LoopbackServer() as srv:
        for to in (f"http://evil.test:{srv.port}/img.png",        # resolves inside
                   f"http://127.0.0.2:{srv.port}/img.png",        # not an allowed host
                   "file:///etc/passwd", "http://[bad", "http://good.test:99999/x"):
            with pytest.raises(BadInput) as info:
                await fetch_image(f"http://good.test:{srv.port}/redirect?to={to}", limits, resolve)
            assert "could not be fetched" in info.value.message and "evil" not in info.value.message
        assert srv.connections == 5 and srv.requests[0].startswith("/redirect")
    assert set(only_loopback) == {"127.0.0.1"}


async def test_ssrf_redirects_are_bounded():
    limits = LOOPBACK_OK.model_copy(update={"image_url_max_redirects": 2})
    async with LoopbackServer() as srv:
        with pytest.raises(BadInput, match="could not be fetched"):
            await fetch_image(srv.url("/loop"), limits)
        assert srv.requests == ["/loop"] * 3
        redirect = srv.url("/redirect?to=/img.png")
        assert await fetch_image(redirect, limits) == png()


async def test_ssrf_one_deadline_for_the_whole_fetch_not_per_read():
    limits = LOOPBACK_OK.model_copy(update={"image_url_timeout_s": 1.0})
    async with LoopbackServer() as srv:
        t0 = time.monotonic()
        with pytest.raises(BadInput, match="within 1 s"):
            await fetch_image(srv.url("/drip"), limits)
        assert time.monotonic() - t0 < 3.0  # a byte every 0.2 s would pass any per-read limit


@pytest.mark.parametrize("path", ["/big", "/chunked-big"])
async def test_ssrf_size_cap(path):
    limits = LOOPBACK_OK.model_copy(update={"max_upload_bytes": 100_000})
    async with LoopbackServer() as srv:
        with pytest.raises(BadInput, match="at most 100000 bytes"):
            await fetch_image(srv.url(path), limits)


@pytest.mark.parametrize("path", ["/secret", "/html", "/missing"])
async def test_ssrf_errors_reveal_nothing_about_the_target(path):
    async with LoopbackServer() as srv:
        with pytest.raises(BadInput) as info:
            await fetch_image(srv.url(path), LOOPBACK_OK)
    message = info.value.message
    assert message.startswith("image_url could not be fetched")
    for leak in ("401", "404", "secret", "html", "Unauthorized"):
        assert leak not in message


async def test_ssrf_unresolvable_name_gives_the_same_message():
    async def nowhere(host, port):
        raise OSError("Name or service not known")
    with pytest.raises(BadInput, match="could not be fetched"):
        await fetch_image("http://nowhere.test/x.png", LimitsSettings(), nowhere)


@pytest.mark.parametrize("url, needle", [
    ("http://user:pw@127.0.0.1/x.png", "user name"),
    ("ftp://127.0.0.1/x.png", "http"),
    ("http:///x.png", "http"),
    ("http://127.0.0.1:99999/x.png", "valid URL"),
])
async def test_ssrf_url_shapes_refused(url, needle):
    with pytest.raises(BadInput, match=needle):
        await fetch_image(url, LOOPBACK_OK)


def test_ssrf_host_allow_list():
    assert host_allowed("cdn.example.com", [])
    assert host_allowed("cdn.example.com", ["*.example.com"])
    assert host_allowed("Example.com.", ["example.com"])
    assert not host_allowed("example.com.evil.test", ["example.com", "*.example.com"])
    assert not host_allowed("notexample.com", ["*.example.com"])


def test_ssrf_operator_settings_are_validated():
    from sam3d_common.settings import ConfigError

    with pytest.raises(ConfigError, match="image_url_allow_networks"):
        load_settings({"limits": {"image_url_allow_networks": ["127.0.0.1/8"]}})
    with pytest.raises(ConfigError, match="image_url_max_redirects"):
        load_settings({"limits": {"image_url_max_redirects": 50}})
    ok = load_settings({"limits": {"image_url_allow_networks": ["127.0.0.0/8", "::1/128"]}})
    assert len(ok.limits.image_url_allow_networks) == 2


def test_ssrf_generate_route_refuses_loopback_with_422(tmp_path):
    import asyncio
    import threading

    from test_routes import make_client

    ready, stop = threading.Event(), None
    box: dict = {}

    def serve():
        async def main():
            nonlocal stop
            stop = asyncio.Event()
            async with LoopbackServer() as srv:
                box["srv"] = srv
                ready.set()
                await stop.wait()
        box["loop"] = asyncio.new_event_loop()
        box["loop"].run_until_complete(main())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ready.wait(5)
    srv = box["srv"]
    try:
        resp = make_client(tmp_path).post("/v1/generate", json={"image_url": srv.url("/img.png", "2130706433")})
        assert resp.status_code == 422
        assert resp.json()["error"]["message"] == REFUSED
        assert srv.connections == 0
    finally:
        box["loop"].call_soon_threadsafe(stop.set)
        thread.join(5)
