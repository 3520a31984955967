"""Align a pretrained EfficientNet-Lite tower with all-MiniLM-L6-v2 on the real sets of
../shared/realdata and SynthDerm, in stages on cached features (dermvlm.clip.align):

    python -m train.align --out runs/align/lite0 --synth runs/data/train \
        --synth-test runs/data/test
    python -m train.align --out runs/tiny --tiny          # a few images, a few steps (tests)

Stages: "frozen" (the ImageNet trunk, only the CLIP head learns), then "last" (the trunk's
stages from --train-from on, its head conv and the CLIP head). Images are encoded once per view
up to --cut (cached on disk), then once through the frozen middle. A logistic-regression probe
on the frozen ImageNet features of each set's own train split is reported beside them. Training
uses every real train split (ham10000, isic2017, isic9 by its lesion-grouped recipe,
pad-ufes-20) with every image of an evaluation lesion removed (realdata.held_out_ids); val and test
splits are only encoded and scored. Writes OUT/model (a vanilla open_clip folder) and
OUT/report.json (per set: balanced accuracy, malignant AUROC, ... with 95 % intervals, for the
probe and after each stage). The image caches and the frozen
middle's outputs in OUT are reused by a rerun; the stages run again.
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch

from dermvlm.cliargs import OneLineParser
from dermvlm.errors import DermvlmError

SHARES = {"ham10000": 0.3, "isic9": 0.2, "isic2017": 0.15, "pad-ufes-20": 0.2,
          "synthderm": 0.15}


def build_parser():
    parser = OneLineParser(prog="python -m train.align", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder (caches, model, report)")
    parser.add_argument("--realdata", help="the shared realdata folder (default: "
                        "../shared/realdata beside the project)")
    parser.add_argument("--synth", help="SynthDerm train folder (dermvlm synth)")
    parser.add_argument("--synth-test", help="SynthDerm held-out folder")
    parser.add_argument("--tower", default="efficientnet-lite0",
                        help="efficientnet-lite0 | efficientnet-lite1 | efficientnet-lite2")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--cut", type=int, default=4, help="trunk stage the cache stops at")
    parser.add_argument("--train-from", type=int, default=6, help="the last stage trains the "
                        "trunk's stages from this one on (and its head conv)")
    parser.add_argument("--views", type=int, default=3, help="augmented views per train image")
    parser.add_argument("--frozen-steps", type=int, default=600)
    parser.add_argument("--last-steps", type=int, default=1500)
    parser.add_argument("--per-set", type=int, help="at most N images per set and split")
    parser.add_argument("--tiny", action="store_true", help="8 images per set and split, "
                        "a few steps: the whole path in seconds")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def gather(work, realdata=None, synth=None, synth_test=None, limit=None):
    """{split: [(set name, Record)]} of every shared real set (isic9 through its recipe,
    written in `work`) and SynthDerm; train without evaluation lesions; at most `limit`
    images per set and split."""
    from data_recipes.isic9 import main as isic9_recipe
    from dermvlm.clip.data import load_records
    from dermvlm.data.realdata import REALDATA, READERS, drop_leaks, held_out_ids, read_set
    realdata = Path(realdata) if realdata else REALDATA
    if not realdata.is_dir():
        raise DermvlmError(f"{realdata}: not found (the shared realdata folder)")
    sets = {}
    for name in READERS:
        records, rejects = read_set(name, realdata / name)
        for row_id, reason in rejects:
            print(f"{name}: rejected {row_id}: {reason}", file=sys.stderr)
        sets[name] = records
    isic9 = work / "isic9"
    if not (isic9 / "report.json").is_file() and isic9_recipe(
            ["--root", str(realdata / "isic9"), "--out", str(isic9)]) != 0:
        raise DermvlmError(f"the isic9 recipe failed on {realdata / 'isic9'}")
    sets["isic9"] = load_records(isic9.resolve())
    if synth:
        sets["synthderm"] = [r for r in load_records(synth) if r.label]
        for r in sets["synthderm"]:
            r.split = "train"
    if synth_test:
        test = [r for r in load_records(synth_test) if r.label]
        for r in test:
            r.split = "test"
        sets.setdefault("synthderm", []).extend(test)
    held_out = held_out_ids(realdata)
    out = {"train": [], "val": [], "test": []}
    for name, records in sets.items():
        for split in out:
            chosen = [r for r in records if r.split == split]
            if split == "train":
                chosen, dropped = drop_leaks(chosen, held_out)
                if dropped:
                    print(f"{name}: {len(dropped)} train images of evaluation lesions left "
                          "out", file=sys.stderr)
            if limit:
                rng = np.random.default_rng(0)
                chosen = [chosen[i] for i in sorted(rng.permutation(len(chosen))[:limit])]
            out[split] += [(name, r) for r in chosen]
    out["val"] = clean_val(out["val"], out["train"], held_out_ids(realdata, ("test",)))
    out["train"].sort(key=lambda item: item[0] == "synthderm")   # real first (cache order)
    return out


def clean_val(val, train, test_ids):
    """Val items without an image of a test lesion (isic9's val, carved from isic9 Train,
    holds HAM10000 and ISIC 2017 test images) and without an image that trains under
    another set's label: val picks checkpoints and fits the trust file."""
    from dermvlm.data.realdata import isic_id
    train_keys = {image_key(r) for _, r in train}
    kept = [(n, r) for n, r in val if isic_id(r) not in test_ids and image_key(r) not in train_keys]
    if len(kept) < len(val):
        print(f"val: {len(val) - len(kept)} images of test lesions or of train left out",
              file=sys.stderr)
    return kept


