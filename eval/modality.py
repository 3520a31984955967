"""How the case judges an image's modality: dermoscopic, clinical photograph or not skin, as
`dermvlm classify`, the chat and the app judge it (dermvlm.trust.assess: the trust file's
"not skin" check, then the zero-shot modality prompts). Each --set's images carry their true
modality in their records; each --nonskin folder's images are all "not skin". Reports the
3 x 3 confusion, the accuracy over all images and per set, with Wilson 95 % intervals.

    python -m eval.modality --model dermvlm/default/clip --set runs/eval/ham10000_test \\
        --set runs/eval/pad-ufes-20_test --nonskin runs/data/nonskin --out modality.json
"""
import sys
from pathlib import Path

from dermvlm.bench.metrics import wilson_interval
from dermvlm.cliargs import OneLineParser, print_result
from dermvlm.errors import DermvlmError

BATCH = 32


def judge(zs, trust, transform, paths, progress=False):
    """[judged modality] per image path (an unreadable file is judged None)."""
    import torch
    from tqdm import tqdm

    from dermvlm.imaging import try_open_image
    from dermvlm.trust import assess
    judged = []
    for start in tqdm(range(0, len(paths), BATCH), desc="modality", disable=not progress):
        images = [try_open_image(p) for p in paths[start:start + BATCH]]
        readable = [im for im in images if im is not None]
        said = iter(assess(zs, trust, zs.encode_images(torch.stack(
            [transform(im) for im in readable])), readable)[0] if readable else [])
        judged += [None if im is None else next(said)[0] for im in images]
    return judged


def tally(truth, judged):
    """{n, accuracy (Wilson interval), confusion {truth: {judged: count}}}."""
    confusion = {}
    for t, j in zip(truth, judged):
        row = confusion.setdefault(t, {})
        row[str(j)] = row.get(str(j), 0) + 1
    right = sum(t == j for t, j in zip(truth, judged))
    return {"n": len(truth), "accuracy": round(right / len(truth), 4) if truth else None,
            "ci": wilson_interval(right, len(truth)), "confusion": confusion}


def evaluate(args):
    from dermvlm.clip.model import load_model
    from dermvlm.imaging import eval_transform
    from dermvlm.labelled import labelled_records
    from dermvlm.skincheck import NOT_SKIN
    from dermvlm.trust import TrustModel
    from dermvlm.vocab import MODALITIES
    from dermvlm.zeroshot import ZeroShot
    if not (args.set or args.nonskin):
        raise DermvlmError("give at least one --set or --nonskin")
    model, cfg, tokenizer = load_model(args.model)
    zs, transform = ZeroShot(model, tokenizer), eval_transform(cfg["vision_cfg"]["image_size"])
    trust = TrustModel.load(args.model)
    result = {"model": args.model, "not_skin_check": bool(trust and trust.skin), "sets": {}}
    truth, judged = [], []
    sources = [(spec, None) for spec in args.set] + [(folder, NOT_SKIN) for folder in
                                                     args.nonskin]
    for spec, fixed in sources:
        if fixed is None:
            records = [r for r in labelled_records(spec) if r.modality in MODALITIES]
            if not records:
                raise DermvlmError(f"{spec}: no record says its modality (dermoscopic or "
                                   "clinical)")
            paths, truths = [r.image for r in records], [r.modality for r in records]
        else:
            if not Path(spec).is_dir():
                raise DermvlmError(f"--nonskin {spec}: not a folder")
            paths = sorted(str(p) for p in Path(spec).iterdir() if p.is_file())
            truths = [fixed] * len(paths)
        said = judge(zs, trust, transform, paths, progress=not args.quiet)
        kept = [(t, s) for t, s in zip(truths, said) if s is not None]
        result["sets"][spec] = tally(*zip(*kept)) if kept else tally([], [])
        truth += [t for t, _ in kept]
        judged += [s for _, s in kept]
    result["all"] = tally(truth, judged)
    return result


def main(argv=None):
    parser = OneLineParser(prog="python -m eval.modality", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="CLIP model folder (with trust.json "
                        "for the not-skin check)")
    parser.add_argument("--set", action="append", default=[],
                        help="labelled image set whose records give the modality (repeatable)")
    parser.add_argument("--nonskin", action="append", default=[],
                        help="folder of images that are not skin (repeatable)")
    parser.add_argument("--out", help="write the results JSON here")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    return print_result("eval.modality", lambda: evaluate(args), args.out)


if __name__ == "__main__":
    sys.exit(main())
