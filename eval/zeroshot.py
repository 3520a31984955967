"""Zero-shot evaluation of an aligned model on labelled images.

    python -m eval.zeroshot --model runs/clip_tiny/model --data data/test --out report.json

--model: a dermvlm/open_clip folder, local-dir:PATH, hf-hub:ORG/NAME (needs DERMVLM_ALLOW_HUB=1
and network) or an open_clip name. --data: a SynthDerm folder or a JSONL manifest. Reports
top-1/top-5 accuracy, macro AUROC, per-concept AUROC, Recall@K, per Fitzpatrick group, and
per-attribute accuracy on SynthDerm.
"""
import sys

from dermvlm.cliargs import OneLineParser, print_result


def build_parser():
    parser = OneLineParser(prog="python -m eval.zeroshot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model spec (see above)")
    parser.add_argument("--data", required=True, help="SynthDerm folder or manifest")
    parser.add_argument("--out", help="write the report JSON here (also printed)")
    parser.add_argument("--labels", help="comma-separated label set (default: the data's)")
    parser.add_argument("--limit", type=int, help="evaluate the first N records only")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return print_result("eval.zeroshot", lambda: evaluate(args), args.out)


def evaluate(args):
    from dermvlm.hub import check_model_spec
    check_model_spec(args.model)
    from dermvlm.clip.data import load_records
    from dermvlm.clip.evaluate import evaluate_records
    from dermvlm.clip.model import load_model
    model, model_cfg, tokenizer = load_model(args.model)
    records = load_records(args.data)[:args.limit]
    labels = [x.strip() for x in args.labels.split(",")] if args.labels else None
    report = evaluate_records(model, tokenizer, records,
                              model_cfg["vision_cfg"]["image_size"], labels=labels)
    return {"model": args.model, "data": args.data, **report}


if __name__ == "__main__":
    sys.exit(main())