def class_lists(data):
    """{set: sorted classes} from the train and evaluation records together."""
    classes = {}
    for items in data.values():
        for name, record in items:
            classes.setdefault(name, set()).add(record.label)
    return {name: tuple(sorted(c)) for name, c in classes.items()}


def image_key(record):
    """One image across the sets: its ISIC id where it has one (HAM10000, isic9 and ISIC 2017
    share images under their own label names), else its path."""
    from dermvlm.data.realdata import isic_id
    return isic_id(record) or record.image


def unique_rows(items):
    """(the items of the first copy of each image, each item's row among those)."""
    first, rows, kept = {}, [], []
    for item in items:
        key = image_key(item[1])
        if key not in first:
            first[key] = len(kept)
            kept.append(item)
        rows.append(first[key])
    return kept, np.array(rows)


def cache(model, args, work, data):
    """({split: (N, V, C, h, w) float16 array} of the cut tensors, the row of each train
    item). An image that several sets hold (under their own labels) is encoded once and
    trains under each label. Train: the plain view and --views augmented ones (SynthDerm's
    without colour jitter: its colours are labels); val and test: the plain view. Train items
    must list real sets before SynthDerm."""
    from dermvlm.clip.cache import cache_views
    from dermvlm.clip.data import real_train_transform, train_transform
    from dermvlm.imaging import eval_transform
    size = args.image_size
    plain, views = eval_transform(size), max(1, args.views)
    train, train_rows = unique_rows(data["train"])
    groups = {"val": (data["val"], [plain]), "test": (data["test"], [plain]),
              "train_real": ([i for i in train if i[0] != "synthderm"],
                             [plain] + [real_train_transform(size)] * views),
              "train_synth": ([i for i in train if i[0] == "synthderm"],
                              [plain] + [train_transform(size)] * views)}
    caches = {}
    for group, (items, transforms) in groups.items():
        if not items:
            continue
        file = work / f"cache_{group}.npy"
        skipped = cache_views(model.visual.trunk, args.cut, [r.image for _, r in items],
                              transforms, file, progress=not args.quiet)
        for path in skipped:
            print(f"skipped unreadable image {path}", file=sys.stderr)
        caches[group] = np.load(file, mmap_mode="r")
    parts = [caches.pop(g) for g in ("train_real", "train_synth") if g in caches]
    caches["train"] = np.concatenate(parts) if len(parts) > 1 else np.asarray(parts[0])
    return caches, train_rows


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except DermvlmError as exc:
        print(f"python -m train.align: error: {exc}", file=sys.stderr)
        return 2


def run(args):
    from dermvlm.clip.align_stages import run_stages
    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    data = gather(work, args.realdata, args.synth, args.synth_test,
                  8 if args.tiny else args.per_set)
    counts = {s: len(v) for s, v in data.items()}
    print(f"images: {counts}", file=sys.stderr)
    report = run_stages(args, work, data, class_lists(data), SHARES, cache)
    (work / "report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
