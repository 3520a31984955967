"""Zero-shot evaluation of an aligned model on labelled images.

    python -m eval.zeroshot --model runs/clip_tiny/model --data data/test --out report.json

--model: a dermvlm/open_clip folder, local-dir:PATH, hf-hub:ORG/NAME (needs DERMVLM_ALLOW_HUB=1
and network) or an open_clip name. --data: a SynthDerm folder, a JSONL manifest, or a folder of
labelled real images (ROOT/<class>/*.jpg). Reports top-1/top-5 accuracy, balanced accuracy,
macro AUROC, per-concept AUROC, Recall@K, per Fitzpatrick group, per-attribute accuracy on
SynthDerm, and malignant-or-premalignant vs benign (AUROC, sensitivity and specificity) with
95 % bootstrap intervals. `diagnosis` ranks the data's own labels; `diagnosis_ontology` ranks
the whole ontology with the model's calibration and malignancy operating point, as the app does.

    python -m eval.zeroshot --model dermvlm/default/clip --data ../shared/realdata/isic9/Test

Under torchrun or `accelerate launch` the images are encoded over the ranks and rank 0 prints
the one report, the same as a single process's.
"""
import sys

from dermvlm.cliargs import OneLineParser, print_result


def build_parser():
    parser = OneLineParser(prog="python -m eval.zeroshot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model spec (see above)")
    parser.add_argument("--data", required=True, help="SynthDerm folder, manifest, or a "
                        "folder of class subfolders")
    parser.add_argument("--out", help="write the report JSON here (also printed)")
    parser.add_argument("--labels", help="comma-separated label set (default: the data's)")
    parser.add_argument("--limit", type=int, help="evaluate the first N records only")
    parser.add_argument("--no-trust", action="store_true", help="ignore the model's trust "
                        "file (no calibration temperature, no malignancy threshold)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    from dermvlm.training import distributed
    rank, world, device = distributed()
    return print_result("eval.zeroshot", lambda: evaluate(args, rank, world, device), args.out,
                        show=rank == 0)


def evaluate(args, rank=0, world=1, device="cpu"):
    from dermvlm.hub import check_model_spec
    check_model_spec(args.model)
    from dermvlm.clip.evaluate import evaluate_records
    from dermvlm.clip.model import load_model
    from dermvlm.labelled import labelled_records
    from dermvlm.trust import TrustModel
    model, model_cfg, tokenizer = load_model(args.model)
    model = model.to(device)
    records = labelled_records(args.data)[:args.limit]
    labels = [x.strip() for x in args.labels.split(",")] if args.labels else None
    trust = None if args.no_trust else TrustModel.load(args.model)
    report = evaluate_records(model, tokenizer, records,
                              model_cfg["vision_cfg"]["image_size"], labels=labels,
                              device=device, rank=rank, world=world, trust=trust)
    return {"model": args.model, "data": args.data, **report}


if __name__ == "__main__":
    sys.exit(main())
