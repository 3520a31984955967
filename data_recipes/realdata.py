"""A set of the project's shared realdata folder (its labels.csv, per-image split) -> manifest.

    python -m data_recipes.realdata --set ham10000 --split test --out data/ham_test
    python -m data_recipes.realdata --set pad-ufes-20 --out data/pad          # every split

Sets: ham10000, isic2017, pad-ufes-20 (dermvlm.data.realdata reads them; isic9 has its own
recipe). The images are read in place; the manifest points at them. Captions and chats state
only what a row says. With --split train, every image of an evaluation lesion (isic9 Test,
ham10000 / isic2017 val and test, widened over HAM10000 lesions) is rejected as leakage.
"""
from pathlib import Path

from dermvlm.data.realdata import REALDATA, READERS, held_out_ids, isic_id, read_set
from dermvlm.data.recipe_cli import make_converter, recipe_parser, run


def convert(args):
    folder = Path(args.root) if args.root else REALDATA / args.set
    records, rejects = read_set(args.set, folder)
    converter = make_converter(f"realdata-{args.set}", args)
    held_out = held_out_ids(folder.parent) if args.split == "train" else set()
    for row_id, reason in rejects:
        converter.read += 1
        converter.reject(row_id, reason)
    for record in records:
        if args.split and record.split != args.split:
            continue
        converter.read += 1
        if isic_id(record) in held_out:
            converter.reject(record.row_id, f"leakage: {isic_id(record)} is an image of an "
                             "evaluation lesion")
            continue
        converter.accept(record)
    return converter.finish(quiet=args.quiet)


def build_parser():
    parser = recipe_parser("python -m data_recipes.realdata", __doc__.strip().splitlines()[0],
                           "file, split and each set's label columns", table_flag=None)
    parser.add_argument("--set", required=True, choices=sorted(READERS))
    parser.add_argument("--root", help="the set's folder (default: shared/realdata/SET)")
    return parser


def main(argv=None):
    return run(convert, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
