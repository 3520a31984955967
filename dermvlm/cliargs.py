"""The argparse pieces every entry point shares (the `dermvlm` script, train/, eval/,
data_recipes/): a parser that reports errors in one line, argument types, config flags."""
import argparse


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one line (no usage dump) and exits 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_config_args(parser):
    parser.add_argument("--preset", default="default",
                        help="config preset: tiny | default | base (default: default)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config field, e.g. synth.size=128"
                        " (repeatable)")
