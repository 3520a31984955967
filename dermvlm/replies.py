"""Chat replies whose claims come from the image's case, never from free LM text.

A claim is: which condition is most likely, each condition's benign / premalignant /
malignant status, the concern, the urgency of the next step, and what the image cannot show.
Questions that ask for a claim are answered by a reply composed from the case and the
ontology (`composed`); the LM words only the open questions (a description, anything else),
and its text is vetted sentence by sentence before anything reaches the user (`vetted`):
a sentence that names a condition outside the case's differential, states a concern the case
does not hold, or gives a finding the case does not see, is dropped. Nothing is streamed and
then withdrawn.

    kind = turn_kind("Is this benign or malignant?")      # "malignancy"
    text = composed(kind, case, message)                   # from the case, or None
    text = vetted(lm_reply, case, kind) if text is None else text
"""
import re

from dermvlm import vocab
from dermvlm.case import (HEDGE, _findings_conflict, case_differential, case_why,
                          named_conditions, not_excluded, reasons_hold, reply_concern)
from dermvlm.chat import question_kind, watch_answer
from dermvlm.ontology import find_condition

# the least next step each concern calls for (a raised concern: a review within weeks)
CONCERN_NEXT_STEP = {"low": vocab.NEXT_STEPS[0], "moderate": vocab.NEXT_STEPS[2],
                     "high": vocab.NEXT_STEPS[2]}
NEXT_STEP_WORDS = {
    vocab.NEXT_STEPS[0]: "routine monitoring is reasonable; see a doctor if it changes, "
                         "bleeds or worries you",
    vocab.NEXT_STEPS[1]: "see a doctor for treatment and a review",
    vocab.NEXT_STEPS[2]: "please have it examined by a dermatologist within weeks",
    vocab.NEXT_STEPS[3]: "please see a dermatologist urgently, for a biopsy",
}
STATUS_WORDS = {"benign": "benign", "premalignant": "premalignant (precancerous)",
                "malignant": "malignant"}
# claim kinds answered from the case; the LM words "describe" and "other"
COMPOSED_KINDS = ("diagnosis", "malignancy", "differential", "advice", "watch", "why",
                  "compare")
_MALIGNANCY_Q = re.compile(r"\b(benign|malignan\w*|cancer\w*|carcinoma)\b", re.I)
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
# the patient's age or sex: nothing in an image tells them, and the app is never given them
# (the LM learnt such sentences from HAM10000's captions, which were written from its table)
_PATIENT = re.compile(r"\b(\d{1,3}[- ]years?[- ]old|aged \d{1,3}|man|woman|men|women|male|"
                      r"female|boy|girl)\b", re.I)
# border and surface: the case does not see them (its findings are the lesion type and
# colours), and the report words them separately, so an LM sentence stating them could
# contradict the report the user reads beside it
_BORDER_OR_SURFACE = re.compile(r"\b(borders?|margins?|edges?|(well|ill|poorly)[- ]defined|"
                                r"demarcated|circumscribed|surface|smooth|scal(y|es|ing)|"
                                r"verrucous|warty|rough)\b", re.I)
_SITE = re.compile(r"\b(on|of) the (face|scalp|neck|trunk|back|chest|abdomen|ear|arm|hand|leg|"
                   r"foot|genitals?|(upper|lower) (extremity|limb))\b", re.I)
_REASSURING = re.compile(r"\b(benign|not (a )?(skin )?cancer\w*|harmless|nothing to worry)\b",
                         re.I)


def turn_kind(message):
    """question_kind, with two kinds of its own: "malignancy" (benign or malignant? is it
    cancer?) and "compare" (a question that names a condition: how is it different from
    X? could it be X?)."""
    kind = question_kind(message)
    if kind in ("off_topic", "dosage", "definitive", "differential"):
        return kind
    if named_conditions(message):
        return "compare"
    if _MALIGNANCY_Q.search(message) and kind not in ("why", "watch"):
        return "malignancy"
    return kind


def next_step(case):
    """The case's next step (a vocab.NEXT_STEPS value): the top diagnosis's urgency, raised to
    what the concern calls for. The report's suggested_next_step is this same value."""
    top = find_condition(case.top)
    return max(vocab.URGENCY_NEXT_STEP[top.urgency], CONCERN_NEXT_STEP[case.concern],
               key=vocab.NEXT_STEPS.index)


def _pct(p):
    return f"{round(100 * p)} %"


def _status(name):
    return STATUS_WORDS[find_condition(name).malignancy]


def case_diagnosis(case):
    (top, p) = case.differential[0]
    text = f"The image analysis ranks {top} first ({_pct(p)}), a {_status(top)} condition."
    return text + (f" {not_excluded(case)}" if case.raised else "")


def case_malignancy(case):
    """Benign or malignant, as the case holds it: the top condition's status, or a benign top
    whose risky look-alike the malignancy threshold does not exclude."""
    (top, p), status = case.differential[0], find_condition(case.top).malignancy
    if case.raised:
        return (f"Most likely benign ({top}, {_pct(p)}), but {case.risky} "
                f"({_status(case.risky)}) cannot be excluded from this image.")
    opening = {"benign": "It looks benign", "premalignant": "It looks premalignant",
               "malignant": "It may be malignant"}[status]
    return f"{opening}: the image analysis ranks {top} first ({_pct(p)}), a {_status(top)} " \
           "condition."


