"""Chat claims come from the case: composed replies never contradict themselves, each other
or the report; the LM's sentences are vetted before they are shown and nothing shown is
withdrawn; a dermoscopic report gives no size in mm and no body site; the claim reader
catches the contradictions users saw."""
import pytest

from dermvlm.case import Case
from dermvlm.consistency import (read_claims, report_contradictions, self_contradictions,
                                 turn_contradictions)
from dermvlm.ontology import CONDITIONS
from dermvlm.replies import composed, next_step, stream_vetted, turn_kind, vetted
from dermvlm.report import NOT_ASSESSABLE, LesionReport, render_report_text

LABELS = [c.name for c in CONDITIONS]
QUESTIONS = ("Is this lesion benign or malignant?", "What is the most likely diagnosis?",
             "What else could it be?", "How is it different from melanoma?",
             "Should I worry about it?", "What should I do, and how soon?",
             "Why do you think so?", "What should I watch for?",
             "Could it be seborrhoeic keratosis?")
DERMOSCOPIC = {"lesion_type": "macule", "colours": ["brown"], "modality": "dermoscopic"}


def make_case(top, second, threshold=None, findings=DERMOSCOPIC):
    probs = [0.01] * len(LABELS)
    probs[LABELS.index(top)], probs[LABELS.index(second)] = 0.5, 0.3
    total = sum(probs)
    return Case.from_probabilities([p / total for p in probs], LABELS, None, threshold, 3,
                                   findings=findings)


CASES = [make_case("melanocytic nevus", "melanoma"),
         make_case("melanocytic nevus", "melanoma", threshold=0.2),     # raised
         make_case("basal cell carcinoma", "melanocytic nevus"),
         make_case("melanoma", "melanocytic nevus"),
         make_case("actinic keratosis", "seborrhoeic keratosis")]


@pytest.mark.parametrize("message,kind", [
    ("Is this lesion benign or malignant?", "malignancy"), ("Is it cancer?", "malignancy"),
    ("How is it different from melanoma?", "compare"), ("Could this be a nevus?", "compare"),
    ("What should I do, and how soon?", "advice"), ("What else could it be?", "differential"),
    ("Which phone should I buy?", "off_topic"),
    ("How many mg of ibuprofen should I take?", "dosage")])
def test_turn_kinds(message, kind):
    assert turn_kind(message) == kind


@pytest.mark.parametrize("case", CASES)
def test_composed_replies_agree_with_themselves_each_other_and_the_report(case):
    claims = []
    for question in QUESTIONS:
        reply = composed(turn_kind(question), case, question)
        assert reply and "not a diagnosis" in reply
        claims.append(read_claims(reply))
        assert self_contradictions(claims[-1]) == [], reply
    assert [w for i, b in enumerate(claims) for a in claims[:i]
            for w in turn_contradictions(a, b)] == []
    report = report_for(case)
    assert [w for c in claims for w in report_contradictions(c, report)] == []
    malignancy = claims[0]
    assert (malignancy.verdict != "benign" or bool(malignancy.not_excluded)) == \
        (case.concern != "low")


def report_for(case):
    from dermvlm.vlm.infer import _hold_to_case
    fields = {"elementary_lesions": ["macule"], "colours": ["brown"],
              "border_regularity": "regular", "border_definition": "well-defined",
              "shape": "round", "size": "small", "size_mm_estimate": 4.0, "count": "single",
              "distribution": "solitary", "surface_features": ["smooth"],
              "secondary_changes": ["none"], "body_site": "back",
              "image_quality": "good", "malignancy_concern": "low",
              "suggested_next_step": "reassurance and routine monitoring",
              "differential": [{"diagnosis": n, "likelihood": round(p, 4)}
                               for n, p in case.differential]}
    _hold_to_case(fields, case)
    return LesionReport.model_validate(fields)


