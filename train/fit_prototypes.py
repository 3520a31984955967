"""Fit class prototypes for a CLIP model folder on its training images' frozen features, the
number of steps chosen on held-out val images, and save them beside it
(prototypes.safetensors; see dermvlm.prototypes).

    python -m train.fit_prototypes --model runs/clip/model --train data/real/train \\
        --val data/real/val --max-per-class 600

Each --train / --val set is a labelled set (manifest, SynthDerm folder or ROOT/<label>/); its
records are grouped by their source (ham10000, isic9, ...), and each group is one label space:
its images are scored only against the labels that group's training images have. Labels must
be the ontology's diagnoses. Candidates: the --steps values and 0 (the zero-shot weights); the
one with the highest mean over val groups of balanced accuracy is kept. When that is 0, nothing
is written: the prototypes would not beat zero-shot. With --space own each group is fitted and
scored within its own label space, so a ranking over the union of the labels (the app ranks
the whole ontology) can get worse while every set's own ranking gets better; --space union
fits and scores every image against all the labels, as the app ranks them. Check
`eval.zeroshot`'s `diagnosis_ontology` before shipping prototypes. With --modality M the fit
and the choice use only the images whose record names modality M (SynthDerm and dermvlm
manifests name it), and ZeroShot applies the prototypes only to images the zero-shot prompts
judge M; the others keep the text weights.
"""
import sys

import numpy as np
import torch

from dermvlm.cliargs import OneLineParser, positive_int, print_result
from dermvlm.errors import DermvlmError
from dermvlm.vocab import MODALITIES


