"""Chat about one skin image that a clinician could follow: findings, a ranked differential
with what speaks for and against each, the concern and the next step that follow from it.

One source of truth per image: a chat opens with a system line, the *image analysis* (the
ranked differential). At training time it is built around the ground truth; at inference it is
the calibrated zero-shot ranking of that image (`serve.Assistant`), the same one the report's
differential comes from. The model learns to reason from it, and `dermvlm.case` holds every
answer to that case, so chat, report and scores agree.

    conversation = synth_chat(attributes, differential, rng)     # SynthDerm ground truth
    conversation = label_chat(LabelTruth(...), rng, classes)     # a real image's label
    kind = question_kind("Should I see a doctor?")               # "advice"
"""
import re

from dermvlm import vocab
from dermvlm.ontology import find_condition

HEDGE = "This is not a diagnosis: a clinician has to examine the lesion."
ANALYSIS_PREFIX = "Image analysis:"

QUESTIONS = {
    "describe": ("Describe this lesion.", "What do you see in this image?",
                 "Can you describe the findings?", "What does this spot look like?"),
    "diagnosis": ("What is the most likely diagnosis?", "What do you think this is?",
                  "What could this be?", "Any idea what this lesion is?"),
    "differential": ("What are the differential diagnoses?", "What else could it be?",
                     "What other conditions should be considered?",
                     "Could it be something else?"),
    "advice": ("Should I see a doctor about it?", "Is this lesion dangerous?",
               "Do I need to worry about this?", "How urgent is this?"),
    "why": ("Why do you think so?", "What makes you say that?", "Why?"),
    "watch": ("What should I watch for?", "What changes should worry me?"),
}
# training examples of questions that get a redirect (eval.chat asks other ones)
OFF_TOPIC_EXAMPLES = ("What is the capital of France?", "Write me a poem about the sea.",
                      "Who won the football match yesterday?", "How do I fix my laptop?",
                      "What is 17 times 23?", "Tell me a joke.")
DOSAGE_EXAMPLES = ("How many milligrams of ibuprofen should I take?",
                   "What dose of prednisolone do I need?", "How much cream should I apply?")
DEFINITIVE_EXAMPLES = ("Can you confirm it is definitely not cancer?",
                       "Give me a definitive diagnosis.")
REDIRECTS = {
    "off_topic": "I can only help with questions about the skin image you shared. Please ask "
                 "me about the lesion: what it looks like, what it could be, or what to do next.",
    "dosage": "I cannot advise on medicines or doses. Please ask a doctor or pharmacist; I can "
              "describe the lesion in the image and what it could be.",
    "definitive": "I cannot give a definitive diagnosis: only a clinician who examines the "
                  "lesion (often with a biopsy) can. I can describe it and rank what it could be.",
}

_DOSAGE = re.compile(r"\b(doses?|dosage|mg|milligrams?|micrograms?|tablets?|pills?|capsules?|"
                     r"prescri\w*|how (much|many|often)\b.*\b(take|apply|use|put|give|cream|"
                     r"ointment|lotion|medicine|medication|drug|antibiotic|steroid)s?)\b", re.I)
_DEFINITIVE = re.compile(r"\b(definitive(ly)?|definitely|for sure|100 ?%|guarantee\w*|"
                         r"confirm|promise)\b", re.I)
# what makes a question about the image: clinical words, or a reference back to it
_SKIN = re.compile(r"\b(skin|lesions?|spots?|moles?|rash\w*|bumps?|patch\w*|marks?|growth|"
                   r"lumps?|freckles?|diagnos\w*|differential|doctor|dermatolog\w*|dangerous|"
                   r"cancer\w*|malignan\w*|benign|melanoma|nevus|colou?rs?|borders?|shape|"
                   r"surface|itch\w*|bleed\w*|biopsy|concern\w*|worr\w*|serious|urgent\w*|"
                   r"describe|findings?|image|photo|picture|raised|flat|size|big|"
                   r"spread\w*|symptoms?|conditions?|watch (for|out)|look out|how soon|"
                   r"what should i do)\b", re.I)
_REFERS = re.compile(r"\b(it|its|this|that|these|those|they|why|else)\b", re.I)
_KINDS = (("differential", r"differential|what else|something else|other (conditions|"
           r"possibilit|diagnos)|could it be"),
          ("watch", r"watch|changes? should|look out"),
          ("advice", r"doctor|dangerous|worr|urgent|serious|need to|should i|is it cancer|"
           r"how soon"),
          ("why", r"\bwhy\b|makes you say|how do you know|reason"),
          ("diagnosis", r"diagnos|what (is|could) (this|it)|what do you think|what .* lesion is"),
          ("describe", r"describe|what do you see|look like|findings"))


