"""Prompt enhancer: free text → an image prompt plus a short segmentation label."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ray import serve

from sam3d_common.settings import PromptEnhancerSettings


@dataclass(frozen=True)
class EnhancedPrompt:
    image_prompt: str
    segmentation_label: str
    backend: str = ""


class PromptEnhancerBackend(Protocol):
    name: str

    async def enhance(self, text: str) -> EnhancedPrompt: ...


def make_backend(settings: PromptEnhancerSettings) -> PromptEnhancerBackend:
    if settings.backend == "rules":
        from .rules import RulesEnhancer

        return RulesEnhancer()
    if settings.backend == "openai":
        from .openai_compat import OpenAICompatEnhancer

        return OpenAICompatEnhancer(settings)
    raise ValueError(f"unknown prompt enhancer backend {settings.backend!r}")


@serve.deployment(name="PromptEnhancer", max_ongoing_requests=16)
class PromptEnhancer:
    def __init__(self, settings: dict | None = None):
        self.backend = make_backend(PromptEnhancerSettings.model_validate(settings or {}))

    async def enhance(self, text: str) -> EnhancedPrompt:
        return await self.backend.enhance(text)

    def describe(self) -> dict:
        return {"backend": self.backend.name}
