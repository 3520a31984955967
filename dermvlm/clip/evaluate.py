"""Zero-shot evaluation of an aligned model on labelled records.

`evaluate_records` reports diagnosis top-1/top-5, macro AUROC, per-concept AUROC (MONET
scores), retrieval Recall@K, and every metric per Fitzpatrick group. On SynthDerm records it
also reports zero-shot accuracy per attribute family (colour, lesion type, ...), since every
attribute is known there.
"""
import dataclasses

import numpy as np
import torch

from dermvlm import vocab
from dermvlm.bench.metrics import bootstrap_ci, bootstrap_statistic_ci
from dermvlm.imaging import eval_transform, try_open_image
from dermvlm.ontology import find_condition
from dermvlm.zeroshot import (ATTRIBUTE_TEMPLATES, LESION_TYPE_TEMPLATES, MODALITY_TEMPLATES,
                              MODALITY_WORDS, ZeroShot, binary_auroc, macro_auroc,
                              retrieval_recall, topk_accuracy)

# family -> (candidate values, attribute key, prompt word per value, templates)
ATTRIBUTE_FAMILIES = {
    "colour": (vocab.COLOURS, "colours", None, ATTRIBUTE_TEMPLATES),
    "lesion_type": (vocab.LESION_TYPES, "lesion_type", None, LESION_TYPE_TEMPLATES),
    "surface": (vocab.SURFACES, "surface", None, ATTRIBUTE_TEMPLATES),
    "secondary": (vocab.SECONDARY_CHANGES, "secondary",
                  {"none": "intact", "crust": "crusted", "erosion": "eroded",
                   "ulcer": "ulcerated"}, ATTRIBUTE_TEMPLATES),
    "count": (vocab.COUNTS, "count", {"single": "a solitary lesion", "few": "a few lesions",
                                      "multiple": "multiple lesions"},
              ("A skin image of {c}.", "This image shows {c}.")),
    "modality": (vocab.MODALITIES, "modality", MODALITY_WORDS, MODALITY_TEMPLATES),
}


def encode_records(zs, records, image_size, rank=0, world=1):
    """(features (N, D), kept records, skipped image paths): unreadable images are skipped
    and reported. With world > 1 each rank encodes records[rank::world] and every rank gets
    all of them back in order (data-parallel evaluation, dermvlm.ranks)."""
    from dermvlm.ranks import gather_in_order
    transform = eval_transform(image_size)
    tensors = []                                       # this rank's, None where unreadable
    for record in records[rank::world]:
        image = try_open_image(record.image)
        tensors.append(None if image is None else transform(image))
    readable = [t for t in tensors if t is not None]
    encoded = iter(zs.encode_images(torch.stack(readable)) if readable else [])
    rows = gather_in_order([None if t is None else next(encoded) for t in tensors], world)
    kept = [r for r, row in zip(records, rows) if row is not None]
    skipped = [r.image for r, row in zip(records, rows) if row is None]
    features = torch.stack([row for row in rows if row is not None]) if kept \
        else torch.empty(0)
    return features, kept, skipped


def _accuracy_by_group(correct, records):
    groups = {}
    for ok, record in zip(correct, records):
        group = record.fitzpatrick_group or "unknown"
        groups.setdefault(group, []).append(float(ok))
    return {g: round(sum(v) / len(v), 4) for g, v in sorted(groups.items())}


def diagnosis_metrics(zs, features, records, labels=None, temperature=1.0, threshold=None):
    rows = [i for i, r in enumerate(records) if r.label]
    labels = labels or sorted({records[i].label for i in rows})
    if len(labels) < 2 or not rows:
        return {}
    logits = zs.logits(features[rows], labels)
    targets = [labels.index(records[i].label) for i in rows]
    acc = topk_accuracy(logits, targets, ks=(1, min(5, len(labels))))
    correct = (logits.argmax(1) == torch.as_tensor(targets)).tolist()
    if torch.is_tensor(temperature):                    # (N, 1): one per record
        temperature = temperature[rows]
    probs = (logits / temperature).softmax(1).numpy()
    predicted, truth = probs.argmax(1), np.asarray(targets)
    return {"n": len(rows), "classes": len(labels), "top1": round(acc[1], 4),
            "top1_ci": _rounded(bootstrap_ci(correct)),
            "balanced_accuracy": round(balanced_accuracy(predicted, truth), 4),
            "balanced_accuracy_ci": _rounded(bootstrap_statistic_ci(
                lambda i: balanced_accuracy(predicted[i], truth[i]), len(truth))),
            f"top{min(5, len(labels))}": round(acc[min(5, len(labels))], 4),
            "macro_auroc": macro_auroc(logits.softmax(1).numpy(), targets, len(labels)),
            "chance_top1": round(1 / len(labels), 4),
            "top1_by_fitzpatrick": _accuracy_by_group(correct, [records[i] for i in rows]),
            "malignancy": malignancy_metrics(probs, labels, truth, threshold),
            **{k: v for k, v in set_scores(probs, truth, labels).items()
               if "auroc" in k}}


