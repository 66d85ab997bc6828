"""The shared lexicon: sentence splitting, mentions, negation / uncertainty scope, laterality.

Every sentence below is hand-written for the rule it checks (never synthetic-generator text).
"""

from __future__ import annotations

import hashlib

import pytest

from cxrctx import vocab
from cxrctx.errors import CxrctxError
from cxrctx.resources import read_bytes
from cxrctx.vocab import (
    affirmed_lesions,
    compile_lexicon,
    find_mentions,
    hedged,
    is_negative,
    laterality,
    lexicon,
    mentioned_lesions,
    negated,
    read_mentions,
    split_clauses,
    split_sentences,
)


def reading(text: str) -> dict[str, tuple[str, str | None, tuple[str, ...]]]:
    """lesion → (status, side, reasons) of its first mention in `text`."""
    out: dict[str, tuple[str, str | None, tuple[str, ...]]] = {}
    for r in read_mentions(text):
        out.setdefault(r.lesion, (r.status, r.side, r.reasons))
    return out


def status(text: str) -> dict[str, str]:
    return {k: v[0] for k, v in reading(text).items()}


def test_lexicon_is_versioned_and_hashed():
    lex = lexicon()
    raw = read_bytes("prompts", "label_lesions", "lexicon_v1.json")
    assert lex.version == vocab.LEXICON_VERSION == 1
    assert lex.sha256 == hashlib.sha256(raw).hexdigest()


def test_bad_lexicon_is_a_one_line_error():
    with pytest.raises(CxrctxError, match=r"custom\.json: lesions must be exactly the 14"):
        compile_lexicon(b'{"lesions": {}}', "custom.json")
    raw = read_bytes("prompts", "label_lesions", "lexicon_v1.json").replace(
        b'"cardiomegaly",', b'"cardio(megaly",', 1
    )
    with pytest.raises(CxrctxError, match="invalid lexicon"):
        compile_lexicon(raw, "broken.json")


def test_split_sentences_offsets():
    text = "FINDINGS: Heart is normal.  A 2.5 cm nodule\nin the left apex.\n\nIMPRESSION: Nodule"
    spans = split_sentences(text)
    assert [text[a:b] for a, b in spans] == [
        "FINDINGS: Heart is normal.",
        "A 2.5 cm nodule\nin the left apex.",  # no break at a decimal or a single newline
        "IMPRESSION: Nodule",
    ]
    assert split_sentences("   ") == []


def test_split_clauses_at_terminators():
    text = "No effusion but there is atelectasis; heart normal"
    assert [text[a:b] for a, b in split_clauses(text)] == [
        "No effusion",
        "atelectasis",
        "heart normal",
    ]


def test_mentions_keep_offsets_into_the_original_text():
    text = "İ Left PLEURAL EFFUSION and Cardiomegaly."  # 'İ'.lower() has two characters
    ms = find_mentions(text)
    assert [(m.lesion, text[m.start : m.end]) for m in ms] == [
        ("pleural effusion", "PLEURAL EFFUSION"),
        ("cardiomegaly", "Cardiomegaly"),
    ]
    assert mentioned_lesions(text) == ["cardiomegaly", "pleural effusion"]  # LESIONS order


def test_look_alikes_are_not_mentions():
    assert (
        mentioned_lesions("Small pericardial effusion. Subcutaneous emphysema. No mass effect.")
        == []
    )


def test_negation_list_scope():
    assert status("No effusion, pneumothorax or consolidation.") == {
        "pleural effusion": "negated",
        "pneumothorax": "negated",
        "consolidation": "negated",
    }
    # a list without a conjunction is still a list
    assert set(status("No focal consolidation, pleural effusion, pneumothorax.").values()) == {
        "negated"
    }
    assert status("Lungs are clear without infiltrate or effusion.") == {
        "infiltration": "negated",
        "pleural effusion": "negated",
    }


def test_comma_with_a_presence_word_ends_the_scope_and_says_so():
    r = reading("No pneumothorax, mild cardiomegaly.")
    assert r["pneumothorax"][0] == "negated"
    assert r["cardiomegaly"][0] == "affirmed" and "scope_unsettled" in r["cardiomegaly"][2]


def test_terminators_end_negation():
    assert status("No pleural effusion but there is left lower lobe atelectasis.") == {
        "pleural effusion": "negated",
        "atelectasis": "affirmed",
    }
    assert status("No pneumothorax; small left effusion.") == {
        "pneumothorax": "negated",
        "pleural effusion": "affirmed",
    }


