"""Fitzpatrick17k -> manifest (+ shards), with skin type and the 3/9-partition hierarchy.

    python -m data_recipes.fitzpatrick17k --csv fitzpatrick17k.csv --images fitz17k/ --out out/

Image file = --images/<md5hash>.jpg. `fitzpatrick_scale` -1 means unknown (kept, no type).
Rows whose `qc` says "3 Wrongly labelled" are rejected with that reason.
"""
import os
from pathlib import Path

from dermvlm.data.recipe_cli import recipe_parser, run
from dermvlm.data.records import Record
from dermvlm.data.tables import convert_table
from dermvlm.vocab import fitzpatrick_group

REQUIRED = ("md5hash", "fitzpatrick_scale", "label", "nine_partition_label",
            "three_partition_label")
COLUMNS = REQUIRED + ("qc", "url")


def record_from_row(row, row_id, context):
    images, split = context
    try:
        scale = int(float(row["fitzpatrick_scale"]))
    except ValueError:
        scale = 0
    if scale not in (-1, 1, 2, 3, 4, 5, 6):
        return f"bad value: fitzpatrick_scale {row['fitzpatrick_scale']!r} (expected 1-6 or -1)"
    if (row.get("qc") or "").startswith("3"):
        return f"excluded: qc is {row['qc']!r}"
    if not row["label"]:
        return "unknown label: empty label"
    fst, label = (scale if scale > 0 else None), row["label"]
    return Record(
        image=os.path.join(images, f"{row['md5hash']}.jpg"),
        captions=[f"A clinical image of {label}."], label=label,
        hierarchy=[row["three_partition_label"], row["nine_partition_label"], label],
        fitzpatrick=fst, fitzpatrick_group=fitzpatrick_group(fst), modality="clinical",
        split=split, source="fitzpatrick17k", row_id=row_id,
        meta={"qc": row.get("qc") or None, "url": row.get("url") or None})


def convert(args):
    images = str(Path(args.images) if args.images else Path(args.table).parent)
    return convert_table("fitzpatrick17k", args, REQUIRED, record_from_row,
                         (images, args.split))


def build_parser():
    parser = recipe_parser("python -m data_recipes.fitzpatrick17k",
                           __doc__.strip().splitlines()[0], ", ".join(COLUMNS))
    parser.add_argument("--images", help="folder holding <md5hash>.jpg")
    return parser


def main(argv=None):
    return run(convert, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
