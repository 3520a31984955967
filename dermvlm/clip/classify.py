"""`dermvlm classify`: zero-shot labels or SkinCon concept scores for image files."""
import csv
from pathlib import Path

import torch
from tqdm import tqdm

from dermvlm.clip.evaluate import nonbenign_labels
from dermvlm.clip.model import load_model
from dermvlm.errors import DermvlmError
from dermvlm.imaging import ImageError, collect_images, eval_transform, open_image
from dermvlm.ontology import CONDITIONS
from dermvlm.trust import TrustModel, abstain_message, assess, concept_scaling, ood_note
from dermvlm.vocab import SKINCON_CONCEPTS
from dermvlm.zeroshot import DERMLIP_TEMPLATES, ZeroShot


def read_labels(labels=None, labels_file=None):
    if labels_file:
        try:
            items = Path(labels_file).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise DermvlmError(f"{labels_file}: cannot read labels file: {exc.strerror}")
    else:
        items = (labels or "").split(",")
    items = [x.strip() for x in items if x.strip()]
    if len(items) < 2:
        raise DermvlmError("need at least two labels (got "
                           f"{len(items)}): --labels 'melanoma,nevus' or --labels-file F")
    return items


def classify(inputs, model_spec, labels=None, concepts=False, top_k=5, templates=None,
             failures=None, ignore_ood=False, batch_size=32, progress=False):
    """[(image path, [(label, score), ...] best first, OOD verdict or None)]. Images go
    through the image tower `batch_size` at a time. With the model folder's trust file, label
    probabilities are calibrated and an image out of distribution gets no scores (unless
    ignore_ood). A file that is not a usable image is appended to `failures` as (path,
    reason) and the batch goes on; never fatal."""
    failures = [] if failures is None else failures
    model, model_cfg, tokenizer = load_model(model_spec)
    trust = TrustModel.load(model_spec)
    zs = ZeroShot(model, tokenizer)
    transform = eval_transform(model_cfg["vision_cfg"]["image_size"])
    names = list(SKINCON_CONCEPTS) if concepts else labels
    paths, results = collect_images(inputs, failures), []
    bar = tqdm(total=len(paths), desc="classify", unit="img", disable=not progress)
    for start in range(0, len(paths), batch_size):
        batch = []
        for path in paths[start:start + batch_size]:
            try:
                batch.append((str(path), open_image(path)))
            except ImageError as exc:
                failures.append((str(path), str(exc).partition(": ")[2] or str(exc)))
        bar.update(len(paths[start:start + batch_size]))
        if batch:
            results += _classify_batch(batch, zs, transform, trust, names, concepts, top_k,
                                       templates, ignore_ood)
    bar.close()
    return results


def _classify_batch(batch, zs, transform, trust, names, concepts, top_k, templates,
                    ignore_ood):
    features = zs.encode_images(torch.stack([transform(image) for _, image in batch]))
    judged, verdicts = assess(zs, trust, features, [image for _, image in batch])
    modalities = [m for m, _ in judged]
    if concepts:
        scores = zs.concept_scores(features, names, **concept_scaling(trust))
    else:
        logits = zs.logits(features, names, templates or DERMLIP_TEMPLATES)
        scores = trust.calibrated(logits, modalities) if trust else logits.softmax(1)
        if trust:           # the ontology's own probabilities, where those are the labels
            ontology = names == [c.name for c in CONDITIONS] and templates is None
            verdicts = scoped(trust, zs, features, judged, verdicts,
                              scores if ontology else None)
    results = []
    for (path, _), row, verdict in zip(batch, scores, verdicts):
        if verdict and verdict["abstained"] and not ignore_ood:
            results.append((path, [], verdict))
            continue
        order = row.argsort(descending=True)[:top_k].tolist()
        results.append((path, [(names[j], float(row[j])) for j in order], verdict))
    return results


def scoped(trust, zs, features, judged, verdicts, probs=None):
    """The verdicts with the clinical rules applied (dermvlm.trust: a phone photo is named
    only when its top diagnosis is one the model earned, confidently enough; one it does not
    name keeps its concern in words), judged on the whole ontology whatever labels the user
    ranks: whether the model may name what a photo shows is a property of the photo, not of
    the label list. (features (N, D); judged [(modality, confidence)] per image; `probs`: the
    calibrated (N, C) probabilities over the ontology's names, where the caller has them.)"""
    names = [c.name for c in CONDITIONS]
    if probs is None:
        probs = trust.calibrated(zs.logits(features, names), [m for m, _ in judged])
    risky = torch.from_numpy(nonbenign_labels(names))
    return [trust.with_concern(trust.in_scope(verdict, modality, names[int(row.argmax())],
                                              float(row.max()), sure), float(row[risky].sum()),
                               bool(risky[row.argmax()]))
            for verdict, (modality, sure), row in zip(verdicts, judged, probs)]


def write_predictions(results, out):
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "rank", "label", "score", "ood_score", "abstained"])
        for path, ranked, verdict in results:
            ood = [verdict["ood_score"], verdict["abstained"]] if verdict else ["", ""]
            if not ranked:
                writer.writerow([path, "", "", "", *ood])
            for rank, (label, score) in enumerate(ranked, 1):
                writer.writerow([path, rank, label, f"{score:.6f}", *ood])


def result_lines(path, ranked, verdict):
    """What `dermvlm classify` prints for one image: the OOD score beside it, unless the image
    was refused for another reason (not skin, out of scope) that the score is not part of."""
    head = path
    if verdict is not None and (not verdict["abstained"] or ood_note(verdict)):
        head = (f"{path}  (out-of-distribution score {verdict['ood_score']:.2f}, threshold "
                f"{verdict['threshold']:.2f})")
    if verdict and verdict["abstained"] and not ranked:
        return [head, f"  {abstain_message(verdict)}"]
    return [head] + [f"  {score:7.3f}  {label}" for label, score in ranked]
