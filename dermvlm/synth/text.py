"""Words for SynthDerm images: captions, VQA conversations, benchmark answers, differentials.

Wording varies (templates, synonyms, clinical phrasing, omitted clauses) so a model has to learn
the attributes rather than one sentence. All choices come from a generator seeded per image.
"""
import json

import numpy as np

from dermvlm import vocab
from dermvlm.choices import LETTER_INSTRUCTION, option_label
from dermvlm.ontology import CONDITIONS_BY_NAME, SYNTH_CONDITIONS
from dermvlm.report import report_from_attributes

COLOUR_WORDS = {
    "red": ("red", "erythematous", "bright red"), "pink": ("pink", "pinkish", "salmon-pink"),
    "brown": ("brown", "hyperpigmented", "tan-brown"),
    "dark brown": ("dark brown", "deeply pigmented dark brown"),
    "black": ("black", "jet-black"), "blue-grey": ("blue-grey", "bluish-grey", "slate-blue"),
    "white": ("white", "depigmented", "porcelain-white"), "yellow": ("yellow", "yellowish"),
    "purple": ("purple", "violaceous"), "skin-coloured": ("skin-coloured", "flesh-coloured"),
}
SURFACE_WORDS = {"smooth": ("smooth", "with a smooth surface"),
                 "scaly": ("scaly", "with overlying scale", "covered in silvery scale"),
                 "verrucous": ("verrucous", "warty", "papillomatous")}
SECONDARY_WORDS = {"crust": ("with crusting", "with honey-coloured crust"),
                   "erosion": ("with erosions", "with a moist eroded centre"),
                   "ulcer": ("ulcerated", "with central ulceration"), "none": ("",)}
BORDER_WORDS = {"well-defined": ("well-defined", "well-demarcated", "sharply circumscribed"),
                "ill-defined": ("ill-defined", "poorly demarcated", "with blurred margins")}
COUNT_WORDS = {"single": ("a solitary", "a single", "one"), "few": ("a few", "several"),
               "multiple": ("multiple", "numerous", "many")}
DISTRIBUTION_WORDS = {"solitary": "", "grouped": "in a grouped cluster",
                      "linear": "in a linear arrangement", "annular": "in an annular ring",
                      "scattered": "scattered across the area",
                      "symmetric": "in a symmetric distribution"}
MODALITY_WORDS = {"clinical": ("Clinical photograph", "Close-up clinical image", "Photo"),
                  "dermoscopic": ("Dermoscopic image", "Dermoscopy", "Dermatoscopic view")}


def _pick(rng, options):
    return options[int(rng.integers(len(options)))]


def lesion_phrase(attrs, rng):
    """'multiple well-defined erythematous scaly plaques' with random synonyms and omissions."""
    plural = attrs.count != "single"
    noun = vocab.LESION_PLURALS[attrs.lesion_type] if plural else attrs.lesion_type
    colours = " and ".join(_pick(rng, COLOUR_WORDS[c]) for c in attrs.colours)
    parts = [_pick(rng, COUNT_WORDS[attrs.count])]
    border = _pick(rng, BORDER_WORDS[attrs.border_definition]) if rng.random() < 0.7 else ""
    if border and not border.startswith("with "):   # "with blurred margins" follows the noun
        parts.append(border)
        border = ""
    parts.append(colours)
    surface = _pick(rng, SURFACE_WORDS[attrs.surface])
    if " " not in surface and attrs.surface != "smooth":
        parts.append(surface)
        surface = ""
    parts.append(noun)
    if border:
        parts.append(border)
    if attrs.surface != "smooth" and surface:
        parts.append(surface)
    if attrs.border_regularity == "irregular" and rng.random() < 0.8:
        parts.append("with irregular borders")
    secondary = _pick(rng, SECONDARY_WORDS[attrs.secondary])
    if secondary:
        parts.append(secondary)
    if attrs.shape in ("annular", "linear", "oval") and rng.random() < 0.6:
        parts.append(f"({attrs.shape} in shape)")
    return " ".join(p for p in parts if p).replace("a solitary a", "a solitary")


def _diagnosis_name(attrs, rng):
    condition = CONDITIONS_BY_NAME[attrs.condition]
    return _pick(rng, (condition.name,) * 3 + condition.synonyms)