def test_post_negation():
    assert status("Pneumothorax is not seen.") == {"pneumothorax": "negated"}
    assert status("The left effusion has resolved.") == {"pleural effusion": "negated"}
    assert status("Consolidation is no longer visualized.") == {"consolidation": "negated"}
    # a negation after the mention in another clause does not reach it
    assert status("Atelectasis persists, however edema is not seen.") == {
        "atelectasis": "affirmed",
        "edema": "negated",
    }


def test_negation_inside_the_mention():
    assert status("The heart is not enlarged.") == {"cardiomegaly": "negated"}
    assert status("The heart is mildly enlarged.") == {"cardiomegaly": "affirmed"}


def test_double_negation_is_uncertain_hence_positive():
    for text in (
        "Pneumonia cannot be excluded.",
        "Cannot exclude early pneumonia.",
        "Pneumonia is not entirely excluded.",
        "Pneumonia can not be ruled out.",
    ):
        r = reading(text)["pneumonia"]
        assert r[0] == "hedged" and "hedged" in r[2], text


def test_hedges():
    assert reading("Possible small left pleural effusion.")["pleural effusion"] == (
        "hedged",
        "left",
        ("hedged",),
    )
    assert status("Opacity may represent atelectasis.") == {"atelectasis": "hedged"}
    assert status("Atelectasis versus pneumonia.") == {
        "atelectasis": "hedged",
        "pneumonia": "hedged",
    }
    # a negation that reaches the mention wins over the hedge inside its scope
    assert status("No focal consolidation to suggest pneumonia.") == {
        "consolidation": "negated",
        "pneumonia": "negated",
    }


def test_pseudo_negation_is_not_negation():
    assert status("No change in the small left effusion.") == {"pleural effusion": "affirmed"}
    assert status("Without interval change, moderate cardiomegaly.") == {"cardiomegaly": "affirmed"}


def test_borderline_heart_size_rule():
    r = reading("Heart size is at the upper limits of normal.")["cardiomegaly"]
    assert r[0] == "negated" and "borderline" in r[2]
    r = reading("Top normal heart size.")["cardiomegaly"]
    assert r[0] == "negated" and "borderline" in r[2]
    for text in (
        "Borderline cardiomegaly.",
        "The heart is borderline in size.",
        "Heart size is upper limits normal or mildly enlarged.",
    ):
        r = reading(text)["cardiomegaly"]
        assert r[0] == "affirmed" and "borderline" in r[2], text


def test_laterality_within_and_across_clauses():
    r = reading("Small right pleural effusion and left basilar atelectasis.")
    assert r["pleural effusion"][1] == "right" and r["atelectasis"][1] == "left"
    assert (
        reading("Right lower lobe and left lower lobe atelectasis.")["atelectasis"][1]
        == "bilateral"
    )
    assert (
        reading("Opacity in the left lower lobe, likely atelectasis.")["atelectasis"][1] == "left"
    )
    r = reading("Consolidation and atelectasis in the right lung base.")
    assert r["consolidation"][1] == r["atelectasis"][1] == "right"
    assert reading("Bibasilar atelectasis.")["atelectasis"][1] == "bilateral"
    assert reading("Atelectasis in the lung bases.")["atelectasis"][1] == "bilateral"
    assert reading("Patchy atelectasis.")["atelectasis"][1] is None
    assert reading("Left-sided cardiomegaly.")["cardiomegaly"][1] is None  # midline lesion
    assert laterality("both lungs") == "bilateral" and laterality("the RIGHT base") == "right"
    assert laterality("left and right") == "bilateral" and laterality("the base") is None


def test_drop_in_helpers():
    text = "No pneumothorax. Possible right effusion. Left lower lobe atelectasis."
    assert affirmed_lesions(text) == {"pleural effusion": "right", "atelectasis": "left"}
    i = text.index("pneumothorax")
    assert negated(text, i, i + len("pneumothorax")) and not hedged(text, i, i + 12)
    j = text.index("effusion")
    assert hedged(text, j, j + 8) and not negated(text, j, j + 8)
    assert is_negative("No pneumothorax.") and is_negative("The lungs are clear.")
    assert is_negative("Pneumothorax is not seen.")
    assert not is_negative("Left lower lobe atelectasis.")


def test_model_literals_spell_the_shared_vocabulary():
    """pydantic needs literal types; they must list exactly the shared facts, in order."""
    from typing import get_args

    from cxrctx import models
    from cxrctx.vocab import LESIONS, LOCATIONS

    assert get_args(models.Lesion) == LESIONS
    assert get_args(models.Location) == LOCATIONS
    assert get_args(models.Status) == ("positive", "negative")
