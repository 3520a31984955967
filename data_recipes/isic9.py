"""The ISIC 9-class dermoscopic set (ROOT/{Train,Test}/<class>/ISIC_<id>.jpg) -> one manifest
with train / val / test splits, captions and conversations from the labels.

    python -m data_recipes.isic9 --root ../shared/realdata/isic9 --out data/isic9

Test is converted first and kept whole; a Train image that repeats a Test image (same bytes, a
near-duplicate, or another image of the same lesion) is rejected as leakage. Train is split
into train and val by lesion: the HAM10000 table (--lesion-table; found beside the set in
../shared/realdata/tables when there) names the lesion of ISIC_0024306 to ISIC_0034320, so one
lesion's images land on one side; it also gives age, sex and site, which the captions then
state. No other attribute is invented.
"""
from pathlib import Path

from dermvlm.data.real import truth_record
from dermvlm.data.recipe_cli import make_converter, recipe_parser, run
from dermvlm.data.tables import read_table
from dermvlm.errors import DataError
from dermvlm.imaging import IMAGE_SUFFIXES
from dermvlm.labelled import held_out

HAM_COLUMNS = ("lesion_id", "image_id", "age", "sex", "localization")
SPLIT_FOLDERS = (("Test", "test"), ("Train", "train"))   # test first: it is the protected one


def default_lesion_table(root):
    table = Path(root).resolve().parent / "tables/ham10000/HAM10000_metadata.csv"
    return table if table.is_file() else None


def read_lesions(table):
    """{image_id: {lesion_id, age, sex, site}} from the HAM10000 metadata table."""
    lesions = {}
    for _, row in read_table(table, HAM_COLUMNS):
        try:
            age = int(float(row["age"])) if row["age"] else None
        except ValueError:
            age = None
        lesions[row["image_id"]] = {
            "lesion_id": row["lesion_id"], "age": age,
            "sex": row["sex"] if row["sex"] in ("male", "female") else None,
            "site": row["localization"] if row["localization"] not in ("", "unknown")
            else None}
    return lesions


def convert(args):
    root = Path(args.root)
    folders = [(root / name, split) for name, split in SPLIT_FOLDERS if (root / name).is_dir()]
    if not folders:
        raise DataError(f"{root}: expected Train/ and Test/ class folders inside")
    table = Path(args.lesion_table) if args.lesion_table else default_lesion_table(root)
    lesions = read_lesions(table) if table else {}
    converter = make_converter("isic9", args)
    converter.protect_split = "test"
    # the lesions of the test images: their other images (in Train) are leakage too
    test_lesions = {lesions[p.stem]["lesion_id"]: p.name for folder, split in folders
                    if split == "test" for p in folder.rglob("*") if p.stem in lesions}
    for folder, split in folders:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            converter.read += 1
            row_id = str(path.relative_to(root))
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                converter.reject(row_id, f"not an image: extension {path.suffix or '(none)'}")
                continue
            if path.parent == folder:
                converter.reject(row_id, "unknown label: image is not inside a <class>/ folder")
                continue
            known = lesions.get(path.stem, {})
            lesion = known.get("lesion_id") or path.stem
            if split != "test" and lesion in test_lesions:
                converter.reject(row_id, f"leakage: lesion {lesion} is also test image "
                                 f"{test_lesions[lesion]}")
                continue
            split_here = "val" if split == "train" and held_out(lesion, args.val_fraction) \
                else split
            record = truth_record(path.parent.name, path, "dermoscopic", split_here, "isic9",
                                  row_id, age=known.get("age"), sex=known.get("sex"),
                                  site=known.get("site"), meta={"lesion_id": lesion})
            if isinstance(record, str):
                converter.reject(row_id, record)
            else:
                converter.accept(record)
    return converter.finish(extra={"lesion_table": str(table) if table else None},
                            quiet=args.quiet)


def build_parser():
    parser = recipe_parser("python -m data_recipes.isic9", __doc__.strip().splitlines()[0],
                           "none: ROOT/{Train,Test}/<class>/<image files>", table_flag=None)
    parser.add_argument("--root", required=True, help="folder holding Train/ and Test/")
    parser.add_argument("--lesion-table", help="HAM10000_metadata.csv (lesion ids, age, sex, "
                        "site); default: ROOT/../tables/ham10000/ when it is there")
    parser.add_argument("--val-fraction", type=float, default=0.15,
                        help="share of Train's lesions held out as val (default 0.15)")
    return parser


def main(argv=None):
    return run(convert, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
