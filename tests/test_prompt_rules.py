import asyncio

import pytest

from deployments.prompt_enhancer.rules import RulesEnhancer


@pytest.mark.parametrize("text,label", [
    ("a red vintage car on a road", "car"),
    ("Please make me a 3D model of a cute wooden chair with armrests", "chair"),
    ("an astronaut helmet", "astronaut helmet"),
    ("coffee mug", "coffee mug"),
    ("", "object"),
])
def test_label_and_prompt(text, label):
    out = asyncio.run(RulesEnhancer().enhance(text))
    assert out.segmentation_label == label
    assert "background" in out.image_prompt and "single" in out.image_prompt
    assert "a a " not in out.image_prompt and "single a " not in out.image_prompt


def test_deterministic():
    e = RulesEnhancer()
    assert e.enhance_sync("a blue teapot") == e.enhance_sync("a blue teapot")
