"""PAD-UFES-20 metadata -> manifest (+ shards): smartphone photos with diagnosis, patient and
lesion ids, age, sex, Fitzpatrick type and body region.

    python -m data_recipes.pad_ufes20 --csv metadata.csv --images pad_images/ --out out/

Image file = `img_id` anywhere under --images. `diagnostic` is mapped to the ontology (ACK ->
actinic keratosis, NEV -> melanocytic nevus, SEK -> seborrhoeic keratosis, ...). The table's
own spelling `fitspatrick` is read. Captions state only what the row says.
"""
from pathlib import Path

from dermvlm.data.real import ImageIndex, truth_record
from dermvlm.data.realdata import PAD_DIAGNOSTIC as DIAGNOSTIC
from dermvlm.data.recipe_cli import recipe_parser, run
from dermvlm.data.tables import convert_table

REQUIRED = ("patient_id", "lesion_id", "img_id", "diagnostic")
COLUMNS = REQUIRED + ("age", "gender", "fitspatrick", "region", "biopsed")


def _number(row, column):
    value = row.get(column) or ""
    return int(float(value)) if value else None


def record_from_row(row, row_id, context):
    images, split = context
    if not row["img_id"]:
        return "missing image: empty img_id"
    if row["diagnostic"] not in DIAGNOSTIC:
        return (f"unknown label: diagnostic {row['diagnostic']!r} (expected one of "
                f"{', '.join(DIAGNOSTIC)})")
    try:
        age, fitzpatrick = _number(row, "age"), _number(row, "fitspatrick")
    except ValueError:
        return f"bad value: age {row.get('age')!r} or fitspatrick {row.get('fitspatrick')!r}"
    if fitzpatrick is not None and not 1 <= fitzpatrick <= 6:
        return f"bad value: fitspatrick {fitzpatrick} (expected 1-6)"
    sex = {"MALE": "male", "FEMALE": "female"}.get((row.get("gender") or "").upper())
    region = (row.get("region") or "").lower() or None
    return truth_record(
        DIAGNOSTIC[row["diagnostic"]], images.path(row["img_id"]), "clinical", split,
        "pad-ufes-20", row_id, age=age, sex=sex, site=region, fitzpatrick=fitzpatrick,
        meta={"lesion_id": f"PAD_{row['lesion_id']}", "patient_id": row["patient_id"],
              "biopsied": row.get("biopsed") == "True"})


def convert(args):
    images = ImageIndex(Path(args.images) if args.images else Path(args.table).parent)
    return convert_table("pad-ufes-20", args, REQUIRED, record_from_row, (images, args.split))


def build_parser():
    parser = recipe_parser("python -m data_recipes.pad_ufes20",
                           __doc__.strip().splitlines()[0], ", ".join(COLUMNS))
    parser.add_argument("--images", help="folder holding the img_id files (searched "
                        "recursively)")
    return parser


def main(argv=None):
    return run(convert, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
