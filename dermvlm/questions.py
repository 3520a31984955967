"""The DermaBench-style question schema: each question's id, domain, type and options.

A questions file is JSON: {"name": ..., "questions": [{"id", "domain", "type", "prompt",
"options"}, ...]}. `type` is single (one option), multi (a set of options) or open (free text,
options empty). The default 22-question schema ships here; `data_recipes.dermabench` converts a
real annotation table into the same file.
"""
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from dermvlm import vocab
from dermvlm.errors import DataError
from dermvlm.ontology import CONDITIONS

QUESTION_TYPES = ("single", "multi", "open")


@dataclass(frozen=True)
class Question:
    id: str
    domain: str
    type: str          # single | multi | open
    prompt: str
    options: tuple = ()


_DIAGNOSES = tuple(c.name for c in CONDITIONS)
_SKIN_TYPES = tuple(vocab.FITZPATRICK_ROMAN.values())

DEFAULT_QUESTIONS = (
    Question("Q01_quality", "image quality", "single",
             "How would you rate the technical quality of this image?", vocab.IMAGE_QUALITY),
    Question("Q02_modality", "modality", "single",
             "Is this a clinical photograph or a dermoscopic image?", vocab.MODALITIES),
    Question("Q03_skin_type", "skin type", "single",
             "What is the Fitzpatrick skin type of the patient?", _SKIN_TYPES),
    Question("Q04_site", "anatomic site", "single",
             "Which anatomic site is shown?", vocab.BODY_SITES),
    Question("Q05_count", "lesion count", "single",
             "How many lesions are visible?", vocab.COUNTS),
    Question("Q06_distribution", "distribution", "single",
             "What is the distribution or arrangement of the lesions?", vocab.DISTRIBUTIONS),
    Question("Q07_shape", "shape", "single", "What is the shape of the lesion?", vocab.SHAPES),
    Question("Q08_border_regularity", "border", "single",
             "Is the border of the lesion regular or irregular?", vocab.BORDER_REGULARITY),
    Question("Q09_border_definition", "border", "single",
             "Is the lesion well-defined or ill-defined?", vocab.BORDER_DEFINITION),
    Question("Q10_size", "size", "single", "What is the approximate size of the lesion?",
             vocab.SIZES),
    Question("Q11_colour", "colour", "multi", "Which colours does the lesion show?",
             vocab.COLOURS),
    Question("Q12_elementary", "elementary lesion type", "multi",
             "What are the elementary (primary) lesion types?", vocab.LESION_TYPES),
    Question("Q13_surface", "surface features", "multi",
             "Which surface features are present?", vocab.SURFACES),
    Question("Q14_secondary", "secondary changes", "multi",
             "Which secondary changes are present?", vocab.SECONDARY_CHANGES),
    Question("Q15_artefacts", "image quality", "multi",
             "Which artefacts are present in the image?", vocab.ARTEFACTS + ("none",)),
    Question("Q16_diagnosis", "diagnosis", "single", "What is the most likely diagnosis?",
             _DIAGNOSES),
    Question("Q17_differential", "diagnosis", "multi",
             "Which diagnoses belong in the differential?", _DIAGNOSES),
    Question("Q18_malignancy", "malignancy", "single",
             "Is this lesion benign, premalignant or malignant?", vocab.MALIGNANCY),
    Question("Q19_category", "category", "single",
             "Which disease category does this belong to?", vocab.CATEGORIES),
    Question("Q20_urgency", "urgency", "single", "How urgently should this be seen?",
             vocab.URGENCY),
    Question("Q21_description", "description", "open",
             "Describe the lesion as a dermatologist would."),
    Question("Q22_summary", "summary", "open",
             "Summarise the findings and the most likely diagnosis in one sentence."),
)


def questions_to_json(questions, name="dermvlm-default-22"):
    return json.dumps({"name": name, "questions": [asdict(q) for q in questions]}, indent=1)


def load_questions(path):
    """Read and validate a questions file; errors name the file and the question."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read questions file: {exc}") from None
    items = data.get("questions") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise DataError(f"{path}: expected an object with a 'questions' list")
    questions, seen = [], set()
    for i, item in enumerate(items):
        where = f"{path}: question {i}"
        if not isinstance(item, dict):
            raise DataError(f"{where}: expected an object")
        missing = {"id", "domain", "type", "prompt"} - set(item)
        if missing:
            raise DataError(f"{where}: missing field(s) {', '.join(sorted(missing))}")
        if item["type"] not in QUESTION_TYPES:
            raise DataError(f"{where} ({item['id']}): unknown type {item['type']!r}; "
                            f"expected one of {', '.join(QUESTION_TYPES)}")
        options = tuple(item.get("options") or ())
        if item["type"] != "open" and len(options) < 2:
            raise DataError(f"{where} ({item['id']}): a {item['type']} question needs >= 2 "
                            "options")
        if item["id"] in seen:
            raise DataError(f"{where}: duplicate question id {item['id']!r}")
        seen.add(item["id"])
        questions.append(Question(item["id"], item["domain"], item["type"], item["prompt"],
                                  options))
    return questions
