"""One source of truth per image: the `Case` that the app's chat and report share, and the
rules that hold every chat answer to it.

A case is the image's calibrated zero-shot analysis (`serve.Assistant.case`): the ranked
differential, P(malignant or premalignant) and the concern they imply, the most probable risky
condition, the visible findings (lesion type, colours, modality) and the OOD verdict. `checked_reply`
keeps the model's own words where they agree with the case and replaces or completes them
where they do not:

    diagnosis     names the case's top diagnosis first, and gives no reason the ontology
                  contradicts ("brown colour fits" only where the condition is brown); when
                  the malignancy threshold raised the concern, says which risky condition is
                  not excluded
    differential  written from the case: its conditions, top first, each with its malignancy,
                  probability and what of the findings speaks for and against it
    advice/watch  the case's concern
    why           written from the case: the top diagnosis's rank, probability and what of
                  the findings speaks for and against it
    describe      the case's lesion type, colours and modality

    case = Case.from_probabilities(probs, labels, verdict, threshold, findings=...)
    reply = checked_reply("advice", model_reply, case)
"""
import re
from dataclasses import dataclass

from dermvlm import vocab
from dermvlm.chat import EVIDENCE_PHRASES, HEDGE, advice, watch_answer
from dermvlm.ontology import CONDITIONS, find_condition
from dermvlm.report import MALIGNANCY_CONCERN


@dataclass
class Case:
    """What the app knows of one image, shared by its chat and its report."""
    differential: list              # [(diagnosis, calibrated probability)] best first
    malignancy_probability: float   # P(malignant or premalignant) over the ontology
    concern: str                    # low | moderate | high
    verdict: dict | None = None     # dermvlm.trust's OOD verdict, None without a trust file
    raised: bool = False            # concern raised above the top diagnosis's by the
                                    # malignancy threshold (a benign top, a risky runner-up)
    risky: str | None = None        # the most probable malignant or premalignant condition
    findings: dict | None = None    # {"lesion_type", "colours", "modality"} seen in the image
    scores: dict | None = None      # {diagnosis: calibrated probability} over every label

    @property
    def abstained(self):
        return bool(self.verdict and self.verdict["abstained"])

    @property
    def top(self):
        return self.differential[0][0]

    @classmethod
    def from_probabilities(cls, probs, labels, verdict=None, threshold=None, top_k=3,
                           findings=None):
        """From calibrated probabilities over `labels` (ontology names): the top diagnosis's
        malignancy sets the concern (as describe's rule); `threshold` on the summed
        probability of the malignant and premalignant labels raises a low one to moderate."""
        order = sorted(range(len(probs)), key=lambda i: -probs[i])
        differential = [(labels[i], float(probs[i])) for i in order[:top_k]]
        risky_rows = [i for i in order if (c := find_condition(labels[i])) is not None
                      and c.malignancy != "benign"]
        risky = sum(probs[i] for i in risky_rows)
        level = MALIGNANCY_CONCERN[find_condition(differential[0][0]).malignancy]
        raised = threshold is not None and risky >= threshold and level == "low"
        return cls(differential, float(risky), "moderate" if raised else level, verdict,
                   raised, labels[risky_rows[0]] if risky_rows else None, findings,
                   {label: float(p) for label, p in zip(labels, probs)})


# ---- what a reply says ----------------------------------------------------------------
_HIGH = re.compile(r"\b(malignant|cancer(ous)?|carcinoma|melanoma|biopsy)\b", re.I)
_MODERATE = re.compile(r"\b(premalignant|precancerous|pre-cancerous)\b", re.I)
_NOT_HIGH = re.compile(r"\b(not (a )?(skin )?(cancer|malignant)|no (sign of )?(cancer|"
                       r"malignan\w*))\b", re.I)
_MODALITY = re.compile(r"\b(" + "|".join(vocab.MODALITIES) + r")\b", re.I)
_NUMBER = {v: k for k, v in vocab.LESION_PLURALS.items()}           # plural -> singular
_TYPES = "|".join(sorted(list(vocab.LESION_TYPES) + list(vocab.LESION_PLURALS.values()),
                        key=len, reverse=True))
