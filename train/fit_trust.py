"""Fit the out-of-distribution reference, threshold and calibration temperature of a CLIP
model folder and save them beside it (trust.json + trust.safetensors).

    python -m train.fit_trust --model dermvlm/default/clip --reference runs/data/seed0 \\
        --split ../shared/realdata/isic9/Train --validation runs/data/seed2

Image sets are SynthDerm folders, manifests, or ROOT/<label>/*.jpg. A --reference set (images
the model was trained on) is all reference; a --validation set (held out, in distribution) is
all validation; a --split set gives --holdout (20 %) of its images, chosen by a hash of the
file name, to validation and the rest to the reference. At most --max-per-set reference images
are kept per set and modality (by a hash of the file name), so a set's clinical photos are not
crowded out by its dermoscopy. The threshold is the 97.5th percentile of the validation images'
scores, overall and for each modality with enough images (dermvlm.trust); the
temperature is fitted on the images of the --validation sets whose label is one of the
ontology's diagnoses (the label space users are shown), or of the --calibrate sets if given.
With --malignancy (held-out labelled sets), the malignancy operating point is fitted too: the
threshold on P(malignant or premalignant) that flags --sensitivity of those sets' malignant and
premalignant images (the app raises such an image's concern to at least moderate). With
--answerable (held-out labelled sets with clinical photographs), the conditions a clinical
photograph may be answered with are fitted: those whose top-1 F1 on the sets' clinical photos
reaches --min-f1 with at least --min-images of them, and the lowest calibrated top probability
at which the photos judged clinical among them, named with one of those conditions, are right
--answer-precision of the time (below it a clinical photo is not named); and the 1st
percentile of the modality confidence of the sets' dermoscopic images judged dermoscopic (an
image judged dermoscopic less surely gets the clinical rules). With
--calibrate-modality (held-out labelled real sets), each modality the zero-shot model judges
with at least 30 of their images gets its own temperature (phone photos are answered less well
than dermoscopy, so the shared temperature makes them overconfident); it is fitted before the
operating point and the clinical scope. Unless
--no-skin-check, the "not skin" check is fitted too (dermvlm.skincheck): the skin subspace of
the reference images' ImageNet features, and its threshold on the validation images of each
modality.
"""
import os
import sys

import numpy as np
import torch

from dermvlm.cliargs import OneLineParser, positive_int, print_result
from dermvlm.errors import DermvlmError

# an image judged dermoscopic less surely than this share of held-out real dermoscopy is
# answered under the clinical rules; fitted only with enough dermoscopic images
DERMOSCOPIC_FLOOR_QUANTILE, MIN_DERMOSCOPIC_FLOOR_IMAGES = 0.01, 100


