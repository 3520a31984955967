"""SkinCAP (captions + 48 SkinCon concepts) -> manifest (+ shards).

    python -m data_recipes.skincap --csv skincap_v240623.csv --images /data/skincap --out out/

Rows marked `Do not consider this image` = 1 are rejected with that reason.
"""
import os
from pathlib import Path

from dermvlm.data.derm1m import clean
from dermvlm.data.recipe_cli import recipe_parser, run
from dermvlm.data.records import Record
from dermvlm.data.tables import convert_table
from dermvlm.vocab import SKINCON_CONCEPTS

REQUIRED = ("id", "skincap_file_path", "disease", "caption_zh_polish_en")
EXCLUDE = "Do not consider this image"


def concepts_present(row, where):
    """SkinCon concept names whose column is 1; a non-0/1 value is a reject reason (str)."""
    present = []
    for concept in SKINCON_CONCEPTS:
        value = (row.get(concept) or "0").strip()
        if value not in ("0", "1", "0.0", "1.0", ""):
            return f"bad concept value: column {concept!r} is {value!r} in {where}, expected 0/1"
        if value.startswith("1"):
            present.append(concept)
    return present


def record_from_row(row, row_id, context):
    images, split = context
    caption, label = clean(row["caption_zh_polish_en"]), clean(row["disease"])
    concepts = concepts_present(row, row_id)
    if (row.get(EXCLUDE) or "0").startswith("1"):
        return f"excluded: '{EXCLUDE}' is 1"
    if not caption:
        return "empty caption"
    if isinstance(concepts, str):
        return concepts
    return Record(image=os.path.join(images, row["skincap_file_path"]), captions=[caption],
                  label=label, hierarchy=[label] if label else [], concepts=concepts,
                  split=split, source="skincap", row_id=row_id, meta={"id": row["id"]})


def convert(args):
    images = str(Path(args.images) if args.images else Path(args.table).parent)
    return convert_table("skincap", args, REQUIRED, record_from_row, (images, args.split))


def build_parser():
    parser = recipe_parser("python -m data_recipes.skincap", __doc__.strip().splitlines()[0],
                           ", ".join(REQUIRED) + ", the 48 SkinCon concept columns, " + EXCLUDE)
    parser.add_argument("--images", help="folder skincap_file_path is relative to")
    return parser


def main(argv=None):
    return run(convert, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