def test_a_report_gives_no_size_in_mm_and_a_dermoscopic_one_no_site():
    report = report_for(CASES[0])
    assert report.size == report.body_site == NOT_ASSESSABLE
    assert report.size_mm_estimate is None and report.modality == "dermoscopic"
    assert "mm" not in render_report_text(report)
    clinical_case = make_case("melanocytic nevus", "melanoma",
                              findings={**DERMOSCOPIC, "modality": "clinical"})
    clinical = report_for(clinical_case)       # a phone photo: no scale, but a body around it
    assert clinical.size == NOT_ASSESSABLE and clinical.size_mm_estimate is None
    assert clinical.body_site == "back" and clinical.modality == "clinical"
    assert "mm" not in render_report_text(clinical)
    assert "site: back (no scale in the image)" in render_report_text(clinical)
    assert "(no scale or body in the image)" in render_report_text(report)
    said = vetted("It is 6 mm across. It sits on the back.", clinical_case, "describe")
    assert "6 mm" not in said and "on the back" in said and "no scale" in said
    # nothing in an image gives the patient's age or sex (HAM captions taught the LM to say it)
    said = vetted("The patient is a 60-year-old man; the lesion is on the lower extremity. "
                  "It shows a brown macule.", clinical_case, "describe")
    assert "60" not in said and " man" not in said and "brown macule" in said
    said = vetted("It shows a brown macule on the lower extremity.", CASES[0], "describe")
    assert "extremity" not in said
    assert report_for(CASES[3]).suggested_next_step == next_step(CASES[3]) == \
        "urgent referral for biopsy"


def test_the_reader_catches_what_users_saw():
    for text in ("Benign (basal cell carcinoma): a malignant lesion.",
                 "Benign (squamous cell carcinoma is a malignant skin cancer, so please see a "
                 "dermatologist urgently)"):
        assert self_contradictions(read_claims(text)), text
    assert turn_contradictions(read_claims("It looks benign."),
                               read_claims("It may be malignant."))
    urgent = read_claims("Please see a dermatologist urgently.")
    assert report_contradictions(urgent, report_for(CASES[2]))     # report: within weeks
    # the report says border regular, well-defined, surface smooth
    seen = read_claims("This is a patch lesion, with an irregular, ill-defined border and a "
                       "scaly surface.")
    assert seen.findings == {"border_regularity": "irregular",
                             "border_definition": "ill-defined", "surface": ["scaly"]}
    assert len(report_contradictions(seen, report_for(CASES[0]))) == 3
    agreeing = read_claims("Its border is regular and well-defined. The surface is smooth.")
    assert report_contradictions(agreeing, report_for(CASES[0])) == []
    for said in ("Regular follow-up is reasonable.", "There is no scale in the photo.",
                 "Watch for change: growth or an irregular border."):
        assert read_claims(said).findings == {}, said


def test_lm_sentences_are_shown_only_once_checked_and_never_withdrawn():
    case = CASES[1]           # nevus first, melanoma not excluded
    pieces = ["It shows a brown ", "macule. It is ", "6 mm across on the back. ",
              "This is squamous cell carcinoma. It looks ", "harmless. It has an even colour."]
    shown = list(stream_vetted(iter(pieces), case, "describe"))
    for before, after in zip(shown, shown[1:]):
        assert after.startswith(before)
    final = shown[-1]
    assert "brown macule" in final and "even colour" in final
    assert "squamous" not in final and "harmless" not in final and "6 mm" not in final
    # a border or surface the case does not see (the report words them) is not stated
    said = vetted("It is a brown macule. It has an irregular, ill-defined border. Its surface "
                  "is scaly.", case, "describe")
    assert "brown macule" in said and "border" not in said and "scaly" not in said
    assert "cannot be judged" in final
    # nothing of the LM's holds: a short reply from the case, not an empty one
    assert vetted("This is psoriasis.", case, "other").startswith("The image analysis ranks")


REALDATA = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared/realdata"


@pytest.mark.skipif(not (REALDATA / "isic9/Test").is_dir(), reason="../shared/realdata not here")
def test_the_real_image_chat_evaluation_counts_contradictions_on_a_small_sample(tmp_path):
    import json

    from eval.chat import main
    out = tmp_path / "chat.json"
    assert main(["--real", str(REALDATA / "isic9/Test"), "--n", "4", "--batch-size", "4",
                 "--max-new-tokens", "24", "--transcripts", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["conversations"] == 4
    answered = report.get("real")
    if answered:                       # every image may be withheld as out of distribution
        for key in ("self_contradictions", "turn_contradictions", "report_contradictions"):
            assert answered[key]["total"] == 0
        assert 0 <= answered["truth_in_top3"]["rate"] <= 1
    turns = report["transcripts"][0]["turns"]
    assert [t["user"] for t in turns][:2] == ["Describe this lesion.",
                                              "Is this lesion benign or malignant?"]