_TYPE_WORD = re.compile(rf"\b({_TYPES})\b", re.I)
_COLOUR = "|".join(re.escape(c) for c in sorted(vocab.COLOURS, key=len, reverse=True))
# a run of colours that qualifies something: "brown and black plaque", "brown colour"
_COLOUR_RUN = re.compile(rf"(?<![\w-])((?:{_COLOUR})(?:(?:,| and| or) (?:{_COLOUR}))*)"
                         rf"(?= (?:{_TYPES})\b| colou?rs?\b| lesion)", re.I)


def reply_concern(text):
    """The malignancy concern a reply conveys: high | moderate | low."""
    if _MODERATE.search(text):
        return "moderate"
    return "high" if _HIGH.search(_NOT_HIGH.sub("", text)) else "low"


def agrees(reply, malignancy):
    """Whether a reply's concern matches a diagnosis's malignancy: reassuring for a benign
    one, concerned (moderate or high) for a premalignant or malignant one."""
    return (reply_concern(reply) == "low") == (malignancy == "benign")


def mentions(text):
    """[(start, end, condition name)] of the ontology conditions a text names (by name or
    synonym), first mention of each, in order."""
    found = []
    for condition in CONDITIONS:
        for name in (condition.name,) + condition.synonyms:
            match = re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text, re.I)
            if match:
                found.append((match.start(), match.end(), condition.name))
                break
    return sorted(found)


def named_conditions(text):
    """Ontology conditions a text names (by name or synonym), in order of first mention."""
    return list(dict.fromkeys(name for _, _, name in mentions(text)))


def findings_named(text):
    """(lesion types, colours) a text names, singular lesion types."""
    types = {_NUMBER.get(m.lower(), m.lower()) for m in _TYPE_WORD.findall(text)}
    colours = {c.lower() for run in _COLOUR_RUN.findall(text)
               for c in re.findall(_COLOUR, run, re.I)}
    return types, colours


_VALUES = {"lesion_types": vocab.LESION_TYPES, "colours": vocab.COLOURS,
           "border_regularity": vocab.BORDER_REGULARITY, "surfaces": vocab.SURFACES,
           "sites": vocab.BODY_SITES}
_REASONS = [(field, re.compile("(?<![\\w-])" + phrase.format(
    "(" + "|".join(re.escape(v) for v in sorted(_VALUES[field], key=len, reverse=True)) + ")")
    + r"\b", re.I)) for _, field, phrase in EVIDENCE_PHRASES]
_VERDICT = re.compile(r"\b(fits?|does not)\b", re.I)
_SIDE = re.compile(r"\b(for|against) it:", re.I)


def reasons_hold(text):
    """Whether every reason the text gives for or against a condition is true of it in the
    ontology. A reason is a finding phrase ("a plaque lesion", "brown colour"); it speaks
    against the condition whose part of the text it is in when "does not" follows it there
    or "against it:" is the last side named before it, else for it. Phrases before the first
    condition named are that condition's ("Because of a plaque lesion, ..., typical of
    psoriasis")."""
    spans = mentions(text)
    for k, (_, _, name) in enumerate(spans):
        start = 0 if k == 0 else spans[k][0]
        stop = spans[k + 1][0] if k + 1 < len(spans) else len(text)
        weights = find_condition(name)
        for field, pattern in _REASONS:
            for match in pattern.finditer(text, start, stop):
                verdict = _VERDICT.search(text, match.end(), stop)
                sides = _SIDE.findall(text, start, match.start())
                fits = not (verdict and verdict.group(1).lower() == "does not") and not (
                    sides and sides[-1].lower() == "against")
                if (getattr(weights, field).get(match.group(1).lower(), 0) > 0) != fits:
                    return False
    return True


# ---- held to the case -----------------------------------------------------------------
def _without_hedge(text):
    return text.replace(HEDGE, "").strip()


def not_excluded(case):
    """The sentence a raised concern adds: which risky condition the image cannot exclude."""
    kind = find_condition(case.risky).malignancy
    return f"However, {case.risky} ({kind}) cannot be excluded from this image."


def case_advice(case):
    """The next step the case implies: the top diagnosis's, or, when the malignancy threshold
    raised the concern, a review because a risky look-alike is not excluded."""
    if not case.raised:
        return advice(case.top)
    return (f"It is most likely {case.top}, which is benign, but {case.risky} "
            f"({find_condition(case.risky).malignancy}) cannot be excluded from this image, so "
            f"please have it examined by a dermatologist within weeks. {HEDGE}")


