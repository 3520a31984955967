"""SkinCon concept annotations (Fitzpatrick17k or DDI subsets) -> manifest of concept labels.

    python -m data_recipes.skincon --csv annotations_fitzpatrick17k.csv --images fitz/ --out out/

`ImageID` is the image file name inside --images. Rows marked `Do not consider this image` = 1
are rejected with that reason.
"""
import os
from pathlib import Path

from data_recipes.skincap import EXCLUDE, concepts_present
from dermvlm.data.recipe_cli import recipe_parser, run
from dermvlm.data.records import Record
from dermvlm.data.tables import convert_table

REQUIRED = ("ImageID",)


def record_from_row(row, row_id, context):
    images, split = context
    concepts = concepts_present(row, row_id)
    if not row["ImageID"]:
        return "missing image: empty ImageID"
    if (row.get(EXCLUDE) or "0").startswith("1"):
        return f"excluded: '{EXCLUDE}' is 1"
    if isinstance(concepts, str):
        return concepts
    captions = [f"A skin image showing {', '.join(concepts).lower()}."] if concepts else []
    return Record(image=os.path.join(images, row["ImageID"]), captions=captions,
                  concepts=concepts, split=split, source="skincon", row_id=row_id)


def convert(args):
    images = str(Path(args.images) if args.images else Path(args.table).parent)
    return convert_table("skincon", args, REQUIRED, record_from_row, (images, args.split))


def build_parser():
    parser = recipe_parser("python -m data_recipes.skincon", __doc__.strip().splitlines()[0],
                           "ImageID, the 48 SkinCon concept columns, " + EXCLUDE)
    parser.add_argument("--images", help="folder holding the images named by ImageID")
    return parser


def main(argv=None):
    return run(convert, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
