"""ISIC 2019 one-hot ground truth -> manifest (+ shards): one diagnosis per dermoscopic image.

    python -m data_recipes.isic2019 --csv ISIC_2019_Training_GroundTruth.csv --images isic/ \\
        --out out/

Columns MEL NV BCC AK BKL DF VASC SCC UNK hold 1 for the image's class; a row must name exactly
one. UNK rows are rejected (no diagnosis to learn from). Image file = <image>.jpg anywhere under
--images; `_downsampled` copies keep their own names.
"""
from pathlib import Path

from dermvlm.data.real import ImageIndex, truth_record
from dermvlm.data.recipe_cli import recipe_parser, run
from dermvlm.data.tables import convert_table

CLASSES = {"MEL": "melanoma", "NV": "melanocytic nevus", "BCC": "basal cell carcinoma",
           "AK": "actinic keratosis", "BKL": "pigmented benign keratosis",
           "DF": "dermatofibroma", "VASC": "vascular lesion",
           "SCC": "squamous cell carcinoma", "UNK": None}
REQUIRED = ("image",) + tuple(CLASSES)


def record_from_row(row, row_id, context):
    images, split = context
    if not row["image"]:
        return "missing image: empty image"
    try:
        hot = [c for c in CLASSES if float(row[c] or 0) == 1.0]
    except ValueError:
        return "bad value: a class column is not 0 or 1"
    if len(hot) != 1:
        return f"bad value: {len(hot)} classes marked (expected exactly one)"
    if CLASSES[hot[0]] is None:
        return "unknown label: UNK"
    return truth_record(CLASSES[hot[0]], images.path(row["image"]), "dermoscopic", split,
                        "isic2019", row_id)


def convert(args):
    images = ImageIndex(Path(args.images) if args.images else Path(args.table).parent)
    return convert_table("isic2019", args, REQUIRED, record_from_row, (images, args.split))


def build_parser():
    parser = recipe_parser("python -m data_recipes.isic2019", __doc__.strip().splitlines()[0],
                           ", ".join(REQUIRED))
    parser.add_argument("--images", help="folder holding <image>.jpg (searched recursively)")
    return parser


def main(argv=None):
    return run(convert, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