def ontology_metrics(zs, features, records, temperature=1.0, threshold=None):
    """diagnosis_metrics over the whole ontology, the label set the app ranks (a set's own
    names mapped to the ontology's: "nevus" -> melanocytic nevus), with the app's malignancy
    operating point; {} when a label is not in the ontology."""
    from dermvlm.ontology import CONDITIONS
    conditions = [find_condition(r.label) if r.label else None for r in records]
    if not records or any(c is None for c in conditions):
        return {}
    renamed = [dataclasses.replace(r, label=c.name) for r, c in zip(records, conditions)]
    return diagnosis_metrics(zs, features, renamed, [c.name for c in CONDITIONS], temperature,
                             threshold)


MELANOMA, NEVI = "melanoma", ("melanocytic nevus", "nevus")


def set_scores(probs, truth, classes):
    """Metrics of (N, C) class probabilities over a set's own `classes` against truth
    indices, with 95 % bootstrap intervals: top-1, balanced accuracy, malignant (melanoma,
    BCC, SCC) vs the rest AUROC, melanoma vs the rest AUROC and melanoma vs nevus AUROC."""
    probs, truth = np.asarray(probs, dtype=np.float64), np.asarray(truth)
    conditions = [find_condition(c) for c in classes]
    malignant = np.array([c is not None and c.malignancy == "malignant" for c in conditions])
    if any(c is None for c in conditions):      # a label outside the ontology: no malignancy
        malignant[:] = False
    predicted = probs.argmax(1)
    out = {"n": int(len(truth)), "classes": len(classes),
           "top1": round(float((predicted == truth).mean()), 4),
           "balanced_accuracy": round(balanced_accuracy(predicted, truth), 4),
           "balanced_accuracy_ci": _ci(lambda i: balanced_accuracy(predicted[i], truth[i]),
                                       len(truth))}
    if malignant.any() and not malignant.all():
        score, positive = probs[:, malignant].sum(1), malignant[truth]
        out.update(_auroc("malignant_auroc", score, positive))
    if MELANOMA in classes:
        mel = classes.index(MELANOMA)
        out.update(_auroc("melanoma_auroc", probs[:, mel], truth == mel))
        nevus = [classes.index(c) for c in NEVI if c in classes]
        if nevus:
            rows = (truth == mel) | (truth == nevus[0])
            out.update(_auroc("melanoma_vs_nevus_auroc", probs[rows, mel],
                              truth[rows] == mel))
    return out


def _auroc(key, score, positive):
    value = binary_auroc(score, positive)
    if value is None:
        return {}
    return {key: round(value, 4),
            key + "_ci": _ci(lambda i: binary_auroc(score[i], positive[i]), len(score))}


def _ci(statistic, n):
    interval = bootstrap_statistic_ci(statistic, n)
    return None if interval is None else [round(float(v), 4) for v in interval]


def balanced_accuracy(predicted, truth):
    """Mean recall over the classes present in `truth`."""
    return float(np.mean([(predicted[truth == c] == c).mean() for c in np.unique(truth)]))


def nonbenign_labels(labels):
    """Boolean mask of the labels whose ontology malignancy is malignant or premalignant, or
    None when a label is not in the ontology (its malignancy is unknown)."""
    conditions = [find_condition(label) for label in labels]
    if any(c is None for c in conditions):
        return None
    return np.array([c.malignancy != "benign" for c in conditions])


def malignancy_flags(probs, risky, threshold=None):
    """(P(malignant or premalignant) per image, flagged per image): flagged when that
    probability reaches `threshold`, or, without one, when the top label is not benign."""
    score = probs[:, risky].sum(1)
    flagged = score >= threshold if threshold is not None else risky[probs.argmax(1)]
    return score, flagged