def question_kind(message):
    """off_topic | dosage | definitive (answered with a redirect) or describe | diagnosis |
    differential | advice | why | watch | other (answered from the image)."""
    if _DOSAGE.search(message):
        return "dosage"
    if _DEFINITIVE.search(message):
        return "definitive"
    if not (_SKIN.search(message) or _REFERS.search(message)):
        return "off_topic"
    for kind, pattern in _KINDS:
        if re.search(pattern, message, re.I):
            return kind
    return "other"


def analysis_line(differential):
    """The system line a chat opens with: [(diagnosis, probability)] best first."""
    return f"{ANALYSIS_PREFIX} " + "; ".join(f"{name} {round(100 * p)} %"
                                            for name, p in differential) + "."


def _cap(text):
    return text[0].upper() + text[1:]


def advice(name):
    """The next step that the diagnosis `name` implies, with the hedge."""
    condition = find_condition(name)
    malignancy, urgency = condition.malignancy, condition.urgency
    if malignancy == "malignant":
        when = ("urgently, for a biopsy" if urgency == "urgent" else
                "within weeks; it is usually slow-growing but needs treatment")
        text = (f"{_cap(name)} is a malignant skin cancer, so please see a dermatologist "
                f"{when}.")
    elif malignancy == "premalignant":
        text = (f"{_cap(name)} is premalignant (precancerous): it can turn into skin cancer "
                "and is usually treated, so arrange a review within weeks.")
    elif urgency == "urgent":
        text = (f"{_cap(name)} is not cancer, but it needs medical care without delay: "
                "please see a doctor promptly.")
    elif urgency == "soon":
        text = (f"It looks benign ({name}), but it usually needs treatment, so see a doctor "
                "within weeks.")
    else:
        text = (f"It looks benign ({name}), so routine monitoring is reasonable. See a doctor "
                "if it changes, bleeds or worries you.")
    return f"{text} {HEDGE}"


def watch_answer(name):
    condition = find_condition(name)
    if condition.malignancy == "benign":
        return ("Watch for change: growth, a new colour, an irregular border, bleeding, or a "
                "sore that does not heal. Any of these is a reason to see a doctor.")
    return ("Do not wait for changes: have it examined. Until then, note any growth, "
            "bleeding, itching or a change in colour or shape, and tell the doctor.")


# ---- findings -------------------------------------------------------------------------

def _plural(lesion_type):
    return vocab.LESION_PLURALS.get(lesion_type, lesion_type + "s")


def synth_findings(attrs):
    """'a single brown and black plaque with an irregular, ill-defined border and a scaly
    surface, on the back' from SynthDerm attributes (plain vocabulary words)."""
    count = {"single": "a single", "few": "a few", "multiple": "multiple"}[attrs["count"]]
    noun = attrs["lesion_type"] if attrs["count"] == "single" else _plural(attrs["lesion_type"])
    colours = " and ".join(attrs["colours"])
    regular = attrs["border_regularity"]
    border = f"{'an' if regular == 'irregular' else 'a'} {regular}, " \
             f"{attrs['border_definition']} border"
    extra = [] if attrs["surface"] == "smooth" else [f"a {attrs['surface']} surface"]
    if attrs["secondary"] != "none":
        extra.append({"crust": "crusting", "erosion": "erosion", "ulcer": "ulceration"}[
            attrs["secondary"]])
    tail = f" and {' and '.join(extra)}" if extra else ""
    return f"{count} {colours} {noun} with {border}{tail}, on the {attrs['body_site']}"


# (attribute, the Condition's weights for it, how a reason names a value)
EVIDENCE_PHRASES = (("lesion_type", "lesion_types", "a {} lesion"),
                    ("colours", "colours", "{} colour"),
                    ("border_regularity", "border_regularity", "a {} border"),
                    ("surface", "surfaces", "a {} surface"), ("body_site", "sites", "the {} site"))


def _evidence(attrs, name):
    """(what speaks for `name`, what speaks against it) among the image's findings."""
    condition = find_condition(name)
    fits, misfits = [], []
    for key, field, phrase in EVIDENCE_PHRASES:
        values = attrs[key] if isinstance(attrs[key], list) else [attrs[key]]
        weights = getattr(condition, field)
        for value in values:
            (fits if weights.get(value, 0) > 0 else misfits).append(phrase.format(value))
    return fits, misfits


