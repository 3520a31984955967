"""Argument parsing and error reporting shared by the `data_recipes` modules."""
import argparse
import sys

from dermvlm.cliargs import OneLineParser
from dermvlm.data.convert import Converter
from dermvlm.errors import DermvlmError


def recipe_parser(prog, description, columns, table_flag="--csv"):
    """A parser with the options every recipe has; `columns` is named in --help."""
    parser = OneLineParser(
        prog=prog, description=f"{description}\n\nExpected columns: {columns}",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    if table_flag:
        parser.add_argument(table_flag, required=True, dest="table", help="input table")
    parser.add_argument("--out", required=True, help="output folder (manifest.jsonl, "
                        "rejects.csv, report.json, shards/)")
    parser.add_argument("--sep", default=",", help="column separator (default ',')")
    parser.add_argument("--split", default=None, help="split label for every record "
                        "(train | val | test); default: none")
    parser.add_argument("--no-validate-images", dest="validate_images", action="store_false",
                        help="skip opening images (no missing/unreadable/duplicate checks)")
    parser.add_argument("--shards", action="store_true", help="also write webdataset shards")
    parser.add_argument("--per-shard", type=int, default=1000, help="samples per shard")
    parser.add_argument("--workers", type=int, default=None, help="processes for tables read "
                        "without opening images (default: all cores)")
    parser.add_argument("--quiet", action="store_true", help="no summary line")
    return parser


def make_converter(name, args, one_row_per_image=True):
    return Converter(name, args.out, validate_images=args.validate_images, shards=args.shards,
                     per_shard=args.per_shard, one_row_per_image=one_row_per_image)


def run(convert, parser, argv=None):
    """Parse, convert, print the report path; a DermvlmError becomes one line and exit 2."""
    args = parser.parse_args(argv)
    try:
        report = convert(args)
    except DermvlmError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    return 0 if report["written"] or not report["rows_read"] else 1
