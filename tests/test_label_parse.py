"""Parsing and repair of bad model output: fences, chatter, truncation, enums, missing lesions."""

from __future__ import annotations

import json

import pytest

from cxrctx.labeling.models import answer_schema
from cxrctx.labeling.parse import parse_lesion_answer
from cxrctx.llm.jsonutil import extract_json, schema_errors, strip_code_fences
from cxrctx.llm.task import AnswerError


def parse_answer(text, candidates, finish_reason="stop"):
    """(answers by lesion, None) or (None, reason)."""
    try:
        return parse_lesion_answer(text, candidates, finish_reason).root, None
    except AnswerError as e:
        return None, e.reason


E = {"reasoning": "r", "status": "positive", "location": "left"}


def test_fences_and_chatter_are_stripped():
    assert strip_code_fences('```json\n{"a": 1}\n```') == '{"a": 1}'
    assert strip_code_fences('```\n{"a": 1}') == '{"a": 1}'  # truncated fence
    assert extract_json('Sure! Here it is: {"a": {"b": 2}} Hope it helps.') == {"a": {"b": 2}}
    with pytest.raises(ValueError):
        extract_json("no json here")
    with pytest.raises(ValueError, match="duplicate"):
        extract_json('{"a": 1, "a": 2}')


def test_valid_answer_with_case_and_underscores():
    text = '```json\n{"Pleural_Effusion": {"reasoning": "x", "status": "Positive", "location": "LEFT"}}\n```'
    got, reason = parse_answer(text, ["pleural effusion"])
    assert reason is None and got is not None
    assert (
        got["pleural effusion"].status == "positive" and got["pleural effusion"].location == "left"
    )


def test_wrapped_answer_is_unwrapped():
    got, reason = parse_answer(json.dumps({"lesions": {"edema": E}}), ["edema"])
    assert reason is None and got and got["edema"].status == "positive"


@pytest.mark.parametrize(
    ("text", "finish", "expect"),
    [
        ('{"edema": {"reasoning": "x", "sta', "length", "truncated"),
        ("", "length", "truncated"),
        ("", "stop", "empty answer"),
        ("{not json", "stop", "invalid JSON"),
        ("[1, 2]", "stop", "no JSON object"),
        ('{"a": 1} ', "stop", "unknown lesion"),
        (
            json.dumps({"edema": {**E, "status": "uncertain"}}),
            "stop",
            "edema.status: Input should be",
        ),
        (json.dumps({"edema": {**E, "location": "upper"}}), "stop", "(got 'upper')"),
        (json.dumps({"edema": E, "lung cancer": E}), "stop", "unknown lesion"),
        (json.dumps({"edema": E}), "stop", "missing candidate lesion(s): mass"),
        (
            '{"edema": {"reasoning": "x", "status": "positive", "location": "left"}, "edema": {}}',
            "stop",
            "duplicate",
        ),
        (json.dumps({"edema": {**E, "severity": "mild"}}), "stop", "edema.severity: not asked"),
        (json.dumps({"edema": "positive"}), "stop", "edema: Input should be"),
    ],
)
def test_bad_answers_give_a_reason(text, finish, expect):
    got, reason = parse_answer(text, ["edema", "mass"] if "mass" in expect else ["edema"], finish)
    assert got is None
    assert reason is not None and expect in reason


def test_answers_for_lesions_not_asked_are_rejected_not_taken_as_positives():
    got, reason = parse_answer(json.dumps({"edema": E, "mass": E}), ["edema"])
    assert got is None and reason is not None
    assert "not asked: mass" in reason and "(asked: edema)" in reason


def test_overlong_reasoning_is_cut_not_failed():
    got, reason = parse_answer(json.dumps({"edema": {**E, "reasoning": "x" * 500}}), ["edema"])
    assert reason is None and got is not None and len(got["edema"].reasoning) == 120


def test_published_schema_is_generated_from_the_answer_model():
    from cxrctx.labeling.models import LesionAnswer

    entry = answer_schema(["edema"])["properties"]["edema"]
    fields = LesionAnswer.model_fields
    assert list(entry["properties"]) == list(fields)
    assert entry["properties"]["reasoning"]["maxLength"] == 120
    assert entry["additionalProperties"] is False and "$ref" not in json.dumps(entry)


def test_schema_errors_subset_validator():
    s = answer_schema(["edema", "mass"])
    assert schema_errors({"edema": E, "mass": E}, s) == []
    assert any("missing 'mass'" in e for e in schema_errors({"edema": E}, s))
    assert any("unexpected" in e for e in schema_errors({"edema": E, "mass": E, "x": E}, s))
    assert any(
        "not in" in e for e in schema_errors({"edema": {**E, "status": "maybe"}, "mass": E}, s)
    )
    assert any(
        "longer than" in e
        for e in schema_errors({"edema": {**E, "reasoning": "y" * 121}, "mass": E}, s)
    )


def test_request_schema_orders_reasoning_first_and_lesions_canonically():
    s = answer_schema(["pneumonia", "cardiomegaly"])
    assert list(s["properties"]) == ["cardiomegaly", "pneumonia"]
    assert s["required"] == ["cardiomegaly", "pneumonia"]
    assert list(s["properties"]["cardiomegaly"]["properties"]) == [
        "reasoning",
        "status",
        "location",
    ]