def _ranked(differential):
    return [name for name, _ in differential]


def synth_chat(attrs, differential, rng):
    """A reasoning conversation (LLaVA turns, system line first) about a SynthDerm image."""
    truth = differential[0][0]
    findings = synth_findings(attrs)
    fits, _ = _evidence(attrs, truth)
    reasons = ", ".join(fits[:3])
    others = []
    for name in _ranked(differential)[1:]:
        for_, against = _evidence(attrs, name)
        part = f"{name}: " + (f"{for_[0]} fits" if for_ else "little fits")
        others.append(part + (f", but {against[0]} does not" if against else ""))
    answers = {
        "describe": _cap(f"I see {findings}."),
        "diagnosis": f"The most likely diagnosis is {truth}, given {reasons}. {HEDGE}",
        "differential": (f"{_cap(truth)} is most likely ({reasons}). Also consider "
                         + "; ".join(others) + "."),
        "why": f"Because of {reasons}, which is typical of {truth}.",
    }
    return _conversation(answers, truth, differential, rng)


def label_chat(truth, rng, classes):
    """A reasoning conversation about a real image from its label (dermvlm.labeltext
    LabelTruth): it names what the label and the table say and no visual attribute."""
    alternatives = _lookalikes(truth.condition, classes, rng)
    differential = [(truth.name, float(rng.uniform(0.5, 0.85)))]
    rest = 1.0 - differential[0][1]
    differential += [(name, round(rest * share, 2)) for name, share in
                     zip(alternatives, (0.6, 0.3))]
    patient = truth.patient_sentence()
    modality = truth.modality or "clinical"
    others = [f"{name} ({_relation(truth.condition, find_condition(name))})"
              for name in alternatives]
    answers = {
        "describe": (f"This is a {modality} image of a single skin lesion. {patient} "
                     f"Its appearance fits {truth.name} best.").replace("  ", " "),
        "diagnosis": (f"The most likely diagnosis is {truth.name}, a {truth.group} lesion. "
                      f"{HEDGE}"),
        "differential": (f"{_cap(truth.name)} is most likely. Also consider "
                         + " and ".join(others) + "."),
        "why": (f"The image analysis ranks {truth.name} first, and its {modality} pattern "
                f"fits a {truth.group} lesion. Only an examination, often with a biopsy, can "
                "confirm it."),
    }
    return _conversation(answers, truth.name, differential, rng)


def _lookalikes(condition, classes, rng):
    """Two other classes, look-alikes from the same ontology group first."""
    names = dict.fromkeys(c.name for c in map(find_condition, classes) if c is not None)
    pool = [find_condition(name) for name in names if name != condition.name]
    near = [c.name for c in pool if c.path[:2] == condition.path[:2]]
    far = [c.name for c in pool if c.name not in near]
    near = [near[i] for i in rng.permutation(len(near))]
    far = [far[i] for i in rng.permutation(len(far))]
    return (near + far)[:2]


def _relation(truth, other):
    group = other.path[-1].lower()
    if other.path == truth.path and other.malignancy == truth.malignancy:
        return f"another {other.malignancy} {group} lesion"
    if other.path == truth.path:
        return f"also {group}, but {other.malignancy}"
    return f"a {other.malignancy} look-alike"


def _conversation(answers, truth, differential, rng):
    """System line, then findings -> diagnosis -> differential -> advice, one or two
    follow-ups, and now and then a question that gets a redirect; wording varied."""
    answers = dict(answers, advice=advice(truth), watch=watch_answer(truth))
    order = ["describe", "diagnosis", "differential", "advice"]
    if rng.random() < 0.3:                   # sometimes the worried question comes first
        order = ["advice", "describe", "diagnosis", "differential"]
    order += [k for k in ("why", "watch") if rng.random() < 0.6]
    turns = [(rng.choice(QUESTIONS[k]), answers[k]) for k in order]
    if rng.random() < 0.25:
        kind = rng.choice(["off_topic", "dosage", "definitive"])
        pool = {"off_topic": OFF_TOPIC_EXAMPLES, "dosage": DOSAGE_EXAMPLES,
                "definitive": DEFINITIVE_EXAMPLES}[kind]
        turns.insert(int(rng.integers(1, len(turns) + 1)), (rng.choice(pool), REDIRECTS[kind]))
    out = [{"from": "system", "value": analysis_line(differential)}]
    for k, (question, answer) in enumerate(turns):
        out += [{"from": "human", "value": ("<image>\n" if k == 0 else "") + str(question)},
                {"from": "gpt", "value": answer}]
    return out
