"""The run-level pipeline settings and the prompt vocabularies: enums in the code, the same strings in the rows."""

from __future__ import annotations

import json

import pytest

from pixelperfect.pipeline.model.protocol import PROMPT_KINDS
from pixelperfect.pipeline.options import PROMPT_MODES, ProcessSettings, PromptKind, PromptMode


def test_the_stored_strings_are_unchanged() -> None:
    assert PROMPT_MODES == ("boxes", "points", "auto", "concept")
    assert PROMPT_KINDS == ("box", "point", "auto", "concept")
    assert PromptMode.concept.kind == PromptKind.concept
    for member in (*PromptMode, *PromptKind):
        assert member.name == member.value  # psycopg writes an enum by its name: it must be the stored string
        assert member == member.value and str(member) == member.value and f"{member}" == member.value
        assert json.dumps(member) == f'"{member.value}"'
    assert {m.kind for m in PromptMode} == set(PromptKind)
    assert (PromptMode.boxes.kind, PromptMode.points.kind, PromptMode.auto.kind) == (
        PromptKind.box,
        PromptKind.point,
        PromptKind.auto,
    )


def test_a_stored_prompt_mode_becomes_the_enum_and_a_bad_one_is_named() -> None:
    settings = ProcessSettings(prompt_mode="points")  # type: ignore[arg-type]  # as read from runs.prompt_mode
    assert settings.prompt_mode is PromptMode.points
    assert ProcessSettings().prompt_mode is PromptMode.boxes
    with pytest.raises(ValueError, match="prompt mode must be one of boxes, points, auto, concept, not 'box'"):
        ProcessSettings(prompt_mode="box")  # type: ignore[arg-type]  # the other vocabulary
