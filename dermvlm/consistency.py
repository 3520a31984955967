"""What a chat reply claims, read back from its words, and where claims contradict each other:
within one reply, across the turns of one conversation, and against the image's report.

The reader knows the ontology (condition names and synonyms, each one's malignancy) and the
phrases that state a verdict ("It looks benign", "It may be malignant"), a concern and an
urgency. It is deliberately independent of how dermvlm.replies writes: it reads any text, so
eval.chat can score any model's replies.

    claims = read_claims("Benign (basal cell carcinoma): a malignant lesion.")
    self_contradictions(claims)      # ["verdict benign, but it names basal cell carcinoma ..."]
"""
import re
from dataclasses import dataclass

from dermvlm import vocab
from dermvlm.case import mentions
from dermvlm.ontology import find_condition

_VERDICT = re.compile(r"^\W*(?:it (?:looks|appears|seems|is(?: likely)?|may be)\s+|"
                      r"(?:most likely|probably)\s+)?(benign|premalignant|precancerous|"
                      r"malignant)\b", re.I)
_EXCLUDED = re.compile(r"cannot be (?:excluded|ruled out)", re.I)
_URGENCY = (("urgent", re.compile(r"\burgent(ly)?\b|\bwithout delay\b|\bpromptly\b", re.I)),
            ("weeks", re.compile(r"\bwithin (a few )?weeks\b", re.I)),
            ("routine", re.compile(r"\broutine monitoring\b", re.I)))
STEP_URGENCY = {vocab.NEXT_STEPS[0]: "routine", vocab.NEXT_STEPS[1]: "weeks",
                vocab.NEXT_STEPS[2]: "weeks", vocab.NEXT_STEPS[3]: "urgent"}
_STATUS = {"precancerous": "premalignant"}
# findings the report states in a closed vocabulary (dermvlm.vocab), as a reply words them
_BORDER = re.compile(r"\b(border|margin|edge)s?\b", re.I)
_BORDER_WORDS = (("border_regularity", "irregular", re.compile(r"\birregular\b", re.I)),
                 ("border_regularity", "regular", re.compile(r"(?<!ir)\bregular\b", re.I)),
                 ("border_definition", "ill-defined",
                  re.compile(r"\bill[- ]defined\b|\bpoorly[- ]defined\b|\bindistinct\b", re.I)),
                 ("border_definition", "well-defined",
                  re.compile(r"\bwell[- ]defined\b|\bsharply\b|\bwell[- ]demarcated\b", re.I)))
# ("scale" alone is a ruler: "no scale in the photo")
_SURFACE_WORDS = (("scaly", re.compile(r"\bscal(y|es|ing)\b", re.I)),
                  ("verrucous", re.compile(r"\bverrucous\b|\bwarty\b", re.I)),
                  ("smooth", re.compile(r"\bsmooth\b", re.I)))
# a sentence about what to watch for, or what would be a sign, states no finding
_HYPOTHETICAL = re.compile(r"\b(watch|if|whether|signs?|would|could|might)\b", re.I)


@dataclass
class Claims:
    verdict: str | None        # benign | premalignant | malignant, as the reply opens
    first: str | None          # the first condition it names
    not_excluded: list         # conditions it says cannot be excluded
    urgency: str | None        # routine | weeks | urgent
    text: str
    # {"border_regularity", "border_definition": the word said} where a sentence about the
    # border says one, and "surface": the surface words said (vocab.SURFACES)
    findings: dict = None


def read_claims(text):
    found = [name for _, _, name in mentions(text)]
    match = None
    for sentence in re.split(r"(?<=[.!?:])\s+", text.strip()):
        match = _VERDICT.search(sentence)
        if match:
            break
    verdict = _STATUS.get(match.group(1).lower(), match.group(1).lower()) if match else None
    not_excluded = [name for start, _, name in mentions(text)
                    if _EXCLUDED.search(text[start:start + 120])]
    urgency = next((level for level, pattern in _URGENCY if pattern.search(text)), None)
    return Claims(verdict, found[0] if found else None, not_excluded, urgency, text,
                  read_findings(text))


def read_findings(text):
    """{"border_regularity", "border_definition", "surface"} a text states (see Claims)."""
    findings, surface = {}, []
    for sentence in re.split(r"(?<=[.!?])\s+", text.strip()):
        if _HYPOTHETICAL.search(sentence):
            continue
        if _BORDER.search(sentence):
            for field, word, pattern in _BORDER_WORDS:
                if pattern.search(sentence):
                    findings.setdefault(field, word)
        surface += [word for word, pattern in _SURFACE_WORDS if pattern.search(sentence)]
    if surface:
        findings["surface"] = sorted(set(surface))
    return findings


def _status(name):
    return find_condition(name).malignancy


def self_contradictions(claims):
    """Reasons one reply contradicts itself (empty: none)."""
    out = []
    if claims.verdict and claims.first and claims.first not in claims.not_excluded:
        if claims.verdict != _status(claims.first):
            out.append(f"verdict {claims.verdict}, but it ranks {claims.first} "
                       f"({_status(claims.first)}) first")
    if claims.verdict == "benign" and claims.urgency == "urgent":
        out.append("verdict benign, but urgent")
    if claims.verdict == "malignant" and claims.urgency == "routine":
        out.append("verdict malignant, but routine monitoring")
    return out


def turn_contradictions(earlier, later):
    """Reasons a later reply contradicts an earlier one of the same conversation."""
    out = []
    if earlier.verdict and later.verdict and earlier.verdict != later.verdict:
        out.append(f"verdict {earlier.verdict} then {later.verdict}")
    if earlier.urgency and later.urgency and earlier.urgency != later.urgency:
        out.append(f"urgency {earlier.urgency} then {later.urgency}")
    return out


def report_contradictions(claims, report):
    """Reasons a reply contradicts the image's LesionReport."""
    if not report.differential:
        return []
    out = []
    top = report.differential[0].diagnosis
    if claims.urgency and claims.urgency != STEP_URGENCY[report.suggested_next_step]:
        out.append(f"urgency {claims.urgency}, report '{report.suggested_next_step}'")
    if claims.verdict:
        expected = {"low": "benign", "moderate": None, "high": "malignant"}[
            report.malignancy_concern]
        if expected and claims.verdict != expected:
            out.append(f"verdict {claims.verdict}, report concern "
                       f"{report.malignancy_concern}")
    if claims.verdict and claims.first and claims.first != top and \
            claims.first not in claims.not_excluded and claims.first in [
                d.diagnosis for d in report.differential]:
        out.append(f"ranks {claims.first} first, report ranks {top} first")
    said = claims.findings or {}
    for field in ("border_regularity", "border_definition"):
        if said.get(field) and getattr(report, field) and said[field] != getattr(report, field):
            out.append(f"{field.replace('_', ' ')} {said[field]}, report "
                       f"{getattr(report, field)}")
    surface = set(said.get("surface", ())) - set(report.surface_features or ())
    if surface and report.surface_features:
        out.append(f"surface {', '.join(sorted(surface))}, report "
                   f"{', '.join(report.surface_features)}")
    return out
