"""A folder of labelled images (ROOT/<label>/<image>) -> manifest (+ shards).

    python -m data_recipes.image_folder --root my_clinic_photos/ --out out/
"""
from pathlib import Path

from dermvlm.data.recipe_cli import make_converter, recipe_parser, run
from dermvlm.data.records import Record
from dermvlm.errors import DataError
from dermvlm.imaging import IMAGE_SUFFIXES


def convert(args):
    root = Path(args.root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    converter = make_converter("image_folder", args)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        converter.read += 1
        row_id = str(path.relative_to(root))
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            converter.reject(row_id, f"not an image: extension {path.suffix or '(none)'}")
        elif path.parent == root:
            converter.reject(row_id, "unknown label: image is not inside a <label>/ folder")
        else:
            label = path.parent.name.replace("_", " ")
            converter.accept(Record(image=str(path), captions=[f"A skin image of {label}."],
                                    label=label, hierarchy=[label], split=args.split,
                                    source="image_folder", row_id=row_id))
    return converter.finish(quiet=args.quiet)


def build_parser():
    parser = recipe_parser("python -m data_recipes.image_folder",
                           __doc__.strip().splitlines()[0],
                           "none: ROOT/<label>/<image files>", table_flag=None)
    parser.add_argument("--root", required=True, help="folder of <label>/ sub-folders")
    return parser


def main(argv=None):
    return run(convert, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
