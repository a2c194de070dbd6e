"""Prompt enhancer over any OpenAI-compatible chat completions endpoint (vLLM, Ray Serve LLM,
a hosted API), called with httpx in JSON mode.

The model is asked for a JSON object with `image_prompt` (one well-lit, centred object on a
clean neutral background: what segmentation and single-view reconstruction need) and
`segmentation_label` (a 1-3 word noun phrase for the segmenter). The reply is validated; when
the server is unreachable, slow, answers with an error status, or the reply is not such an
object, the request still succeeds through the rules enhancer, and the returned
`EnhancedPrompt.backend` says so: ``"openai→rules (<reason>)"``.

Configuration: `prompt_enhancer.base_url` (with or without a trailing `/v1`), `.model`,
`.timeout_s`, and `.api_key_env`, the *name* of the environment variable holding the API key
(unset or empty: no Authorization header, as a local vLLM needs none).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re

import httpx

from sam3d_common.settings import PromptEnhancerSettings

from . import EnhancedPrompt
from .rules import MAX_PROMPT_CHARS, RulesEnhancer

log = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You turn a user's request for a 3D object into two things, answered as one JSON object "
    'with exactly these keys: {"image_prompt": string, "segmentation_label": string}.\n'
    "image_prompt: a prompt for a text-to-image model that shows exactly ONE object: the "
    "whole object, centred, well lit with soft even studio lighting, on a clean plain neutral "
    "background, no other objects, no people unless the object is a person, no text, sharp "
    "focus, three-quarter view. Keep the user's details (colour, material, style). At most 60 "
    "words.\n"
    "segmentation_label: the object's name as a 1 to 3 word noun phrase (e.g. \"chair\", "
    "\"red sports car\", \"teapot\"), lower case, no punctuation.\n"
    "Answer with the JSON object only."
)
MAX_IMAGE_PROMPT_CHARS = 1000
MAX_LABEL_WORDS = 3
_ARTICLES = {"a", "an", "the"}
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL | re.IGNORECASE)


class MalformedReply(ValueError):
    """The server answered, but not with the JSON object we asked for."""


def chat_completions_url(base_url: str) -> str:
    """`http://h:8000`, `http://h:8000/v1` and the full endpoint URL all name the same endpoint."""
    url = base_url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    if url.endswith("/v1"):
        return url + "/chat/completions"
    return url + "/v1/chat/completions"


def _normalise_label(label: str) -> str:
    words = re.sub(r"[^\w\s'-]", " ", label).lower().split()
    while words and words[0] in _ARTICLES:
        words.pop(0)
    return " ".join(words)


def parse_reply(body: object) -> tuple[str, str]:
    """(image_prompt, segmentation_label) from a chat completions response body, or MalformedReply."""
    try:
        content = body["choices"][0]["message"]["content"]  # type: ignore[index]
    except (KeyError, IndexError, TypeError):
        raise MalformedReply("no choices[0].message.content in the response") from None
    if not isinstance(content, str):
        raise MalformedReply("message content is not a string")
    text = content.strip()
    fenced = _FENCE.match(text)
    if fenced:  # some models wrap JSON mode output in a code fence anyway
        text = fenced.group(1)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MalformedReply(f"content is not JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise MalformedReply("content is not a JSON object")
    # The seed app's model answered in camelCase; accept both spellings.
    prompt = obj.get("image_prompt", obj.get("imagePrompt"))
    label = obj.get("segmentation_label", obj.get("segmentationPrompt"))
    if not isinstance(prompt, str) or not prompt.strip():
        raise MalformedReply("image_prompt is missing or empty")
    if not isinstance(label, str):
        raise MalformedReply("segmentation_label is missing")
    prompt = " ".join(prompt.split())
    if len(prompt) > MAX_IMAGE_PROMPT_CHARS:
        raise MalformedReply(f"image_prompt is longer than {MAX_IMAGE_PROMPT_CHARS} characters")
    label = _normalise_label(label)
    n_words = len(label.split())
    if not 1 <= n_words <= MAX_LABEL_WORDS:
        raise MalformedReply(f"segmentation_label has {n_words} words, not 1-{MAX_LABEL_WORDS}")
    return prompt, label


class OpenAICompatEnhancer:
    name = "openai"

    def __init__(self, settings: PromptEnhancerSettings):
        missing = [f"prompt_enhancer.{key}" for key in ("base_url", "model")
                   if not getattr(settings, key)]
        if missing:
            raise ValueError(
                "prompt_enhancer.backend is 'openai' but " + " and ".join(missing)
                + (" is" if len(missing) == 1 else " are") + " not set; set them in the Serve "
                "config args (e.g. base_url: http://llm:8000/v1, model: <served model name>) "
                "or use backend: rules"
            )
        self.settings = settings
        self.url = chat_completions_url(settings.base_url)
        self.model = settings.model
        self.timeout_s = settings.timeout_s
        api_key = os.environ.get(settings.api_key_env, "").strip()
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.fallback = RulesEnhancer()

    def request_body(self, text: str) -> dict:
        return {
            "model": self.model,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": text},
            ],
            "response_format": {"type": "json_object"},
            "temperature": 0.2,
            "max_tokens": 400,
        }

    async def enhance(self, text: str) -> EnhancedPrompt:
        text = (text or "").strip()[:MAX_PROMPT_CHARS]
        if not text:
            return await self._fall_back(text, "empty prompt")
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s) as client:
                response = await client.post(self.url, json=self.request_body(text),
                                             headers=self.headers)
            response.raise_for_status()
            prompt, label = parse_reply(response.json())
        except httpx.TimeoutException:
            return await self._fall_back(text, f"timed out after {self.timeout_s:g} s")
        except httpx.HTTPStatusError as exc:
            return await self._fall_back(text, f"HTTP {exc.response.status_code}")
        except httpx.TransportError as exc:
            return await self._fall_back(text, f"unreachable: {type(exc).__name__}")
        except json.JSONDecodeError:
            return await self._fall_back(text, "malformed reply: response body is not JSON")
        except MalformedReply as exc:
            return await self._fall_back(text, f"malformed reply: {exc}")
        return EnhancedPrompt(image_prompt=prompt, segmentation_label=label, backend=self.name)

    async def _fall_back(self, text: str, reason: str) -> EnhancedPrompt:
        log.warning("prompt enhancer at %s fell back to rules: %s", self.url, reason)
        result = await self.fallback.enhance(text)
        return dataclasses.replace(result, backend=f"{self.name}→{result.backend} ({reason})")
