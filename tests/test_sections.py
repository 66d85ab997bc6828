"""Report sectioning: synonyms, typos, addenda, FINDINGS AND IMPRESSION, whitespace, `//`."""

from __future__ import annotations

import pytest

from cxrctx.mimic.sections import canonical_header, has_temporal_reference, parse_report

BASIC = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___ year old woman with ?pleural effusion  // ?pleural effusion

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  ___

 FINDINGS:

 Cardiac size cannot be evaluated.  Large left pleural effusion is new.  Small
 right effusion is new.  The upper lungs are clear.

 IMPRESSION:

 Large left pleural effusion
"""


def test_basic_report_sections_and_unwrapping():
    s = parse_report(BASIC)
    assert s.examination == "CHEST (PA AND LAT)"
    assert s.indication == "___ year old woman with ?pleural effusion // ?pleural effusion"
    assert s.reason_for_exam == "?pleural effusion"
    assert s.technique == "Chest PA and lateral"
    assert s.comparison == "___"  # PHI blank kept as is
    # the 79-column wrap is undone, runs of spaces collapse
    assert s.findings == (
        "Cardiac size cannot be evaluated. Large left pleural effusion is new. Small right effusion is new. The upper lungs are clear."
    )
    assert s.impression == "Large left pleural effusion"
    assert s.history is None and s.addendum is None


@pytest.mark.parametrize(
    ("header", "canonical"),
    [
        ("IMPRESSION", "impression"),
        ("IMPRESSON", "impression"),
        ("IMPRESION", "impression"),
        ("FINDNGS", "findings"),
        ("FINDING", "findings"),
        ("COMPARISION", "comparison"),
        ("COMPARISONS", "comparison"),
        ("CLINICAL HISTORY", "history"),
        ("CLINICAL INFORMATION", "history"),
        ("REASON FOR EXAMINATION", "indication"),
        ("REASON FOR EXAM", "indication"),
        ("CLINICAL INDICATION", "indication"),
        ("EXAM", "examination"),
        ("TYPE OF EXAMINATION", "examination"),
        ("CONCLUSION", "impression"),
        ("CHEST, TWO VIEWS", "findings"),
        ("PORTABLE AP CHEST", "findings"),
        ("TECHINQUE", "technique"),
        ("NOTE", None),
        ("PA", None),
    ],
)
def test_header_synonyms_and_typos(header, canonical):
    assert canonical_header(header) == canonical


def test_synonym_headers_in_a_report():
    text = """                                 FINAL REPORT
 REASON FOR EXAMINATION:  Cough.

 CLINICAL HISTORY:  Smoker.

 COMPARISONS:  None.

 FINDNGS:  Lungs are clear.

 IMPRESSON:  Normal chest.
"""
    s = parse_report(text)
    assert (s.indication, s.history, s.comparison, s.findings, s.impression) == (
        "Cough.",
        "Smoker.",
        "None.",
        "Lungs are clear.",
        "Normal chest.",
    )
    assert s.reason_for_exam is None  # no '//' in the indication


def test_findings_and_impression_fills_both():
    text = " INDICATION:  Fever.\n\n FINDINGS AND IMPRESSION:  No pneumonia.  Heart normal.\n"
    s = parse_report(text)
    assert s.findings == "No pneumonia. Heart normal."
    assert s.impression == "No pneumonia. Heart normal."
    s2 = parse_report(" FINDINGS/IMPRESSION:  Clear lungs.\n")
    assert s2.findings == s2.impression == "Clear lungs."


def test_explicit_impression_wins_over_combined_section():
    text = " FINDINGS AND IMPRESSION:  Clear lungs.\n\n IMPRESSION:  Normal.\n"
    s = parse_report(text)
    assert s.findings == "Clear lungs."
    assert s.impression == "Normal."


def test_addendum_before_underscore_line_is_not_the_body():
    text = """                                 FINAL ADDENDUM
 ADDENDUM:  The right effusion was discussed with Dr. ___ at 3:15 PM.

 ______________________________________________________________________________
                                 FINAL REPORT
 INDICATION:  Dyspnea.

 FINDINGS:  Small right effusion.

 IMPRESSION:  Small right effusion.
