"""DDI (Diverse Dermatology Images) -> manifest, with skin-tone group and malignancy.

    python -m data_recipes.ddi --csv ddi_metadata.csv --images ddi/ --out out/

`skin_tone` is 12, 34 or 56 (Fitzpatrick I-II, III-IV, V-VI); `malignant` is True/False.
"""
import os
from pathlib import Path

from dermvlm.data.recipe_cli import recipe_parser, run
from dermvlm.data.records import Record
from dermvlm.data.tables import convert_table

REQUIRED = ("DDI_ID", "DDI_file", "skin_tone", "malignant", "disease")
TONE_GROUPS = {"12": "I-II", "34": "III-IV", "56": "V-VI"}


def record_from_row(row, row_id, context):
    images, split = context
    tone = row["skin_tone"].split(".")[0]
    malignant = row["malignant"].lower()
    if tone not in TONE_GROUPS:
        return f"bad value: skin_tone {row['skin_tone']!r} (expected 12, 34 or 56)"
    if malignant not in ("true", "false", "1", "0"):
        return f"bad value: malignant {row['malignant']!r}"
    if not row["disease"]:
        return "unknown label: empty disease"
    is_malignant, disease = malignant in ("true", "1"), row["disease"]
    return Record(
        image=os.path.join(images, row["DDI_file"]),
        captions=[f"A clinical image of {disease}, a "
                  f"{'malignant' if is_malignant else 'benign'} skin lesion."],
        label=disease, hierarchy=["malignant" if is_malignant else "benign", disease],
        fitzpatrick_group=TONE_GROUPS[tone], modality="clinical", split=split, source="ddi",
        row_id=row_id, meta={"malignant": is_malignant, "DDI_ID": row["DDI_ID"]})


def convert(args):
    images = str(Path(args.images) if args.images else Path(args.table).parent)
    return convert_table("ddi", args, REQUIRED, record_from_row, (images, args.split))


def build_parser():
    parser = recipe_parser("python -m data_recipes.ddi", __doc__.strip().splitlines()[0],
                           ", ".join(REQUIRED))
    parser.add_argument("--images", help="folder holding the DDI_file images")
    return parser


def main(argv=None):
    return run(convert, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