def main(argv=None):
    parser = OneLineParser(prog="python -m train.fit_prototypes",
                           description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="CLIP model folder to fit and write to")
    parser.add_argument("--train", action="append", required=True,
                        help="labelled training set (repeatable)")
    parser.add_argument("--val", action="append", required=True,
                        help="labelled held-out set that chooses the steps (repeatable)")
    parser.add_argument("--steps", default="50,150,400",
                        help="candidate numbers of Adam steps (default 50,150,400)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam rate (default 1e-3)")
    parser.add_argument("--space", choices=("own", "union"), default="union",
                        help="score each image against its set's labels or all of them "
                        "(default union: as the app ranks)")
    parser.add_argument("--modality", choices=MODALITIES,
                        help="fit on, and apply to, this modality's images only (default: all)")
    parser.add_argument("--max-per-class", type=positive_int, default=600,
                        help="training images kept per group and label, by a hash of the "
                        "file name (default 600)")
    parser.add_argument("--max-per-set", type=positive_int,
                        help="training images kept per group after that, by the same hash "
                        "(default: all)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return print_result("train.fit_prototypes", lambda: fit(parser.parse_args(argv)))


def grouped(specs, max_per_class=None, max_per_set=None, modality=None):
    """{source: [(image, ontology name)]} of labelled sets (only the records of `modality`
    when given), at most max_per_class per label and then max_per_set per source (each by a
    hash of the file name)."""
    from dermvlm.labelled import labelled_records, pick_records
    from dermvlm.ontology import find_condition
    groups = {}
    for spec in specs:
        records = labelled_records(spec)
        unknown = sorted({r.label for r in records if find_condition(r.label) is None})
        if unknown:
            raise DermvlmError(f"{spec}: labels not in the ontology: {', '.join(unknown[:5])}")
        for record in records:
            if modality is None or record.modality == modality:
                groups.setdefault(record.source or spec, []).append(record)
    out = {}
    for source, records in groups.items():
        by_label = {}
        for r in records:
            by_label.setdefault(find_condition(r.label).name, []).append(r)
        kept = [r for _, rs in sorted(by_label.items())
                for r in (pick_records(rs, max_per_class) if max_per_class else rs)]
        kept = pick_records(kept, max_per_set) if max_per_set else kept
        out[source] = [(r.image, find_condition(r.label).name) for r in kept]
    return out


def encode_with_mirror(zs, transform, paths, progress=False, batch_size=64):
    """(features (N, D), mirrored features (N, D), kept paths): unusable files left out."""
    from tqdm import tqdm

    from dermvlm.imaging import try_open_image
    plain, mirror, kept = [], [], []
    for start in tqdm(range(0, len(paths), batch_size), desc="features", disable=not progress):
        images = [(p, im) for p in paths[start:start + batch_size]
                  if (im := try_open_image(p)) is not None]
        if images:
            x = torch.stack([transform(im) for _, im in images])
            plain.append(zs.encode_images(x))
            mirror.append(zs.encode_images(x.flip(-1)))
            kept += [p for p, _ in images]
    if not kept:
        raise DermvlmError("no usable image to fit prototypes on")
    return torch.cat(plain), torch.cat(mirror), kept


def val_score(weights, names, val, spaces, union=False):
    """{source: balanced accuracy} of the val groups whose labels their training space has,
    ranked among that space's labels or (union) among all `names`."""
    from dermvlm.clip.evaluate import balanced_accuracy
    scores = {}
    for source, (features, labels) in val.items():
        space = spaces.get(source)
        rows = [i for i, label in enumerate(labels) if space and label in space]
        if not rows:
            continue
        ranked = names if union else space
        index = [names.index(label) for label in ranked]
        predicted = (features[rows] @ weights[index].T).argmax(1).numpy()
        truth = np.array([ranked.index(labels[i]) for i in rows])
        scores[source] = round(balanced_accuracy(predicted, truth), 4)
    return scores


def fit(args):
    from dermvlm.clip.model import load_model
    from dermvlm.imaging import eval_transform
    from dermvlm.prototypes import fit_prototypes, save_prototypes
    from dermvlm.zeroshot import ZeroShot
    try:
        candidates = sorted({int(s) for s in args.steps.split(",")})
    except ValueError:
        raise DermvlmError(f"--steps: expected comma-separated integers, got {args.steps!r}")
    model, cfg, tokenizer = load_model(args.model)
    zs = ZeroShot(model, tokenizer, prototypes=False)        # the text weights to start from
    transform = eval_transform(cfg["vision_cfg"]["image_size"])
    progress = not args.quiet
    train_groups = grouped(args.train, args.max_per_class, args.max_per_set, args.modality)
    if not train_groups:
        raise DermvlmError("--train: no labelled record" + (
            f" of modality {args.modality}" if args.modality else ""))
    spaces = {source: sorted({label for _, label in items})
              for source, items in train_groups.items()}
    names = sorted({label for space in spaces.values() for label in space})
    groups = []
    for source, items in train_groups.items():
        label_of = dict(items)
        plain, mirror, kept = encode_with_mirror(zs, transform, [p for p, _ in items], progress)
        targets = torch.tensor([names.index(label_of[p]) for p in kept] * 2)
        space = names if args.space == "union" else spaces[source]
        groups.append((torch.cat([plain, mirror]), targets,
                       [names.index(label) for label in space]))
    val = {}
    for source, items in grouped(args.val, modality=args.modality).items():
        label_of = dict(items)
        plain, mirror, kept = encode_with_mirror(zs, transform, [p for p, _ in items], progress)
        # scored as the app would see them: the unmirrored image
        val[source] = (plain, [label_of[p] for p in kept])
    text = zs.classifier(names).T.contiguous()                      # (C, D)
    union = args.space == "union"
    tried = {0: (text, val_score(text, names, val, spaces, union))}
    for steps in candidates:
        weights = fit_prototypes(text, groups, steps, args.lr)
        tried[steps] = (weights, val_score(weights, names, val, spaces, union))
    if not any(scores for _, scores in tried.values()):
        raise DermvlmError("no --val image has a label of its source's training labels")
    best = max(tried, key=lambda s: (np.mean(list(tried[s][1].values())), -s))
    summary = {"model": args.model, "train": args.train, "val": args.val,
               "label_spaces": spaces, "train_images": {s: len(i) for s, i in
                                                       train_groups.items()},
               "max_per_class": args.max_per_class, "max_per_set": args.max_per_set,
               "lr": args.lr, "space": args.space, "modality": args.modality,
               "val_balanced_accuracy": {str(s): scores for s, (_, scores) in tried.items()},
               "steps": best}
    if best == 0:
        summary["written"] = False
        return summary
    save_prototypes(args.model.removeprefix("local-dir:"), names, tried[best][0], summary)
    summary["written"] = True
    return summary


if __name__ == "__main__":
    sys.exit(main())
