"""A DermaBench-style annotation table (one row per image x question) -> questions file,
answers file and manifest, in the format `dermvlm eval dermabench` reads.

    python -m data_recipes.dermabench --csv annotations.csv --images ddi/ --out bench/

Columns: image, question_id, question, type (single | multi | open), domain, options and answer
(several values separated by '|'), fitzpatrick (1-6, I-VI, or the DDI groups 12/34/56).
"""
import json
import os
from pathlib import Path

from dermvlm.data.recipe_cli import recipe_parser, run
from dermvlm.data.records import Record, read_manifest
from dermvlm.data.tables import convert_table
from dermvlm.questions import QUESTION_TYPES, Question, questions_to_json
from dermvlm.vocab import FITZPATRICK_ROMAN, fitzpatrick_group

REQUIRED = ("image", "question_id", "question", "type", "domain", "options", "answer")
COLUMNS = REQUIRED + ("fitzpatrick",)
_ROMAN = {v: k for k, v in FITZPATRICK_ROMAN.items()}
_GROUPS = {"12": "I-II", "34": "III-IV", "56": "V-VI"}


def parse_fitzpatrick(value):
    """(type 1-6 or None, group or None) from '3', 'III', '34' or ''."""
    value = (value or "").strip()
    if value in _GROUPS:
        return None, _GROUPS[value]
    fst = _ROMAN.get(value.upper()) or (int(value) if value.isdigit() else None)
    return (fst, fitzpatrick_group(fst)) if fst in range(1, 7) else (None, None)


def _question_problem(row, questions):
    if row["type"] not in QUESTION_TYPES:
        return f"unknown question type: {row['type']!r} (expected single, multi or open)"
    options = tuple(o.strip() for o in row["options"].split("|") if o.strip())
    question = Question(row["question_id"], row["domain"], row["type"], row["question"],
                        options)
    known = questions.setdefault(question.id, question)
    if known != question:
        return f"conflicting question definition: {question.id} differs from its first row"
    answers = [a.strip() for a in row["answer"].split("|") if a.strip()]
    if not answers:
        return "empty answer"
    if question.type == "single" and (len(answers) != 1 or answers[0] not in options):
        return f"answer not in options: {row['answer']!r}"
    if question.type == "multi" and not set(answers) <= set(options):
        return f"answer not in options: {sorted(set(answers) - set(options))}"
    return None


def record_from_row(row, row_id, context):
    """A Record with the answer in meta (questions are collected in context: serial only)."""
    images, split, questions = context
    problem = _question_problem(row, questions)
    if problem:
        return problem
    fst, group = parse_fitzpatrick(row.get("fitzpatrick"))
    values = [a.strip() for a in row["answer"].split("|") if a.strip()]
    answer = {"multi": values, "single": values[0]}.get(row["type"], row["answer"])
    return Record(image=os.path.join(images, row["image"]), fitzpatrick=fst,
                  fitzpatrick_group=group, split=split, source="dermabench", row_id=row_id,
                  meta={"question_id": row["question_id"], "answer": answer,
                        "image_id": Path(row["image"]).stem})


def convert(args):
    images = str(Path(args.images) if args.images else Path(args.table).parent)
    questions = {}
    report = convert_table("dermabench", args, REQUIRED, record_from_row,
                           (images, args.split, questions), one_row_per_image=False,
                           parallel=False)
    out = Path(args.out)
    (out / "dermabench_questions.json").write_text(
        questions_to_json(list(questions.values()), name=Path(args.table).stem))
    with open(out / "dermabench_answers.jsonl", "w", encoding="utf-8") as f:
        for record in read_manifest(out / "manifest.jsonl"):
            f.write(json.dumps({"image_id": record.meta["image_id"], "image": record.image,
                                "question_id": record.meta["question_id"],
                                "answer": record.meta["answer"],
                                "fitzpatrick": record.fitzpatrick,
                                "fitzpatrick_group": record.fitzpatrick_group},
                               ensure_ascii=False) + "\n")
    report["questions"] = len(questions)
    return report


def build_parser():
    parser = recipe_parser("python -m data_recipes.dermabench",
                           __doc__.strip().splitlines()[0], ", ".join(COLUMNS))
    parser.add_argument("--images", help="folder the image column is relative to")
    return parser


def main(argv=None):
    return run(convert, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
