"""The argparse pieces every entry point shares (the `dermvlm` script, train/, eval/,
data_recipes/): a parser that reports errors in one line, argument types, config flags."""
import argparse
import json
import sys
from pathlib import Path

from dermvlm.errors import DermvlmError


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


def add_quantize_option(parser, default="none"):
    """--quantize for the commands that decode: the weights of dermvlm's CPU decode path
    (dermvlm.vlm.fastlm). The interactive commands (chat, describe, the app) default to
    "auto"; evaluations to "none" (fp32). Speed and accuracy of each: docs/EXPERIMENTS.md."""
    parser.add_argument("--quantize", choices=("auto", "none", "dynamic", "int8"),
                        default=default,
                        help=f"decode weights on a CPU (default: {default}): dynamic (int8 "
                        "weights and activations, with drafts: the fastest; answers as good as "
                        "fp32 on the held-out checks), int8 (weight-only), none (fp32), auto "
                        "(dynamic on an x86 CPU, else fp32)")


def print_result(prog, compute, out=None, show=True):
    """Run `compute()` and print its JSON result (also written to `out`, its folder made);
    a DermvlmError becomes one line on stderr and exit code 2. The evaluation and fitting
    entry points end with it. `show=False`: neither printed nor written (a rank other than
    0 of a data-parallel run)."""
    try:
        result = compute()
    except DermvlmError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    if not show:
        return 0
    text = json.dumps(result, indent=1)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
    print(text)
    return 0
