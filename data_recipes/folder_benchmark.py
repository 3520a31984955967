"""Any labelled image folder (ROOT/<class>/*.jpg) -> a DermaBench-style question set that every
adapter can be scored on: diagnosis (single choice, the folder's classes as options),
malignancy (benign / premalignant / malignant, for classes whose malignancy is known) and, with
--modality, the imaging modality. With --skin-tone ita each answer row carries a Fitzpatrick
group estimated from the skin around the lesion (dermvlm.skintone), so per-tone breakdowns
work on sets without a Fitzpatrick column.

    python -m data_recipes.folder_benchmark --root ../shared/realdata/isic9/Test \\
        --out data/isic9_bench --modality dermoscopic --skin-tone ita
    dermvlm eval dermabench --questions data/isic9_bench/questions.json \\
        --answers data/isic9_bench/answers.jsonl --model default --out bench/isic9

A class's malignancy comes from the ontology when the class is one of its diagnoses, else from
--malignant / --premalignant / --benign (comma-separated class names); classes named nowhere
get no malignancy question.
"""
import json
import sys
from pathlib import Path

from dermvlm.cliargs import OneLineParser
from dermvlm.errors import DataError, DermvlmError
from dermvlm.labelled import labelled_images
from dermvlm.ontology import CONDITIONS_BY_NAME
from dermvlm.questions import Question, questions_to_json
from dermvlm.vocab import MALIGNANCY, MODALITIES


def class_malignancy(classes, flags):
    """{class: benign | premalignant | malignant} for the classes whose malignancy is known."""
    known = {c: CONDITIONS_BY_NAME[c].malignancy for c in classes if c in CONDITIONS_BY_NAME}
    for level, names in flags.items():
        for name in (n.strip() for n in (names or "").split(",") if n.strip()):
            if name not in classes:
                raise DataError(f"--{level}: {name!r} is not a class folder of this set "
                                f"(classes: {', '.join(classes)})")
            known[name] = level
    return known


def build(root, modality=None, skin_tone=None, flags=None):
    """(questions, answer rows) for a labelled folder."""
    items = labelled_images(root)
    classes = sorted({label for _, label in items})
    if len(classes) < 2:
        raise DataError(f"{root}: a benchmark needs at least two class folders, found "
                        f"{len(classes)}")
    malignancy = class_malignancy(classes, flags or {})
    questions = [Question("diagnosis", "diagnosis", "single",
                          "Which diagnosis fits this lesion best?", tuple(classes))]
    if malignancy:
        questions.append(Question("malignancy", "malignancy", "single",
                                  "Is the lesion benign, premalignant or malignant?", MALIGNANCY))
    if modality:
        questions.append(Question("modality", "modality", "single",
                                  "Is this a clinical photograph or a dermoscopic image?",
                                  MODALITIES))
    rows = []
    for path, label in items:
        extra = {}
        if skin_tone == "ita":
            from dermvlm.imaging import try_open_image
            from dermvlm.skintone import estimated_fitzpatrick_group
            image = try_open_image(path)
            if image is not None:
                group, ita = estimated_fitzpatrick_group(image)
                extra = {"fitzpatrick_group": group, "ita": None if ita is None else
                         round(ita, 1)}
        answers = {"diagnosis": label, "malignancy": malignancy.get(label),
                   "modality": modality}
        for question in questions:
            if answers[question.id] is not None:
                rows.append({"image": str(Path(path).resolve()), "image_id": Path(path).stem,
                             "question_id": question.id, "answer": answers[question.id],
                             **extra})
    return questions, rows


def main(argv=None):
    parser = OneLineParser(prog="python -m data_recipes.folder_benchmark",
                           description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="folder of class subfolders")
    parser.add_argument("--out", required=True, help="writes questions.json, answers.jsonl")
    parser.add_argument("--modality", choices=MODALITIES, help="every image's modality")
    parser.add_argument("--skin-tone", choices=("ita",), help="estimate each image's tone")
    for level in MALIGNANCY:
        parser.add_argument(f"--{level}", help=f"classes that are {level}")
    args = parser.parse_args(argv)
    try:
        questions, rows = build(args.root, args.modality, args.skin_tone,
                                {level: getattr(args, level) for level in MALIGNANCY})
    except DermvlmError as exc:
        print(f"data_recipes.folder_benchmark: error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "questions.json").write_text(questions_to_json(questions, name=f"folder:{args.root}"))
    (out / "answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {"questions": [q.id for q in questions], "answers": len(rows),
               "images": len({r["image"] for r in rows}), "out": str(out)}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