def case_reasons(case, name):
    """'for it: a macule lesion; against it: red colour': what of the findings the case sees
    speaks for and against the condition `name` in the ontology ('' without findings)."""
    if not case.findings:
        return ""
    condition, fits, misfits = find_condition(name), [], []
    for key, field, phrase in EVIDENCE_PHRASES:
        for value in [case.findings[key]] if key == "lesion_type" else \
                case.findings.get(key, []) if key == "colours" else []:
            weight = getattr(condition, field).get(value, 0)
            (fits if weight > 0 else misfits).append(phrase.format(value))
    parts = ([f"for it: {', '.join(fits)}"] if fits else []) + (
        [f"against it: {', '.join(misfits)}"] if misfits else [])
    return "; ".join(parts)


def case_differential(case):
    """The case's differential in words: each condition with its malignancy, probability and
    what of the findings speaks for and against it; a raised concern's risky condition."""
    def item(name, p, first=False):
        reasons = case_reasons(case, name)
        malignancy = "" if first else f"{find_condition(name).malignancy}, "
        return f"{name} ({malignancy}{round(100 * p)} %" + (f"; {reasons})" if reasons
                                                              else ")")
    (top, p), rest = case.differential[0], case.differential[1:]
    text = f"Most likely {item(top, p, first=True)}."
    if rest:
        text += " Also consider " + " and ".join(item(n, q) for n, q in rest) + "."
    if case.raised and case.risky not in [n for n, _ in case.differential]:
        text += " " + not_excluded(case)
    return text


def case_why(case):
    """Why the case's top diagnosis: its rank and probability, what of the findings speaks for
    and against it, and what would confirm it."""
    reasons = case_reasons(case, case.top)
    return (f"The image analysis ranks {case.top} first "
            f"({round(100 * case.differential[0][1])} %)" +
            (f"; of what it sees, {reasons}" if reasons else "") +
            ". Only an examination, often with a biopsy, can confirm it.")


def _findings_conflict(reply, findings):
    types, colours = findings_named(reply)
    modalities = {m.lower() for m in _MODALITY.findall(reply)}
    return bool(types - {findings["lesion_type"]} or colours - set(findings["colours"])
                or modalities - {findings["modality"]})


def _seen(findings):
    return f"a {' and '.join(findings['colours'])} {findings['lesion_type']}"


def hold_findings(reply, findings):
    """The reply with each lesion type it names (in its own number), each run of colours and
    the modality replaced by the case's; a reply that names no lesion type gets a sentence
    saying what is seen."""
    colours = " and ".join(findings["colours"])
    plural = vocab.LESION_PLURALS.get(findings["lesion_type"], findings["lesion_type"] + "s")

    def lesion_type(match):
        return plural if match.group(1).lower() in _NUMBER else findings["lesion_type"]
    held = _TYPE_WORD.sub(lesion_type, _COLOUR_RUN.sub(colours, reply))
    held = _MODALITY.sub(findings["modality"], held)
    if not _TYPE_WORD.search(held):
        held = f"{held.rstrip()} It shows {_seen(findings)}."
    return held


def _sound(reply, case):
    """No reason the ontology contradicts and no finding the case does not see."""
    return reasons_hold(reply) and not (case.findings and
                                        _findings_conflict(reply, case.findings))


def checked_reply(kind, reply, case):
    """The model's reply held to the image's case (see the module's table); diagnosis,
    differential and urgency answers always carry the hedge."""
    if kind == "diagnosis":
        if named_conditions(reply)[:1] != [case.top] or not _sound(reply, case):
            reply = f"The most likely diagnosis is {case.top}."
        if case.raised and case.risky not in named_conditions(reply):
            reply = f"{_without_hedge(reply)} {not_excluded(case)}"
    elif kind == "differential":
        reply = case_differential(case)
    elif kind == "advice" and (reply_concern(reply) == "low") != (case.concern == "low"):
        reply = case_advice(case)
    elif kind == "watch" and ("Do not wait" in reply) != (case.concern != "low"):
        reply = watch_answer(case.risky if case.raised else case.top)
    elif kind == "describe" and case.findings:
        reply = hold_findings(reply, case.findings)
    elif kind == "why":
        reply = case_why(case)
    if kind in ("diagnosis", "differential", "advice") and HEDGE not in reply:
        reply = f"{_without_hedge(reply)} {HEDGE}"
    return reply