def case_next_step(case):
    return f"Concern: {case.concern}; {NEXT_STEP_WORDS[next_step(case)]}."


def case_compare(case, message):
    """How the conditions a question names relate to the case: each one's status and its
    probability here (or that the analysis does not rank it among the likeliest)."""
    probs = dict(case.scores or case.differential)
    top = case.top
    parts = []
    for name in [n for n in named_conditions(message) if n != top][:2] or [top]:
        if name == top:
            parts.append(f"{top[0].upper() + top[1:]} is what the image analysis ranks first "
                         f"({_pct(probs[top])}), a {_status(top)} condition.")
            continue
        here = (f"the image analysis gives it {_pct(probs[name])}" if name in probs
                else "the image analysis does not rank it among the likeliest")
        parts.append(f"{name[0].upper() + name[1:]} is {_status(name)}; {here}, against "
                     f"{_pct(probs.get(top, case.differential[0][1]))} for {top} "
                     f"({_status(top)}).")
    if case.raised and case.risky not in named_conditions(" ".join(parts)):
        parts.append(not_excluded(case))
    return " ".join(parts)


def composed(kind, case, message=""):
    """The reply to a claim question, written from the case (with the hedge), or None for
    the kinds the LM words."""
    if kind == "diagnosis":
        text = case_diagnosis(case)
    elif kind == "malignancy":
        text = f"{case_malignancy(case)} {case_next_step(case)}"
    elif kind == "differential":
        text = case_differential(case)
    elif kind == "advice":
        text = f"{case_malignancy(case)} {case_next_step(case)}"
    elif kind == "watch":
        text = watch_answer(case.risky if case.raised else case.top)
    elif kind == "why":
        text = case_why(case)
    elif kind == "compare":
        text = f"{case_compare(case, message)} {case_next_step(case)}"
    else:
        return None
    return f"{text} {HEDGE}"


def unseen_fields(case):
    """The report fields this image cannot show: no photo's size in millimetres (dermvlm
    finds no ruler or scale in an image), and on a dermoscopic close-up no body site either
    (no body is around it). Nothing without findings (no modality judged)."""
    modality = (case.findings or {}).get("modality")
    return {"dermoscopic": ("size", "body_site"), "clinical": ("size",)}.get(modality, ())


def unseen_findings(case):
    """What this image cannot show, in words ('' when nothing is said)."""
    fields = unseen_fields(case)
    if "body_site" in fields:
        return ("It is a dermoscopic close-up, so its size in millimetres and the body site "
                "cannot be judged from the image.")
    if fields:
        return ("There is no scale in the photo, so its size in millimetres cannot be judged "
                "from the image.")
    return ""


def sentence_holds(sentence, case):
    """Whether one sentence of the LM's keeps to the case: it names no condition but the
    case's top one (and the risky one a raised concern does not exclude), states no concern
    but the case's, gives sound reasons, and no finding the case does not see (a border or
    surface among them) or the image cannot show, nor the patient's age or sex. The claims
    themselves are the composed replies' to make."""
    allowed = {case.top} | ({case.risky} if case.raised else set())
    if set(named_conditions(sentence)) - allowed:
        return False
    said = reply_concern(sentence)
    if said != "low" and said != case.concern:
        return False
    if _REASSURING.search(sentence) and case.concern != "low" or _PATIENT.search(sentence):
        return False
    unseen = unseen_fields(case)
    if "size" in unseen and re.search(r"\b\d+(\.\d+)? ?(mm|cm)\b", sentence, re.I):
        return False
    if "body_site" in unseen and _SITE.search(sentence):
        return False
    if _BORDER_OR_SURFACE.search(sentence):
        return False
    return reasons_hold(sentence) and not (case.findings and
                                           _findings_conflict(sentence, case.findings))


def vetted(reply, case, kind="other"):
    """The LM's reply with every sentence that breaks the case dropped; when nothing is left,
    a short reply composed from the case. Describe replies say what the image cannot show."""
    kept = [s for s in _SENTENCE.split(reply.strip()) if s and sentence_holds(s, case)]
    if kind == "describe":
        seen = case.findings
        if not kept and seen:
            kept = [f"It shows a {' and '.join(seen['colours'])} {seen['lesion_type']} in a "
                    f"{seen['modality']} image."]
        note = unseen_findings(case)
        if note and note not in kept:
            kept.append(note)
    if not kept:
        return composed("diagnosis", case)
    return " ".join(kept)


def stream_vetted(pieces, case, kind="other"):
    """Yield the growing reply from the LM's text pieces, a sentence at a time, each one only
    once `sentence_holds`; the last yield is `vetted` of all the LM said, which only ever
    extends what was shown (it keeps every shown sentence)."""
    shown, buffer = [], ""
    for piece in pieces:
        buffer += piece
        *done, buffer = _SENTENCE.split(buffer)
        for sentence in done:
            if sentence.strip() and sentence_holds(sentence, case):
                shown.append(sentence.strip())
                yield " ".join(shown)
    final = vetted(" ".join(shown + [buffer.strip()]), case, kind)
    if not shown or final != " ".join(shown):
        yield final
