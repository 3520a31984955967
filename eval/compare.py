"""Paired comparison of two DermaBench-style runs on the same questions (the folders that
`dermvlm eval dermabench --out` wrote): per metric and slice, B - A, a 95 % interval
resampling images, and a sign-flip permutation p-value.

    python -m eval.compare bench/untuned bench/default --out bench/default_vs_untuned
"""
import sys

from dermvlm.bench.command import add_compare_args, run_compare
from dermvlm.cliargs import OneLineParser


def main(argv=None):
    parser = OneLineParser(prog="python -m eval.compare", description=__doc__.split("\n\n")[0])
    add_compare_args(parser)
    return run_compare(parser.parse_args(argv), prog="eval.compare")


if __name__ == "__main__":
    sys.exit(main())
