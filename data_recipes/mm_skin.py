"""MM-Skin VQA (image, question, answer) -> manifest with one question-answer pair per record.

    python -m data_recipes.mm_skin --csv mm_skin_vqa.csv --images mm_skin/ --out out/
"""
import os
from pathlib import Path

from dermvlm.data.recipe_cli import recipe_parser, run
from dermvlm.data.records import Record
from dermvlm.data.tables import convert_table

REQUIRED = ("image", "question", "answer")


def record_from_row(row, row_id, context):
    images, split = context
    if not row["image"]:
        return "missing image: empty image column"
    if not row["question"] or not row["answer"]:
        return "empty question or answer"
    return Record(image=os.path.join(images, row["image"]), split=split, source="mm_skin",
                  row_id=row_id, meta={"conversations": [
                      {"from": "human", "value": "<image>\n" + row["question"]},
                      {"from": "gpt", "value": row["answer"]}]})


def convert(args):
    images = str(Path(args.images) if args.images else Path(args.table).parent)
    return convert_table("mm_skin", args, REQUIRED, record_from_row, (images, args.split),
                         one_row_per_image=False)


def build_parser():
    parser = recipe_parser("python -m data_recipes.mm_skin", __doc__.strip().splitlines()[0],
                           ", ".join(REQUIRED))
    parser.add_argument("--images", help="folder the image column is relative to")
    return parser


def main(argv=None):
    return run(convert, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
