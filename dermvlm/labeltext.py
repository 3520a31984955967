"""Captions and questions for a real image from what its labels say, and nothing more.

A real set gives a diagnosis label and sometimes the patient's age, sex and the body site
(HAM10000, PAD-UFES-20). The texts name the diagnosis, its place in the ontology, its malignancy,
the imaging modality and those table fields; they never name a colour, border or shape, which
no label states.

    truth = LabelTruth.from_label("nevus", modality="dermoscopic", age=45, sex="female")
    truth.captions()            # ["A dermoscopic image of melanocytic nevus.", ...]
    truth.closed_questions(rng, options=ISIC9_CLASSES)   # lettered diagnosis + malignancy
"""
from dataclasses import dataclass

from dermvlm.choices import LETTERS
from dermvlm.errors import DataError
from dermvlm.ontology import find_condition
from dermvlm.vocab import MALIGNANCY_ANSWERS

# the ISIC archive's 9-class set (the folder names of ../shared/realdata/isic9)
ISIC9_CLASSES = ("actinic keratosis", "basal cell carcinoma", "dermatofibroma", "melanoma",
                 "nevus", "pigmented benign keratosis", "seborrheic keratosis",
                 "squamous cell carcinoma", "vascular lesion")
MALIGNANCY_WORDS = {"benign": "benign", "premalignant": "premalignant (precancerous)",
                    "malignant": "malignant"}
SEX_WORDS = {"male": "man", "female": "woman"}


@dataclass
class LabelTruth:
    label: str                  # the set's own name for the class ("nevus")
    condition: object           # its dermvlm.ontology.Condition
    modality: str | None = None
    age: int | None = None
    sex: str | None = None      # male | female
    site: str | None = None     # the table's words ("lower extremity")

    @classmethod
    def from_label(cls, label, **fields):
        condition = find_condition(label)
        if condition is None:
            raise DataError(f"diagnosis {label!r} is not in the ontology (nor a synonym of "
                            "one of its conditions)")
        return cls(label=label, condition=condition, **fields)

    @property
    def name(self):
        return self.condition.name

    @property
    def malignancy(self):
        return self.condition.malignancy

    @property
    def group(self):
        """'malignant melanocytic', 'benign epidermal', 'premalignant' ..."""
        last = self.condition.path[-1].lower()
        kind = "" if "lesions" in last or "neoplasms" in last else f" {last}"
        return f"{self.malignancy}{kind}"

    def patient_sentence(self):
        """'The patient is a 70-year-old man; the lesion is on the back.' (what is known)."""
        sex = SEX_WORDS.get(self.sex)
        if self.age is not None and sex:
            who = [f"The patient is a {self.age}-year-old {sex}"]
        elif self.age is not None:
            who = [f"The patient is {self.age} years old"]
        else:
            who = [f"The patient is a {sex}"] if sex else []
        if self.site:
            who.append(f"the lesion is on the {self.site}")
        text = "; ".join(who)
        return text[0].upper() + text[1:] + "." if text else ""

    def captions(self):
        """Several wordings, best first (the trainer samples among them and their sentences).
        The zero-shot templates' phrasing ("a skin image of X") is among them on purpose."""
        modality = self.modality or "skin"
        article = "An" if modality[0] in "aeiou" else "A"
        names = list(dict.fromkeys([self.name, self.label]))
        path = " > ".join(self.condition.path)
        patient = self.patient_sentence()
        out = []
        for name in names:
            out += [f"{article} {modality} image of {name}. {name[0].upper() + name[1:]} is a "
                    f"{MALIGNANCY_WORDS[self.malignancy]} lesion. {patient}".strip(),
                    f"This is a skin image of {name}, a {self.group} lesion.",
                    f"{name[0].upper() + name[1:]} ({path}), seen in a {modality} image."]
        return out

    def closed_questions(self, rng, options=ISIC9_CLASSES):
        """LLaVA turns: a lettered diagnosis question (the truth and three other `options`,
        answered option first, as SynthDerm's are) and the malignancy question."""
        others = [o for o in options if find_condition(o) is not self.condition]
        choices = [self.label] + [others[i] for i in rng.permutation(len(others))[:3]]
        choices = [choices[i] for i in rng.permutation(len(choices))]
        letter = LETTERS[choices.index(self.label)]
        lines = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
        diagnosis = [{"from": "human", "value": f"<image>\nWhich diagnosis fits this lesion "
                      f"best?\n{lines}\nAnswer with the option and its letter."},
                     {"from": "gpt", "value": f"{self.label[0].upper() + self.label[1:]} "
                      f"({letter})."}]
        malignancy = [{"from": "human", "value": "<image>\nIs this lesion malignant?"},
                      {"from": "gpt", "value": MALIGNANCY_ANSWERS[self.malignancy]}]
        return [diagnosis, malignancy]
