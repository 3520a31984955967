"""HAM10000 metadata -> manifest (+ shards): diagnosis, lesion id, age, sex and site.

    python -m data_recipes.ham10000 --csv HAM10000_metadata.csv --images ham_images/ --out out/

Image file = <image_id>.jpg anywhere under --images (class subfolders are searched). `dx` is
mapped to the ontology (akiec -> actinic keratosis, bkl -> pigmented benign keratosis, nv ->
melanocytic nevus, ...); `lesion_id` is kept so that splits can keep one lesion's images on one
side. Captions state only what the row says (dermvlm.labeltext).
"""
from pathlib import Path

from dermvlm.data.real import ImageIndex, truth_record
from dermvlm.data.realdata import ham_fields
from dermvlm.data.recipe_cli import recipe_parser, run
from dermvlm.data.tables import convert_table

REQUIRED = ("lesion_id", "image_id", "dx")
COLUMNS = REQUIRED + ("dx_type", "age", "sex", "localization", "dataset")


def record_from_row(row, row_id, context):
    images, split = context
    if not row["image_id"]:
        return "missing image: empty image_id"
    fields = ham_fields(row)
    if isinstance(fields, str):
        return fields
    return truth_record(
        fields.pop("label"), images.path(row["image_id"]), "dermoscopic", split, "ham10000",
        row_id, **fields,
        meta={"lesion_id": row["lesion_id"], "dx_type": row.get("dx_type") or None})


def convert(args):
    images = ImageIndex(Path(args.images) if args.images else Path(args.table).parent)
    return convert_table("ham10000", args, REQUIRED, record_from_row, (images, args.split))


def build_parser():
    parser = recipe_parser("python -m data_recipes.ham10000", __doc__.strip().splitlines()[0],
                           ", ".join(COLUMNS))
    parser.add_argument("--images", help="folder holding <image_id>.jpg (searched recursively)")
    return parser


def main(argv=None):
    return run(convert, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