def malignancy_metrics(probs, labels, truth, threshold=None):
    """Malignant-or-premalignant vs benign: AUROC of the summed probability, and
    sensitivity and specificity at the operating point, each with a 95 % bootstrap interval.
    {} when a label's malignancy is unknown or one side is absent."""
    risky = nonbenign_labels(labels)
    if risky is None:
        return {}
    positive = risky[truth]
    if positive.all() or not positive.any():
        return {}
    score, flagged = malignancy_flags(probs, risky, threshold)

    def sensitivity(i):
        return flagged[i][positive[i]].mean() if positive[i].any() else None

    def specificity(i):
        return (~flagged[i][~positive[i]]).mean() if (~positive[i]).any() else None
    every = np.arange(len(truth))
    return {"positive": "malignant or premalignant", "n_positive": int(positive.sum()),
            "n_negative": int((~positive).sum()),
            "auroc": round(binary_auroc(score, positive), 4),
            "auroc_ci": _rounded(bootstrap_statistic_ci(
                lambda i: binary_auroc(score[i], positive[i]), len(truth))),
            "operating_point": ("top label malignant or premalignant" if threshold is None
                                else f"P(malignant or premalignant) >= {threshold:.4f}"),
            "sensitivity": round(float(sensitivity(every)), 4),
            "sensitivity_ci": _rounded(bootstrap_statistic_ci(sensitivity, len(truth))),
            "specificity": round(float(specificity(every)), 4),
            "specificity_ci": _rounded(bootstrap_statistic_ci(specificity, len(truth)))}


def _rounded(interval):
    return None if interval is None else [round(v, 4) for v in interval]


def attribute_metrics(zs, features, records):
    """Zero-shot accuracy per SynthDerm attribute family (records with meta['attributes']).
    The candidates are the family's values that occur in the records, as the diagnosis
    labels are (a value no image has, e.g. 'cyst', which SynthDerm never draws, can only
    take wrong answers)."""
    rows = [i for i, r in enumerate(records) if "attributes" in r.meta]
    out = {}
    for family, (vocabulary, key, words, templates) in ATTRIBUTE_FAMILIES.items():
        # a multi-coloured lesion's truth is its colours; a prediction among them is right
        truth = [_as_list(records[i].meta["attributes"][key]) for i in rows]
        values = [v for v in vocabulary if any(v in t for t in truth)]
        if len(values) < 2:
            continue
        prompts = [words[v] if words else v for v in values]
        logits = zs.logits(features[rows], prompts, templates)
        predicted = [values[j] for j in logits.argmax(1).tolist()]
        correct = [p in t for p, t in zip(predicted, truth)]
        out[family] = {"top1": round(sum(correct) / max(1, len(correct)), 4),
                       "classes": len(values), "chance_top1": round(1 / len(values), 4),
                       "top1_by_fitzpatrick": _accuracy_by_group(correct,
                                                                 [records[i] for i in rows])}
    return out


def _as_list(value):
    return value if isinstance(value, list) else [value]


def concept_metrics(zs, features, records):
    """Per-concept AUROC of MONET scores against the records' concept labels."""
    seen = {c for r in records for c in r.concepts}
    present = [c for c in vocab.SKINCON_CONCEPTS if c in seen] + sorted(
        seen - set(vocab.SKINCON_CONCEPTS))
    if not present:
        return {}
    scores = zs.concept_scores(features, present)
    out = {}
    for j, concept in enumerate(present):
        auc = binary_auroc(scores[:, j].numpy(), [concept in r.concepts for r in records])
        if auc is not None:
            out[concept] = round(auc, 4)
    return {"per_concept_auroc": out,
            "mean_auroc": round(sum(out.values()) / len(out), 4) if out else None}


def evaluate_records(model, tokenizer, records, image_size, device="cpu", labels=None,
                     temperature=1.0, threshold=None, rank=0, world=1, trust=None):
    """`temperature` and `threshold`: the model's calibration and malignancy operating point
    (dermvlm.trust), as the app applies them; with `trust` (a TrustModel) both come from it,
    each image at its judged modality's temperature. `rank`, `world`: the images are encoded
    over the ranks (data-parallel), the metrics computed on all of them."""
    zs = ZeroShot(model, tokenizer, device=device)
    features, kept, skipped = encode_records(zs, records, image_size, rank, world)
    if trust is not None:
        from dermvlm.zeroshot import zeroshot_modality
        temperature = trust.temperatures(zeroshot_modality(zs, features)[0] if kept else [])
        threshold = trust.settings.malignancy_threshold
    report = {"n_images": len(kept), "skipped_unreadable": skipped,
              "diagnosis": diagnosis_metrics(zs, features, kept, labels, temperature),
              "diagnosis_ontology": ontology_metrics(zs, features, kept, temperature,
                                                     threshold),
              "concepts": concept_metrics(zs, features, kept)}
    captions = [r.captions[0] for r in kept if r.captions]
    if len(captions) == len(kept) and kept:
        report["retrieval"] = {k: round(v, 4) for k, v in retrieval_recall(
            features, zs.encode_texts(captions)).items()}
    if any("attributes" in r.meta for r in kept):
        report["attributes"] = attribute_metrics(zs, features, kept)
    return report
