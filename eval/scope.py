"""How often the app gives a confident wrong name: each image goes through what `dermvlm
classify` and the app do (the OOD check against its modality's reference, the calibrated
ontology diagnosis, the out-of-scope and minimum-confidence rules for clinical photographs),
and per set it counts the images answered, refused (as out of distribution, not skin, out of
scope or not confident enough), and answered wrongly at a top probability >= --confident,
with Wilson 95 % intervals. Images are split by whether their true condition is one the model
may answer (trust.json `clinical_answerable` for clinical photographs; every ontology condition
for dermoscopy).

    python -m eval.scope --model dermvlm/default/clip --set runs/eval/pad-ufes-20_test \\
        --set runs/data/seed1 --modality clinical --out scope.json

Conditions outside what a model has earned are the point: a set of photos of such conditions
shows whether the model names them wrongly with confidence (issue: phone photos).
"""
import sys

from dermvlm.bench.metrics import wilson_interval
from dermvlm.cliargs import OneLineParser, print_result
from dermvlm.errors import DermvlmError


def share(hits, n):
    return {"count": hits, "share": round(hits / n, 4) if n else None,
            "ci": wilson_interval(hits, n)}


def tally(outcomes, confident):
    """{n, answered, refused_ood, not_skin, out_of_scope, low_confidence, confident_wrong,
    right_when_answered} over (truth, top, probability, verdict) rows: each refusal counted
    under its reason (the verdict's "reason"; none: out of distribution)."""
    n = len(outcomes)
    answered = [o for o in outcomes if not (o[3] and o[3]["abstained"])]
    reasons = [o[3].get("reason") for o in outcomes if o[3] and o[3]["abstained"]]
    wrong = sum(top != truth and p >= confident for truth, top, p, _ in answered)
    return {"n": n, "answered": share(len(answered), n),
            "refused_ood": share(reasons.count(None), n),
            "not_skin": share(reasons.count("not skin"), n),
            "out_of_scope": share(reasons.count("out of scope"), n),
            "low_confidence": share(reasons.count("low confidence"), n),
            "confident_wrong": share(wrong, n),
            "right_when_answered": share(sum(top == truth for truth, top, _, _ in answered),
                                         len(answered))}


def evaluate(args):
    from dermvlm.clip.classify import classify
    from dermvlm.labelled import labelled_records
    from dermvlm.ontology import CONDITIONS, find_condition
    from dermvlm.trust import TrustModel
    trust = TrustModel.load(args.model)
    if trust is None:
        raise DermvlmError(f"{args.model}: no trust.json; fit one with python -m "
                           "train.fit_trust")
    names = [c.name for c in CONDITIONS]
    answerable = trust.settings.clinical_answerable
    result = {"model": args.model, "confident": args.confident, "modality": args.modality,
              "clinical_answerable": answerable, "sets": {}}
    for spec in args.set:
        records = [r for r in labelled_records(spec)
                   if args.modality is None or r.modality == args.modality]
        if not records:
            raise DermvlmError(f"{spec}: no image of modality {args.modality} there")
        truth = {r.image: (find_condition(r.label).name if find_condition(r.label) else r.label)
                 for r in records}
        modality = {r.image: r.modality for r in records}
        ranked = classify([r.image for r in records], args.model, names, top_k=1,
                          progress=not args.quiet)
        rows = [(truth[path], top[0][0] if top else None, top[0][1] if top else 0.0, verdict,
                 modality[path]) for path, top, verdict in ranked]

        def in_scope(row):
            return row[4] != "clinical" or answerable is None or row[0] in answerable
        result["sets"][spec] = {
            "all": tally([r[:4] for r in rows], args.confident),
            "truth_in_scope": tally([r[:4] for r in rows if in_scope(r)], args.confident),
            "truth_out_of_scope": tally([r[:4] for r in rows if not in_scope(r)],
                                        args.confident)}
    return result


def main(argv=None):
    parser = OneLineParser(prog="python -m eval.scope", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="CLIP model folder with trust.json")
    parser.add_argument("--set", action="append", required=True,
                        help="labelled image set: manifest, SynthDerm folder or ROOT/<label>/ "
                        "(repeatable)")
    parser.add_argument("--modality", choices=("clinical", "dermoscopic"),
                        help="keep only the images whose record has this modality")
    parser.add_argument("--confident", type=float, default=0.5,
                        help="top probability counted as a confident answer (default 0.5)")
    parser.add_argument("--out", help="write the results JSON here")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    return print_result("eval.scope", lambda: evaluate(args), args.out)


if __name__ == "__main__":
    sys.exit(main())
