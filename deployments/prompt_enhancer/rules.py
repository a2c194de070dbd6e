"""Embedded prompt enhancer: deterministic rules, no model.

Limits: it understands English noun phrases only roughly. It strips filler
("a photo of", "I want", "please make"), keeps the last noun-like phrase of at most
three words as the segmentation label, and wraps the subject in the studio-shot phrasing
that image models turn into single, centred, segmentable objects.
"""
from __future__ import annotations

import re

from . import EnhancedPrompt

_FILLER = re.compile(
    r"\b(please|can you|could you|i want|i'd like|i would like|make( me)?|create|generate|"
    r"render|give me|show me|build|model of|3d( model)?( of)?|a photo of|an image of|"
    r"a picture of|photo of|image of|picture of)\b",
    re.IGNORECASE,
)
_ARTICLES = {"a", "an", "the", "some", "one", "single", "my", "your", "this", "that"}
_STOP = {"with", "on", "in", "at", "from", "for", "and", "or", "of", "by", "near", "under",
         "over", "next", "to", "beside", "behind", "against", "made", "wearing", "holding"}
_ADJECTIVE_SUFFIXES = ("ful", "ous", "ive", "able", "ible", "ish", "less", "ic")
_COLOURS = {"red", "green", "blue", "yellow", "black", "white", "orange", "purple", "pink",
            "brown", "grey", "gray", "golden", "silver", "wooden", "metal", "metallic", "old",
            "new", "small", "big", "large", "tiny", "huge", "cute", "shiny", "vintage", "modern",
            "little", "tall", "short", "round", "retro", "fancy", "beautiful"}
MAX_PROMPT_CHARS = 2000


def _subject(text: str) -> str:
    cleaned = _FILLER.sub(" ", text)
    cleaned = re.sub(r"[^\w\s'-]", " ", cleaned)
    return " ".join(cleaned.split())


def segmentation_label(text: str) -> str:
    """The object's head noun phrase: up to three words before the first preposition."""
    words = [w.lower() for w in _subject(text).split()]
    while words and words[0] in _ARTICLES:
        words.pop(0)
    head: list[str] = []
    for w in words:
        if w in _STOP:
            break
        if w not in _ARTICLES:
            head.append(w)
    # Descriptive words say little about the object's identity; keep the noun end.
    core = [w for w in head if w not in _COLOURS and not w.endswith(_ADJECTIVE_SUFFIXES)]
    label = (core or head)[-3:]
    return " ".join(label) if label else "object"


class RulesEnhancer:
    name = "rules"

    async def enhance(self, text: str) -> EnhancedPrompt:
        return self.enhance_sync(text)

    def enhance_sync(self, text: str) -> EnhancedPrompt:
        text = (text or "").strip()[:MAX_PROMPT_CHARS]
        words = _subject(text).split()
        while words and words[0].lower() in _ARTICLES:
            words.pop(0)
        subject = " ".join(words) or "object"
        image_prompt = (
            f"a single {subject}, centred, whole object in view, studio product photo, "
            "soft even lighting, plain neutral light-grey background, no other objects, "
            "sharp focus, three-quarter view"
        )
        return EnhancedPrompt(image_prompt=image_prompt,
                              segmentation_label=segmentation_label(text), backend=self.name)
