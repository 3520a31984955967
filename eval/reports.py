"""Structured reports on labelled images: how often the report raises the malignancy concern
(moderate or high) for malignant, premalignant and benign lesions, with 95 % bootstrap
intervals, and how often its top diagnosis is the true one.

    python -m eval.reports --model default --data ../shared/realdata/isic9/Test \\
        --out runs/eval/reports_isic9.json

With a CLIP model (--clip, or the embedded one for --model default) the reports are the app's:
the image's calibrated zero-shot case gives the differential and a floor for the concern
(dermvlm.chat.Case). --vlm-only reports with the VLM alone (its own differential), as a VLM
folder without a CLIP model does.
"""
import sys

from dermvlm.cliargs import OneLineParser, positive_int, print_result


def build_parser():
    parser = OneLineParser(prog="python -m eval.reports", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="'default' or a VLM folder")
    parser.add_argument("--clip", help="CLIP folder (default: the embedded one for --model "
                        "default)")
    parser.add_argument("--vlm-only", action="store_true", help="no zero-shot case: the VLM's "
                        "own differential and concern")
    parser.add_argument("--data", required=True, help="labelled images: a folder of class "
                        "subfolders, a manifest or a SynthDerm folder")
    parser.add_argument("--limit", type=positive_int, help="the first N images only")
    parser.add_argument("--out", help="write the report JSON here (also printed)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return print_result("eval.reports", lambda: evaluate(args), args.out)


def evaluate(args):
    from tqdm import tqdm

    from dermvlm import embedded
    from dermvlm.imaging import open_image
    from dermvlm.labelled import labelled_records
    from dermvlm.ontology import find_condition
    from dermvlm.vlm.infer import describe
    records = labelled_records(args.data)[:args.limit]
    vlm_folder = embedded.vlm_folder() if args.model == "default" else args.model
    clip = None if args.vlm_only else (args.clip or (embedded.clip_spec()
                                                     if args.model == "default" else None))
    if clip:
        from dermvlm.serve import Assistant
        assistant = Assistant(vlm_folder, clip)
        vlm = assistant.vlm
    else:
        from dermvlm.vlm.model import DermVLM
        assistant, vlm = None, DermVLM.from_pretrained(vlm_folder)
    rows = []
    for record in tqdm(records, desc="reports", unit="image"):
        truth = find_condition(record.label)
        if truth is None:
            continue
        image = open_image(record.image)
        case = assistant.case(image, top_k=5) if assistant else None
        report = describe(vlm, image, ood=case.verdict if case else None, case=case)[0]
        top = report.differential[0].diagnosis if report.differential else None
        rows.append({"image": record.image, "truth": truth.name,
                     "malignancy": truth.malignancy, "concern": report.malignancy_concern,
                     "abstained": bool(case and case.abstained),
                     "top_diagnosis": top, "top_is_truth": top == truth.name})
    return {"model": args.model, "clip": clip, "data": args.data, "n": len(rows),
            **summarise(rows), "rows": rows}


def summarise(rows):
    from dermvlm.bench.metrics import bootstrap_ci
    out = {}
    for level in ("malignant", "premalignant", "benign"):
        flags = [float(r["concern"] in ("moderate", "high")) for r in rows
                 if r["malignancy"] == level and not r["abstained"]]
        if flags:
            out[f"flagged_{level}"] = {"rate": round(sum(flags) / len(flags), 4),
                                       "n": len(flags),
                                       "ci": [round(v, 4) for v in bootstrap_ci(flags)]}
    answered = [float(r["top_is_truth"]) for r in rows if not r["abstained"]]
    if answered:
        out["top_diagnosis_correct"] = round(sum(answered) / len(answered), 4)
    out["abstained"] = sum(r["abstained"] for r in rows)
    return out


if __name__ == "__main__":
    sys.exit(main())
