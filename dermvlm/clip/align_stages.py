"""The staged alignment run behind `python -m train.align`: build the tower, cache, fit the
probe, train the stages, score each set's val and test split after each, save the model.

Scores per set, in its own label space (DESIGN.md 5b), with 95 % bootstrap intervals that
resample images (dermvlm.clip.evaluate.set_scores).
"""
import json
import sys

import numpy as np

from dermvlm.clip.align import (StageConfig, TextTargets, advance, embed_cached,
                                sampling_weights, train_stage)
from dermvlm.clip.cache import cut_to_pool
from dermvlm.clip.evaluate import set_scores


def score_split(probs_by_set, items, classes):
    """{set: metrics} from per-item probabilities (rows of `items`, grouped by set)."""
    out = {}
    for name in dict.fromkeys(n for n, _ in items):
        rows = [i for i, (n, _) in enumerate(items) if n == name]
        truth = [classes[name].index(items[i][1].label) for i in rows]
        out[name] = set_scores(probs_by_set[name][rows], truth, list(classes[name]))
    return out


def zero_shot_probs(model, targets, cached, cut):
    """{set: (N, C) softmax(100 * image @ classifier)} for every cached image, in each set's
    classes (DermLIP's logits)."""
    image = embed_cached(model, cached, cut)
    return {name: (100.0 * image @ w).softmax(1).numpy()
            for name, w in targets.classifiers.items()}


PROBE_C = (0.001, 0.01, 0.1, 1.0)    # inverse L2 strengths tried; the set's val split picks


def probe_scores(pooled, data, classes):
    """Logistic regression on frozen ImageNet features, fitted per set on its own train
    split (class-balanced, its L2 strength chosen on its val split's balanced accuracy),
    scored on its val and test splits."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.preprocessing import StandardScaler
    out = {"val": {}, "test": {}}
    train_sets = [n for n, _ in data["train"]]
    for name in classes:
        rows = [i for i, n in enumerate(train_sets) if n == name]
        labels = [data["train"][i][1].label for i in rows]
        if len(set(labels)) < 2:
            continue
        scaler = StandardScaler().fit(pooled["train"][rows, 0])
        x = scaler.transform(pooled["train"][rows, 0])
        y = [classes[name].index(label) for label in labels]
        split_rows = {split: [i for i, (n, _) in enumerate(data[split]) if n == name]
                      for split in ("val", "test")}
        truth = {split: [classes[name].index(data[split][i][1].label) for i in r]
                 for split, r in split_rows.items()}
        fits = [LogisticRegression(max_iter=2000, class_weight="balanced", C=c).fit(x, y)
                for c in (PROBE_C if split_rows["val"] else (0.5,))]
        if split_rows["val"]:
            val_x = scaler.transform(pooled["val"][split_rows["val"], 0])
            fits.sort(key=lambda f: -balanced_accuracy_score(truth["val"], f.predict(val_x)))
        fit = fits[0]
        for split, rows in split_rows.items():
            if not rows:
                continue
            probs = np.zeros((len(rows), len(classes[name])))
            probs[:, fit.classes_] = fit.predict_proba(scaler.transform(pooled[split][rows, 0]))
            out[split][name] = {**set_scores(probs, truth[split], list(classes[name])),
                                "probe_C": fit.C}
    return out


def run_stages(args, work, data, classes, shares, cache):
    from dermvlm.clip.model import build_model, save_model
    from dermvlm.config import get_config
    config = get_config("tiny", [f"clip.model={args.tower}", f"clip.image_size={args.image_size}",
                                 "clip.text_proj=none", "clip.embed_dim=384"])
    model, model_cfg, tokenizer = build_model(config.clip)
    model.eval()
    trunk, cut = model.visual.trunk, args.cut
    caches, train_rows = cache(model, args, work, data)
    targets = TextTargets(model, tokenizer, classes,
                          [r.captions or [f"A skin image of {r.label}."]
                           for _, r in data["train"]])
    meta = {"rows": train_rows, "set_names": [n for n, _ in data["train"]],
            "class_ids": np.array([classes[n].index(r.label) for n, r in data["train"]]),
            "weights": sampling_weights([n for n, _ in data["train"]],
                                        [r.label for _, r in data["train"]], shares)}
    # the frozen middle once per view: the last stage trains from block args.train_from on
    tails, pooled = {}, {}
    for split in ("train", "val", "test"):
        tail_file = work / f"tail_{split}_block{args.train_from}.npy"
        pooled_file = work / f"pooled_{split}.npy"
        if tail_file.is_file() and pooled_file.is_file():          # a rerun: kept from before
            tails[split], pooled[split] = np.load(tail_file), np.load(pooled_file)
            continue
        tails[split], pooled[split] = advance(trunk, caches[split], cut, args.train_from,
                                              progress=not args.quiet)
        np.save(tail_file, tails[split])
        np.save(pooled_file, pooled[split])
    caches, cut = tails, args.train_from
    report = {"tower": args.tower, "image_size": args.image_size, "cache_cut": args.cut,
              "train_from_block": cut,
              "images": {s: len(v) for s, v in data.items()}, "classes": classes,
              "probe": probe_scores({**pooled, "train": pooled["train"][train_rows]}, data,
                                    classes), "stages": {}}
    small = args.tiny
    stages = [("frozen", StageConfig(steps=3 if small else args.frozen_steps, lr=2e-3,
                                     batch_size=16 if small else 256)),
              ("last", StageConfig(steps=2 if small else args.last_steps, lr=5e-4,
                                   trunk_lr=1e-4, batch_size=8 if small else 96))]
    for name, stage_cfg in stages:
        if name == "frozen":
            inputs = pooled["train"]
            curve = train_stage(model, cut, list(model.visual.head.parameters()), inputs,
                                model.visual.head, targets, meta, stage_cfg, not args.quiet)
        else:
            tail = ([p for block in trunk.blocks[cut:] for p in block.parameters()]
                    + list(trunk.conv_head.parameters()) + list(trunk.bn2.parameters()))
            trunk.eval()                  # BN statistics stay ImageNet's (module docstring)
            curve = train_stage(model, cut, tail + list(model.visual.head.parameters()),
                                caches["train"],
                                lambda x: model.visual.head(cut_to_pool(trunk, x, cut)),
                                targets, meta, stage_cfg, not args.quiet)
        report["stages"][name] = {
            "steps": stage_cfg.steps, "loss_first_last": [round(np.mean(curve[:10]), 4),
                                                          round(np.mean(curve[-10:]), 4)],
            **{split: score_split(zero_shot_probs(model, targets, caches[split], cut),
                                  data[split], classes)
               for split in ("val", "test")}}
        print(f"stage {name}: " + json.dumps({k: v.get("balanced_accuracy") for k, v in
                                              report["stages"][name]["test"].items()}),
              file=sys.stderr)
    save_model(model, model_cfg, work / "model", extra_config=config.to_dict())
    report["summary"] = {stage: {name: {k: v for k, v in m.items() if not k.endswith("_ci")}
                                 for name, m in r["test"].items()}
                         for stage, r in [("probe", report["probe"])]
                         + list(report["stages"].items())}
    return report