def main(argv=None):
    parser = OneLineParser(prog="python -m train.fit_trust", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="CLIP model folder to fit and write to")
    parser.add_argument("--reference", action="append", default=[],
                        help="an image set the model was trained on (repeatable)")
    parser.add_argument("--validation", action="append", default=[],
                        help="a held-out in-distribution image set (repeatable)")
    parser.add_argument("--split", action="append", default=[],
                        help="an image set split into reference and validation (repeatable)")
    parser.add_argument("--calibrate", action="append", default=[],
                        help="validation set(s) the temperature is fitted on (default: the "
                        "--validation sets)")
    parser.add_argument("--holdout", type=float, default=0.2,
                        help="share of each set held out for validation (default 0.2)")
    parser.add_argument("--max-per-set", type=positive_int, default=1500,
                        help="reference images kept per set and modality (default 1500)")
    parser.add_argument("--malignancy", action="append", default=[],
                        help="held-out labelled set(s) the malignancy operating point is fitted "
                        "on (labels in the ontology; repeatable)")
    parser.add_argument("--sensitivity", type=float, default=0.95,
                        help="share of malignant or premalignant --malignancy images flagged "
                        "at the operating point (default 0.95)")
    parser.add_argument("--sensitivity-bound", action="store_true",
                        help="flag enough that the Wilson 95 %% lower bound of the flagged "
                        "share reaches --sensitivity (not just the share on these images)")
    parser.add_argument("--answerable", action="append", default=[],
                        help="held-out labelled set(s) whose clinical photographs fix the "
                        "conditions clinical photos may be answered with (repeatable)")
    parser.add_argument("--min-f1", type=float, default=0.5,
                        help="top-1 F1 a condition needs on those photos (default 0.5)")
    parser.add_argument("--min-images", type=positive_int, default=3,
                        help="held-out clinical photos a condition needs (default 3)")
    parser.add_argument("--answer-precision", type=float, default=0.9,
                        help="share of those photos, named at or above the clinical minimum "
                        "confidence, that must be right (default 0.9; 0: no minimum)")
    parser.add_argument("--calibrate-modality", action="append", default=[],
                        help="held-out labelled set(s) on which each judged modality gets its "
                        "own temperature (repeatable)")
    parser.add_argument("--no-skin-check", dest="skin_check", action="store_false",
                        help="fit no \"not skin\" check (every image is then judged "
                        "dermoscopic or clinical)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return print_result("train.fit_trust", lambda: fit(parser.parse_args(argv)))


def fit(args):
    from dermvlm.clip.model import load_model
    from dermvlm.imaging import eval_transform
    from dermvlm.labelled import concept_labels, held_out, labelled_records, pick_records
    from dermvlm.ontology import CONDITIONS
    from dermvlm.trust import encode_images, fit_trust
    from dermvlm.vocab import MODALITIES
    from dermvlm.zeroshot import ZeroShot, zeroshot_modality
    if not 0 < args.holdout < 1:
        raise DermvlmError(f"--holdout must be between 0 and 1, got {args.holdout}")
    if not 0 <= args.answer_precision <= 1:      # before any image is encoded
        raise DermvlmError(f"--answer-precision must be between 0 and 1, got "
                           f"{args.answer_precision}")
    model, cfg, tokenizer = load_model(args.model)
    zs, transform = ZeroShot(model, tokenizer), eval_transform(cfg["vision_cfg"]["image_size"])
    reference, validation, labels, concepts, sets = [], [], [], [], {}
    reference_modality, validation_modality = [], []
    roles = ([(s, 1.0, 0.0) for s in args.reference] + [(s, 0.0, 1.0) for s in args.validation]
             + [(s, 1 - args.holdout, args.holdout) for s in args.split])
    if not any(r for _, r, _ in roles) or not any(v for _, _, v in roles):
        raise DermvlmError("need reference images (--reference or --split) and validation "
                           "images (--validation or --split)")
    calibrate = set(args.calibrate or args.validation)
    # {path: CLIP feature} of the held-out images, so the stages below that read the same
    # sets (the operating point, the clinical scope, ...) do not encode them again
    cache = {}
    for spec, _, share in roles:
        records = labelled_records(spec)
        train = [r for r in records if not held_out(r.image, share)]
        train = [r for modality in sorted({r.modality or "" for r in train}) for r in
                 pick_records([r for r in train if (r.modality or "") == modality],
                              args.max_per_set)]
        val = [(r.image, r.label) for r in records if held_out(r.image, share)]
        reference.append(encode_images(zs, transform, [r.image for r in train],
                                       progress=not args.quiet))
        reference_modality += [MODALITIES.index(m)
                               for m in modality_of(zs, records, reference[-1])]
        encoded = encode_images(zs, transform, [p for p, _ in val], progress=not args.quiet)
        validation.append(encoded)
        cache.update(zip(encoded[2], encoded[0]))
        # the skin check's thresholds go by what an image is; the OOD thresholds below by
        # how the app judges it
        validation_modality += modality_of(zs, records, encoded)
        label_of = dict(val)     # only the calibration sets' labels count for the temperature
        labels += [canonical(label_of[p]) if spec in calibrate else None for p in encoded[2]]
        concept_of = concept_labels(spec) if spec in calibrate else {}
        concepts += [concept_of.get(os.path.normpath(p)) for p in encoded[2]]
        sets[spec] = {"reference": len(reference[-1][2]), "validation": len(encoded[2])}
    names = [c.name for c in CONDITIONS]
    features = torch.cat([v[0] for v in validation])
    known = [i for i, label in enumerate(labels) if label in names]
    if not known:
        raise DermvlmError("no calibration image has a diagnosis of the ontology: the "
                           "temperature cannot be fitted (see --calibrate)")
    logits = zs.logits(features[known], names)
    targets = torch.tensor([names.index(labels[i]) for i in known])
    trust = fit_trust((torch.cat([r[0] for r in reference]), torch.cat([r[1] for r in reference])),
                      (features, torch.cat([v[1] for v in validation])), logits, targets,
                      {"sets": sets, "temperature_images": len(known), "holdout": args.holdout},
                      torch.tensor(reference_modality), zeroshot_modality(zs, features)[0])
    fit_concepts(trust, zs, features, concepts)
    if args.skin_check:
        fit_skin_check(trust, [p for r in reference for p in r[2]],
                       [p for v in validation for p in v[2]], validation_modality,
                       progress=not args.quiet)
    if args.calibrate_modality:
        fit_modality_calibration(trust, zs, transform, args.calibrate_modality,
                                 progress=not args.quiet, cache=cache)
    if args.malignancy:
        fit_operating_point(trust, zs, transform, args.malignancy, args.sensitivity,
                            args.sensitivity_bound, progress=not args.quiet, cache=cache)
    if args.answerable:
        fit_clinical_scope(trust, zs, transform, args.answerable, args.min_images, args.min_f1,
                           args.answer_precision, progress=not args.quiet, cache=cache)
    trust.save(args.model.removeprefix("local-dir:"))
    return {"model": args.model, **vars(trust.settings)}


def modality_of(zs, records, encoded):
    """Each image of `encoded` (encode_images' features, pixels, paths): its record's modality
    where the record names one, else as the zero-shot prompts judge it."""
    from dermvlm.vocab import MODALITIES
    from dermvlm.zeroshot import zeroshot_modality
    told = {r.image: r.modality for r in records}
    judged = zeroshot_modality(zs, encoded[0])[0] if encoded[2] else []
    return [told[p] if told[p] in MODALITIES else m for p, m in zip(encoded[2], judged)]


def canonical(label):
    """A set's label as the ontology names it ("nevus" -> melanocytic nevus), else as is."""
    from dermvlm.ontology import find_condition
    condition = find_condition(label) if label else None
    return condition.name if condition else label


def encode_cached(zs, transform, paths, cache=None, progress=True):
    """(features (N, D), kept paths) of the usable images among `paths`, encoding only those
    `cache` ({path: (D,) feature}, filled here) does not hold yet."""
    from dermvlm.trust import encode_images
    cache = {} if cache is None else cache
    missing = [p for p in dict.fromkeys(paths) if p not in cache]
    encoded, _, kept = encode_images(zs, transform, missing, progress=progress and bool(missing))
    cache.update(zip(kept, encoded))
    kept = [p for p in dict.fromkeys(paths) if p in cache]
    return (torch.stack([cache[p] for p in kept]) if kept else encoded), kept


def labelled_features(zs, transform, sets, option, progress=True, cache=None):
    """(features (N, D), [ontology Condition] per image, paths) of the labelled `sets`' readable
    images (through `cache`, see encode_cached); a label outside the ontology is an error
    naming `option`."""
    from dermvlm.labelled import labelled_images
    from dermvlm.ontology import find_condition
    pairs = [(p, label) for spec in sets for p, label in labelled_images(spec)]
    unknown = sorted({label for _, label in pairs if find_condition(label) is None})
    if unknown:
        raise DermvlmError(f"{option}: labels not in the ontology: {', '.join(unknown)}")
    condition_of = {p: find_condition(label) for p, label in pairs}
    features, kept = encode_cached(zs, transform, list(condition_of), cache, progress)
    return features, [condition_of[p] for p in kept], kept


def fit_modality_calibration(trust, zs, transform, sets, progress=True, cache=None):
    """trust.settings.modality_temperature on the labelled held-out `sets`: a temperature for
    each modality, as the app judges it, with enough of their images."""
    from dermvlm.ontology import CONDITIONS
    from dermvlm.trust import MIN_TEMPERATURE_IMAGES, fit_modality_temperatures
    from dermvlm.zeroshot import zeroshot_modality
    features, conditions, _ = labelled_features(zs, transform, sets, "--calibrate-modality",
                                                progress, cache)
    names = [c.name for c in CONDITIONS]
    targets = torch.tensor([names.index(c.name) for c in conditions])
    temperatures, counts = fit_modality_temperatures(
        zs.logits(features, names), targets, zeroshot_modality(zs, features)[0])
    trust.settings.modality_temperature = temperatures or None
    trust.settings.fitted_on["modality_temperature"] = {
        "sets": list(sets), "images": counts, "min_images": MIN_TEMPERATURE_IMAGES}


def fit_operating_point(trust, zs, transform, sets, sensitivity, bound=False, progress=True,
                        cache=None):
    """trust.settings.malignancy_threshold on the labelled held-out `sets`, with the app's
    label set (the ontology) and calibration (each image's judged modality's temperature)."""
    from dermvlm.clip.evaluate import malignancy_flags, nonbenign_labels
    from dermvlm.ontology import CONDITIONS
    from dermvlm.trust import fit_malignancy_threshold
    from dermvlm.zeroshot import zeroshot_modality
    features, conditions, kept = labelled_features(zs, transform, sets, "--malignancy",
                                                   progress, cache)
    names = [c.name for c in CONDITIONS]
    probs = trust.calibrated(zs.logits(features, names),
                             zeroshot_modality(zs, features)[0]).numpy()
    score, _ = malignancy_flags(probs, nonbenign_labels(names))
    positive = [c.malignancy != "benign" for c in conditions]
    trust.settings.malignancy_threshold = fit_malignancy_threshold(score, positive, sensitivity,
                                                                   bound)
    flagged = float(np.mean(np.asarray(score)[positive] >= trust.settings.malignancy_threshold))
    trust.settings.fitted_on["malignancy"] = {"sets": list(sets), "images": len(kept),
                                              "positive": int(sum(positive)),
                                              "target_sensitivity": sensitivity,
                                              "lower_bound": bound,
                                              "sensitivity_on_these": round(flagged, 4)}


def fit_clinical_scope(trust, zs, transform, sets, min_images, min_f1, precision=0.0,
                       progress=True, cache=None):
    """trust.settings.clinical_answerable: the ontology conditions the model names right often
    enough (top-1 F1 >= min_f1, >= min_images images) on the clinical photographs of the
    labelled held-out `sets`, with the app's label set; and, with `precision` > 0,
    clinical_min_confidence: the lowest calibrated top probability at which those photos that
    the app judges clinical and names with an answerable condition are right `precision` of
    the time (fit after the temperatures: it is the probability the app shows)."""
    from dermvlm.labelled import labelled_records
    from dermvlm.ontology import CONDITIONS
    from dermvlm.trust import fit_answerable, fit_min_confidence
    from dermvlm.zeroshot import zeroshot_modality
    records = [r for spec in sets for r in labelled_records(spec)]
    truth_of = {r.image: canonical(r.label) for r in records if r.modality == "clinical"}
    names = [c.name for c in CONDITIONS]
    unknown = sorted({label for label in truth_of.values() if label not in names})
    if unknown:
        raise DermvlmError(f"--answerable: labels not in the ontology: {', '.join(unknown)}")
    if not truth_of:
        raise DermvlmError(f"--answerable {' '.join(sets)}: no clinical photograph there")
    features, kept = encode_cached(zs, transform, list(truth_of), cache, progress)
    judged = zeroshot_modality(zs, features)[0]
    probs = trust.calibrated(zs.logits(features, names), judged)
    confidence, top = probs.max(1)
    said, truth = [names[i] for i in top.tolist()], [truth_of[p] for p in kept]
    rows, answerable = fit_answerable(said, truth, min_images, min_f1)
    trust.settings.clinical_answerable = answerable
    trust.settings.fitted_on["clinical_answerable"] = {
        "sets": list(sets), "images": len(kept), "min_images": min_images, "min_f1": min_f1,
        "conditions": rows}
    fit_dermoscopic_floor(trust, zs, transform, sets,
                          [r.image for r in records if r.modality == "dermoscopic"], progress,
                          cache)
    trust.settings.clinical_min_confidence = None
    if precision <= 0:
        return
    named = [i for i, (m, name) in enumerate(zip(judged, said))
             if m == "clinical" and name in answerable]
    threshold = fit_min_confidence([float(confidence[i]) for i in named],
                                   [said[i] == truth[i] for i in named], precision)
    if threshold is None:           # no confidence reaches the precision: name nothing
        trust.settings.clinical_answerable = []
    kept_named = [i for i in named if threshold is not None and confidence[i] >= threshold]
    trust.settings.clinical_min_confidence = threshold
    trust.settings.fitted_on["clinical_min_confidence"] = {
        "precision": precision, "named": len(named),
        "right": sum(said[i] == truth[i] for i in named),
        "named_above": len(kept_named), "right_above": sum(said[i] == truth[i]
                                                           for i in kept_named)}


def fit_dermoscopic_floor(trust, zs, transform, sets, paths, progress=True, cache=None):
    """trust.settings.dermoscopic_min_modality_confidence: the DERMOSCOPIC_FLOOR_QUANTILE of
    the modality confidence of the dermoscopic images `paths` (of the `sets`) that the app
    judges dermoscopic (with at least MIN_DERMOSCOPIC_FLOOR_IMAGES of them; else None). An
    image judged dermoscopic less surely is answered under the clinical rules."""
    from dermvlm.zeroshot import zeroshot_modality
    features, _ = encode_cached(zs, transform, paths, cache, progress)
    judged, sure = zeroshot_modality(zs, features) if len(paths) else ([], [])
    sure = [c for m, c in zip(judged, sure) if m == "dermoscopic"]
    floor = (float(np.quantile(sure, DERMOSCOPIC_FLOOR_QUANTILE))
             if len(sure) >= MIN_DERMOSCOPIC_FLOOR_IMAGES else None)
    trust.settings.dermoscopic_min_modality_confidence = floor
    trust.settings.fitted_on["dermoscopic_min_modality_confidence"] = {
        "sets": list(sets), "quantile": DERMOSCOPIC_FLOOR_QUANTILE, "images": len(sure),
        "min_images": MIN_DERMOSCOPIC_FLOOR_IMAGES}


def fit_skin_check(trust, reference_paths, validation_paths, validation_modality,
                   progress=True):
    """trust.skin and settings.skin_check: the "not skin" check (dermvlm.skincheck) from the
    ImageNet features of the reference and validation images."""
    from dermvlm.skincheck import SkinCheck, imagenet_features_of
    reference = imagenet_features_of(reference_paths, progress=progress)
    validation = imagenet_features_of(validation_paths, progress=progress)
    trust.skin = SkinCheck.fit(reference, validation, validation_modality)
    trust.settings.skin_check = {"tower": trust.skin.tower,
                                 "components": trust.skin.basis.shape[1],
                                 "threshold": trust.skin.threshold,
                                 "reference": len(reference_paths),
                                 "validation": len(validation_paths)}


def fit_concepts(trust, zs, features, concepts):
    """The concept scaling, on the calibration images with SkinCon labels (the concepts that
    occur among them); MONET's score stays when there are none."""
    from dermvlm.trust import fit_concept_scaling
    labelled = [i for i, c in enumerate(concepts) if c]
    names = sorted({k for i in labelled for k, v in concepts[i].items() if v})
    if not names:
        return
    margins = zs.concept_margins(features[labelled], names)
    truth = torch.tensor([[concepts[i][n] for n in names] for i in labelled])
    trust.settings.concept_temperature, trust.settings.concept_bias = fit_concept_scaling(
        margins, truth)
    trust.settings.fitted_on["concept_images"] = len(labelled)
    trust.settings.fitted_on["concepts"] = len(names)


if __name__ == "__main__":
    sys.exit(main())
