"""LLaVA conversation JSON -> manifest, validating every conversation.

    python -m data_recipes.llava --json llava_med_instruct.json --images images/ --out out/

Each item: {"id", "image", "conversations": [{"from": "human", "value": "<image>\\n..."},
{"from": "gpt", "value": "..."}, ...]}. Turns must alternate human/gpt starting with human,
and exactly one `<image>` token must appear, in a human turn.
"""
import json
from pathlib import Path

from dermvlm.data.recipe_cli import make_converter, recipe_parser, run
from dermvlm.data.records import Record
from dermvlm.errors import DataError


def conversation_problem(item):
    """A reject reason for a malformed LLaVA item, or None."""
    if not isinstance(item, dict):
        return "bad structure: item is not an object"
    missing = [k for k in ("image", "conversations") if k not in item]
    if missing:
        return f"bad structure: missing {', '.join(missing)}"
    turns = item["conversations"]
    if not isinstance(turns, list) or not turns or len(turns) % 2:
        return "bad structure: conversations must be a non-empty list of human/gpt pairs"
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or turn.get("from") != ("human", "gpt")[i % 2]:
            return f"bad structure: turn {i} should be from {('human', 'gpt')[i % 2]!r}"
        if not isinstance(turn.get("value"), str) or not turn["value"].strip():
            return f"empty turn: turn {i} has no text"
    tokens = sum(t["value"].count("<image>") for t in turns)
    if tokens != 1 or "<image>" not in turns[0]["value"]:
        return f"bad image token: expected one <image> in the first human turn, found {tokens}"
    return None


def convert(args):
    path = Path(args.table)
    images = Path(args.images) if args.images else path.parent
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read LLaVA JSON: {exc}") from None
    if not isinstance(items, list):
        raise DataError(f"{path}: expected a JSON list of conversations")
    converter = make_converter("llava", args, one_row_per_image=False)
    for index, item in enumerate(items):
        converter.read += 1
        row_id = f"{path.name}:{index}"
        problem = conversation_problem(item)
        if problem:
            converter.reject(row_id, problem, item)
            continue
        converter.accept(Record(image=str(images / item["image"]), split=args.split,
                                source="llava", row_id=row_id,
                                meta={"id": item.get("id"),
                                      "conversations": item["conversations"]}), item)
    return converter.finish(quiet=args.quiet)


def build_parser():
    parser = recipe_parser("python -m data_recipes.llava", __doc__.strip().splitlines()[0],
                           "a JSON list of {id, image, conversations}", table_flag="--json")
    parser.add_argument("--images", help="folder the image fields are relative to")
    return parser


def main(argv=None):
    return run(convert, build_parser(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
