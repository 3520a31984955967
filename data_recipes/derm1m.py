"""Derm1M (image-text pairs with a disease ontology) -> manifest (+ shards).

    python -m data_recipes.derm1m --csv Derm1M_train.csv --images /data/Derm1M \
        --ontology /data/Derm1M/ontology.json --out data/derm1m --shards

Image path = --images (the parent folder; default: the CSV's folder) joined with `filename`.
Placeholder strings ("No age information", "No definitive diagnosis", ...) become missing values.
With an ontology, the hierarchy comes from it, and labels it does not know are rejected.
"""
from pathlib import Path

from dermvlm.data.derm1m import COLUMNS, REQUIRED, ontology_paths, record_from_row
from dermvlm.data.recipe_cli import recipe_parser, run
from dermvlm.data.tables import convert_table


def convert(args):
    table = Path(args.table)
    images = str(Path(args.images) if args.images else table.parent)
    ontology_file = args.ontology or (table.parent / "ontology.json")
    paths = ontology_paths(ontology_file) if Path(ontology_file).is_file() else None
    return convert_table("derm1m", args, REQUIRED, record_from_row, (images, paths, args.split))


def build_parser():
    parser = recipe_parser("python -m data_recipes.derm1m", __doc__.strip().splitlines()[0],
                           ", ".join(COLUMNS) + " (required: filename, caption)")
    parser.add_argument("--images", "--parent-path", dest="images",
                        help="folder the `filename` column is relative to (default: the CSV's "
                        "folder)")
    parser.add_argument("--ontology", help="ontology.json (default: next to the CSV if present)")
    return parser


def main(argv=None):
    return run(convert, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