def caption(attrs, rng):
    """A Derm1M-style free-text caption."""
    lesions = lesion_phrase(attrs, rng)
    site = f"on the {attrs.body_site}"
    distribution = DISTRIBUTION_WORDS[attrs.distribution]
    where = " ".join(p for p in (site if rng.random() < 0.8 else "", distribution) if p)
    template = int(rng.integers(4))
    if template == 0:
        first = f"{_pick(rng, MODALITY_WORDS[attrs.modality])} showing {lesions} {where}."
    elif template == 1:
        first = f"There are {lesions} {where}." if attrs.count != "single" else \
            f"There is {lesions} {where}."
    elif template == 2:
        first = f"{lesions[0].upper()}{lesions[1:]} {where}."
    else:
        first = f"Examination reveals {lesions} {where}."
    sentences = [" ".join(first.split()).replace(" .", ".")]   # `where` may be empty
    if rng.random() < 0.75:
        dx = _diagnosis_name(attrs, rng)
        sentences.append(_pick(rng, (f"Diagnosis: {dx}.", f"Consistent with {dx}.",
                                     f"The findings suggest {dx}.", f"This is {dx}.")))
    if rng.random() < 0.4:
        sentences.append(f"Fitzpatrick skin type {vocab.FITZPATRICK_ROMAN[attrs.fitzpatrick]}.")
    if attrs.symptoms and rng.random() < 0.5:
        sentences.append("The patient is asymptomatic." if attrs.symptoms == ["asymptomatic"]
                         else f"The patient reports {' and '.join(attrs.symptoms)}.")
    return " ".join(sentences)


def differential(attrs, rng):
    """Ranked [(diagnosis, likelihood)]: the truth first, then look-alikes from its group."""
    condition = CONDITIONS_BY_NAME[attrs.condition]
    same_group = [c.name for c in SYNTH_CONDITIONS
                  if c.path == condition.path and c is not condition]
    same_type = [c.name for c in SYNTH_CONDITIONS if c is not condition and
                 c.name not in same_group and attrs.lesion_type in c.lesion_types]
    pool = same_group + same_type or [c.name for c in SYNTH_CONDITIONS if c is not condition]
    alternatives = rng.permutation(pool)[:2].tolist()
    top = round(float(rng.uniform(0.55, 0.8)), 2)
    rest = round((1.0 - top) * 0.7, 2)
    likelihoods = [top, rest, round((1.0 - top - rest) * 0.8, 2)]
    return list(zip([condition.name] + alternatives, likelihoods))


def benchmark_answers(attrs, diff, description):
    """Ground truth for every default DermaBench-style question, keyed by question id."""
    return {
        "Q01_quality": attrs.image_quality, "Q02_modality": attrs.modality,
        "Q03_skin_type": vocab.FITZPATRICK_ROMAN[attrs.fitzpatrick],
        "Q04_site": attrs.body_site, "Q05_count": attrs.count,
        "Q06_distribution": attrs.distribution, "Q07_shape": attrs.shape,
        "Q08_border_regularity": attrs.border_regularity,
        "Q09_border_definition": attrs.border_definition, "Q10_size": attrs.size,
        "Q11_colour": list(attrs.colours), "Q12_elementary": [attrs.lesion_type],
        "Q13_surface": [attrs.surface], "Q14_secondary": [attrs.secondary],
        "Q15_artefacts": list(attrs.artefacts) or ["none"], "Q16_diagnosis": attrs.condition,
        "Q17_differential": [name for name, _ in diff], "Q18_malignancy": attrs.malignancy,
        "Q19_category": attrs.category, "Q20_urgency": attrs.urgency,
        "Q21_description": description,
        "Q22_summary": f"{description.split('.')[0]}, most likely {attrs.condition}.",
    }


# (question variants, answer function) for open VQA turns; answers vary in wording too.
_OPEN_QA = (
    (("What colour is the lesion?", "Describe the colour of the lesion.",
      "What colours do you see?"),
     lambda a, r: _pick(r, ("The lesion is {}.", "It appears {}.", "{}.")).format(
         " and ".join(a.colours)).capitalize()),
    (("What type of primary lesion is this?", "What is the elementary lesion?",
      "Which morphology best describes the lesion?"),
     lambda a, r: _pick(r, ("It is a {}.", "The primary lesion is a {}.", "{}.")).format(
         a.lesion_type).capitalize()),
    (("How many lesions are there?", "Is this a single lesion or several?"),
     lambda a, r: {"single": "There is a single lesion.", "few": "There are a few lesions.",
                   "multiple": "There are multiple lesions."}[a.count]),
    (("What is the most likely diagnosis?", "What condition is this?",
      "What do you think this is?"),
     lambda a, r: _pick(r, ("The most likely diagnosis is {}.", "This is most consistent with "
                            "{}.", "{}.")).format(a.condition).capitalize()),
    (("Is this lesion malignant?", "Should I worry that this is cancer?"),
     lambda a, r: vocab.MALIGNANCY_ANSWERS[a.malignancy]),
    (("Is the border regular?", "Describe the border."),
     lambda a, r: f"The border is {a.border_regularity} and {a.border_definition}."),
    (("What is the surface like?", "Describe the surface."),
     lambda a, r: f"The surface is {a.surface}" + (
         f", with {a.secondary}." if a.secondary != "none" else ".")),
    (("Is this a dermoscopic image?", "What imaging modality is this?"),
     lambda a, r: f"This is a {a.modality} image."),
)