"""
    s = parse_report(text)
    assert s.addendum == "The right effusion was discussed with Dr. ___ at 3:15 PM."
    assert s.indication == "Dyspnea."
    assert s.findings == "Small right effusion."
    assert "discussed" not in (s.impression or "")


def test_addendum_section_inside_body_kept_apart():
    text = " FINDINGS:  Clear.\n\n IMPRESSION:  Normal.\n\n ADDENDUM:  Called to Dr. ___.\n"
    s = parse_report(text)
    assert s.impression == "Normal."
    assert s.addendum == "Called to Dr. ___."


def test_wet_read_and_notification_ignored():
    text = """ WET READ: ___ ___ 3:15 PM  no ptx
                                 FINAL REPORT
 FINDINGS:  No pneumothorax.

 IMPRESSION:  No pneumothorax.

 NOTIFICATION:  Findings discussed with Dr. ___ by telephone.
"""
    s = parse_report(text)
    assert s.findings == "No pneumothorax."
    assert s.impression == "No pneumothorax."


def test_inline_upper_case_label_is_not_a_section():
    text = " FINDINGS:  Clear lungs.\n NOTE: ET tube 4 cm above carina.\n\n IMPRESSION:  Tube ok.\n"
    s = parse_report(text)
    assert s.findings == "Clear lungs. NOTE: ET tube 4 cm above carina."


def test_missing_sections_are_none_and_empty_sections_dropped():
    s = parse_report(" INDICATION:  Pain.\n\n FINDINGS:\n\n IMPRESSION:  Normal.\n")
    assert s.findings is None
    assert s.impression == "Normal."
    s2 = parse_report("Some text without any header at all.\n")
    assert s2.findings is None and s2.impression is None


def test_crlf_and_reason_for_exam():
    s = parse_report(
        " INDICATION:  ___M with sob  //  r/o chf \r\n\r\n IMPRESSION:  Mild edema.\r\n"
    )
    assert s.indication == "___M with sob // r/o chf"
    assert s.reason_for_exam == "r/o chf"
    assert s.impression == "Mild edema."


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Unchanged small left effusion.", True),
        ("Compared to the prior study, the effusion is larger.", True),
        ("Interval increase in edema.", True),
        ("New consolidation since the prior exam.", True),
        ("Left basilar opacity is again seen.", True),
        ("Redemonstration of a right upper lobe nodule.", True),
        ("Persistent cardiomegaly.", True),
        ("Pulmonary edema has improved.", True),
        ("Stable appearance of the chest.", True),
        ("No prior studies for comparison. Lungs are clear.", False),
        ("No previous images available. Small effusion.", False),
        ("There is no pneumothorax. Heart size is normal.", False),
        ("The patient is hemodynamically stable per history.", False),
    ],
)
def test_temporal_language(text, expected):
    assert has_temporal_reference(text) is expected


def test_temporal_language_any_text():
    assert has_temporal_reference(None, "Clear lungs.", "Unchanged heart.")
    assert not has_temporal_reference(None, "")


def test_one_paragraph_sections_end_at_blank_line():
    text = " INDICATION:  Cough.\n\n Free text without a header.\n\n TECHNIQUE: \n\n More free text.\n\n COMPARISON:\n ___\n"
    s = parse_report(text)
    assert s.indication == "Cough."
    assert s.technique is None  # header directly followed by a blank line: empty
    assert s.comparison == "___"  # content may start on the next line
    assert s.findings is None and s.impression is None


LAST_PARAGRAPH = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PORTABLE AP)

 INDICATION:  ___ year old man with cough  // ?pneumonia

 COMPARISON:  ___

 Portable AP chest radiograph demonstrates no focal consolidation.
 No pneumothorax.

 Heart size is normal.
"""


def test_last_paragraph_when_neither_findings_nor_impression():
    s = parse_report(LAST_PARAGRAPH)
    assert s.findings is None and s.impression is None
    assert s.comparison == "___"  # the section's first paragraph stays with its header
    assert s.last_paragraph == (
        "Portable AP chest radiograph demonstrates no focal consolidation. No pneumothorax. "
        "Heart size is normal."
    )


def test_last_paragraph_whole_body_without_headers():
    s = parse_report("            FINAL REPORT\n Lungs are clear.\n No effusion.\n")
    assert s.last_paragraph == "Lungs are clear. No effusion."
    assert s.examination is None and s.indication is None


def test_last_paragraph_none_when_findings_or_impression_exist():
    assert parse_report(BASIC).last_paragraph is None
    s = parse_report(LAST_PARAGRAPH.replace(" COMPARISON:  ___", " IMPRESSION:  ___"))
    assert s.impression is not None and s.last_paragraph is None


def test_last_paragraph_none_when_last_section_has_one_paragraph():
    s = parse_report(" FINAL REPORT\n INDICATION:  cough\n\n COMPARISON:  none\n")
    assert s.comparison == "none" and s.last_paragraph is None
