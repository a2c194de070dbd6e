"""OpenAI-compatible prompt enhancer against a real HTTP server on 127.0.0.1.

The server is a small http.server app that answers /v1/chat/completions with canned
replies; the path prefix picks the behaviour (good, malformed, 500, slow, ...), and every
request it receives is recorded so the tests can check what the backend sent.
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import free_port
from deployments.prompt_enhancer.openai_compat import OpenAICompatEnhancer, chat_completions_url
from deployments.prompt_enhancer.rules import RulesEnhancer
from sam3d_common.settings import PromptEnhancerSettings

SLOW_S = 3.0
GOOD = {"image_prompt": "A single red teapot, centred, soft studio light, plain grey background",
        "segmentation_label": "Red Teapot"}


def completion(content: str) -> dict:
    return {"id": "c1", "object": "chat.completion", "model": "tiny",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}]}


# path prefix → (status, body bytes); "slow" sleeps before answering.
REPLIES = {
    "good": (200, json.dumps(completion(json.dumps(GOOD)))),
    "fenced": (200, json.dumps(completion("```json\n" + json.dumps(GOOD) + "\n```"))),
    "camel": (200, json.dumps(completion(json.dumps(
        {"imagePrompt": GOOD["image_prompt"], "segmentationPrompt": "teapot"})))),
    "badjson": (200, json.dumps(completion('{"image_prompt": "a teapot", "segmentation_lab'))),
    "longlabel": (200, json.dumps(completion(json.dumps(
        {"image_prompt": "a teapot", "segmentation_label": "big old red china teapot"})))),
    "nokey": (200, json.dumps(completion(json.dumps({"image_prompt": "a teapot"})))),
    "nochoices": (200, json.dumps({"error": "overloaded"})),
    "notjson": (200, "<html>proxy error</html>"),
    "error500": (500, json.dumps({"error": {"message": "boom"}})),
    "slow": (200, json.dumps(completion(json.dumps(GOOD)))),
}


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        length = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(length)
        mode = self.path.strip("/").split("/")[0]
        self.server.requests.append(
            {"path": self.path, "headers": dict(self.headers), "json": json.loads(body)})
        if mode == "slow":
            time.sleep(SLOW_S)
        status, payload = REPLIES.get(mode, (404, "{}"))
        data = payload.encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (the timeout test)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def llm_server():
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Handler)
    server.daemon_threads = True
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def make(server, mode: str, **kw) -> OpenAICompatEnhancer:
    base = f"http://127.0.0.1:{server.server_address[1]}/{mode}/v1"
    return OpenAICompatEnhancer(PromptEnhancerSettings(
        backend="openai", base_url=base, model="tiny-llm", **kw))


async def test_good_reply_is_used_and_request_is_json_mode(llm_server, monkeypatch):
    monkeypatch.setenv("SAM3D_TEST_LLM_KEY", "sk-test-123")
    enhancer = make(llm_server, "good", api_key_env="SAM3D_TEST_LLM_KEY")
    llm_server.requests.clear()
    out = await enhancer.enhance("  I want a red teapot please ")
    assert out.backend == "openai"
    assert out.image_prompt == GOOD["image_prompt"]
    assert out.segmentation_label == "red teapot"  # normalised: lower case
    (req,) = llm_server.requests
    assert req["path"] == "/good/v1/chat/completions"
    assert req["headers"]["Authorization"] == "Bearer sk-test-123"
    body = req["json"]
    assert body["model"] == "tiny-llm"
    assert body["response_format"] == {"type": "json_object"}
    assert body["messages"][0]["role"] == "system"
    assert "image_prompt" in body["messages"][0]["content"]
    assert "segmentation_label" in body["messages"][0]["content"]
    assert body["messages"][1] == {"role": "user", "content": "I want a red teapot please"}


async def test_no_authorization_header_without_key(llm_server, monkeypatch):
    monkeypatch.delenv("SAM3D_TEST_LLM_KEY", raising=False)
    enhancer = make(llm_server, "good", api_key_env="SAM3D_TEST_LLM_KEY")
    llm_server.requests.clear()
    assert (await enhancer.enhance("a teapot")).backend == "openai"
    assert "Authorization" not in llm_server.requests[0]["headers"]


@pytest.mark.parametrize("mode,label", [("fenced", "red teapot"), ("camel", "teapot")])
async def test_tolerated_reply_shapes(llm_server, mode, label):
    out = await make(llm_server, mode).enhance("a red teapot")
    assert out.backend == "openai"
    assert out.segmentation_label == label


@pytest.mark.parametrize("mode,reason", [
    ("badjson", "malformed reply: content is not JSON"),
    ("longlabel", "malformed reply: segmentation_label has 5 words"),
    ("nokey", "malformed reply: segmentation_label is missing"),
    ("nochoices", "malformed reply: no choices"),
    ("notjson", "malformed reply: response body is not JSON"),
    ("error500", "HTTP 500"),
])
async def test_bad_replies_fall_back_to_rules(llm_server, mode, reason):
    text = "a photo of a blue ceramic teapot on a table"
    out = await make(llm_server, mode).enhance(text)
    rules = await RulesEnhancer().enhance(text)
    assert out.backend.startswith("openai→rules (")
    assert reason in out.backend
    assert (out.image_prompt, out.segmentation_label) == (rules.image_prompt, rules.segmentation_label)


async def test_timeout_falls_back_within_the_timeout(llm_server):
    enhancer = make(llm_server, "slow", timeout_s=0.3)
    started = time.monotonic()
    out = await enhancer.enhance("a teapot")
    elapsed = time.monotonic() - started
    assert out.backend == "openai→rules (timed out after 0.3 s)"
    assert out.segmentation_label == "teapot"
    assert elapsed < SLOW_S - 1.0


async def test_unreachable_server_falls_back():
    port = free_port()  # nothing listens there
    enhancer = OpenAICompatEnhancer(PromptEnhancerSettings(
        backend="openai", base_url=f"http://127.0.0.1:{port}", model="m", timeout_s=2))
    out = await enhancer.enhance("a wooden chair")
    assert out.backend.startswith("openai→rules (unreachable: ")
    assert out.segmentation_label == "chair"


async def test_empty_prompt_skips_the_call(llm_server):
    llm_server.requests.clear()
    out = await make(llm_server, "good").enhance("   ")
    assert out.backend == "openai→rules (empty prompt)"
    assert llm_server.requests == []


@pytest.mark.parametrize("kw,missing", [
    ({}, ["prompt_enhancer.base_url", "prompt_enhancer.model"]),
    ({"base_url": "http://x/v1"}, ["prompt_enhancer.model"]),
    ({"model": "m"}, ["prompt_enhancer.base_url"]),
])
def test_missing_config_names_the_keys(kw, missing):
    with pytest.raises(ValueError) as err:
        OpenAICompatEnhancer(PromptEnhancerSettings(backend="openai", **kw))
    for key in missing:
        assert key in str(err.value)


def test_factory_builds_it():
    from deployments.prompt_enhancer import make_backend

    backend = make_backend(PromptEnhancerSettings(backend="openai", base_url="http://x", model="m"))
    assert isinstance(backend, OpenAICompatEnhancer)
    assert backend.name == "openai"


@pytest.mark.parametrize("base", ["http://h:8000", "http://h:8000/", "http://h:8000/v1",
                                  "http://h:8000/v1/", "http://h:8000/v1/chat/completions"])
def test_endpoint_url(base):
    assert chat_completions_url(base) == "http://h:8000/v1/chat/completions"