def vqa_conversations(attrs, image_rel, rng, n_conversations, report_json,
                      letter_answers="option_first"):
    """LLaVA-format records: open multi-turn Q&A, a lettered multiple-choice question, a report."""
    records = []
    for k in range(n_conversations):
        kind = ("open", "choice", "report")[k % 3]
        turns = []
        if kind == "open":
            for qi in rng.permutation(len(_OPEN_QA))[: int(rng.integers(1, 4))]:
                questions, answer = _OPEN_QA[qi]
                turns += [_pick(rng, questions), answer(attrs, rng)]
        elif kind == "choice":
            turns += list(_multiple_choice(attrs, rng, letter_answers))
        else:
            turns += [_pick(rng, ("Describe this lesion as a structured JSON report.",
                                  "Write the structured lesion report for this image.")),
                      report_json]
        conversation = []
        for i, text in enumerate(turns):
            if i == 0:
                text = "<image>\n" + text
            conversation.append({"from": "human" if i % 2 == 0 else "gpt", "value": text})
        records.append({"id": f"{attrs.image_id}_c{k}", "image": image_rel,
                        "conversations": conversation})
    return records


def _multiple_choice(attrs, rng, letter_answers="option_first"):
    """(question with lettered options, answer). `option_first` answers "Plaque (D).": the
    option is read off the image first, then its letter copied, which a 135M LM learns where
    it does not learn the letter alone (docs/EXPERIMENTS.md)."""
    family = _pick(rng, ("diagnosis", "lesion_type", "colour", "malignancy"))
    truth, pool = {
        "diagnosis": (attrs.condition, [c.name for c in SYNTH_CONDITIONS]),
        "lesion_type": (attrs.lesion_type, list(vocab.LESION_TYPES)),
        "colour": (attrs.colours[0], [c for c in vocab.COLOURS if c not in attrs.colours[1:]]),
        "malignancy": (attrs.malignancy, list(vocab.MALIGNANCY)),
    }[family]
    distractors = rng.permutation([p for p in pool if p != truth])[:3].tolist()
    options = rng.permutation([truth] + distractors).tolist()
    letters = [option_label(i) for i in range(4)]
    question = {"diagnosis": "Which diagnosis fits best?", "lesion_type": "Which primary "
                "lesion is shown?", "colour": "What is the main colour of the lesion?",
                "malignancy": "Is the lesion benign, premalignant or malignant?"}[family]
    lines = [question] + [f"{letters[i]}. {o}" for i, o in enumerate(options)]
    lines.append(LETTER_INSTRUCTION[letter_answers])
    answer = letters[options.index(truth)]
    reply = _pick(rng, (f"{answer}", f"{answer}. {truth}"))   # drawn either way: same stream
    if letter_answers == "option_first":
        reply = f"{truth.capitalize()} ({answer})."
    return "\n".join(lines), reply


def texts_for(attrs, image_rel, vqa_per_image, letter_answers="option_first"):
    """Every text output of one image, from a generator seeded by the image alone."""
    from dermvlm.synth.sample import sample_seed  # local: sample imports nothing from here
    rng = np.random.default_rng(sample_seed(attrs.seed, attrs.index) ^ 0x7E47)
    full = caption(attrs, rng)
    diff = differential(attrs, rng)
    report = report_from_attributes(attrs, diff)
    report_json = json.dumps(report.model_dump(exclude_none=True), separators=(",", ":"))
    description = f"{lesion_phrase(attrs, rng)} on the {attrs.body_site}.".capitalize()
    return {
        "caption": full,
        "truncated_caption": full.split(". ")[0].rstrip(".") + ".",
        "differential": diff,
        "report": report,
        "answers": benchmark_answers(attrs, diff, description),
        "vqa": vqa_conversations(attrs, image_rel, rng, vqa_per_image, report_json,
                                 letter_answers),
    }
