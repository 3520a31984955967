"""Held-out VQA scoring for a VLM: lettered multiple-choice accuracy per question family,
open-ended answers checked against the image's attributes, and structured-report
validity."""
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

from tqdm import tqdm

from dermvlm import vocab
from dermvlm.errors import DermvlmError
from dermvlm.report import MALIGNANCY_CONCERN
from dermvlm.choices import options_of, reply_letter
from dermvlm.ontology import CONDITIONS
from dermvlm.vlm.infer import describe, generate
from dermvlm.vlm.model import IMAGE_TOKEN, target_mask

FAMILIES = {"Which diagnosis fits best?": "diagnosis", "Which primary lesion is shown?":
            "lesion_type", "What is the main colour of the lesion?": "colour",
            "Is the lesion benign, premalignant or malignant?": "malignancy"}


def require_files(folder, *names):
    """A clear error, before any model work, when a SynthDerm file a score reads is absent."""
    for name in names:
        if not (Path(folder) / name).is_file():
            raise DermvlmError(f"{Path(folder) / name}: not found; --data must be a SynthDerm "
                               "folder written by `dermvlm synth`")


def require_eval_files(folder, questions, attributes):
    """The files evaluate_vlm reads for multiple-choice `questions` and for the open questions
    and reports (`attributes`), checked before any model is loaded."""
    require_files(folder, *(["vqa_llava.json"] if questions else []),
                  *(["attributes.jsonl"] if attributes else []))


def choice_items(folder, limit=None):
    """(image path, question text, answer letter, family) from a SynthDerm vqa_llava.json."""
    folder = Path(folder)
    require_files(folder, "vqa_llava.json")
    items = []
    for record in json.loads((folder / "vqa_llava.json").read_text()):
        question = record["conversations"][0]["value"].replace("<image>\n", "")
        family = FAMILIES.get(question.split("\n")[0])
        if family:
            reply = record["conversations"][1]["value"].strip()
            options = dict(options_of(question))
            answer = reply_letter(reply, options)
            if answer is None:
                raise DermvlmError(f"{folder / 'vqa_llava.json'}: record {record.get('id')!r} "
                                   f"answers a lettered question with {reply[:40]!r}; "
                                   "expected 'D', 'D. plaque' or 'Plaque (D).'")
            items.append((str(folder / record["image"]), question, answer, family))
    return items[:limit]


def closed_accuracy(vlm, folder, limit=200, progress=True, image_shift=0):
    """Accuracy per family, and `balanced` per family (see cloze_accuracy; an unparsed reply
    counts as wrong). `image_shift` k > 0 is the image-swap ablation: question i is asked
    about the image of question i + k, so a model that reads the image drops toward chance
    while one that answers from priors alone keeps its score."""
    hits, unparsed = defaultdict(list), 0
    truths, chosen = defaultdict(list), defaultdict(list)
    items, images = _questions(folder, limit, image_shift)
    for k, (image, question, answer, family) in enumerate(tqdm(items, desc="vqa",
                                                               disable=not progress)):
        if image_shift:
            image = _other_image(images, k, image_shift)
        reply = generate(vlm, image, [{"role": "user", "content": question}],
                         max_new_tokens=16)        # room for "Seborrhoeic keratosis (B)."
        options = dict(options_of(question))
        letter = reply_letter(reply, options)
        unparsed += letter is None
        hits[family].append(letter == answer)
        truths[family].append(options[answer])
        chosen[family].append(options.get(letter))
    return {**_family_scores(hits, truths, chosen), "unparsed_answers": unparsed,
            "chance": 0.25}


def _family_scores(hits, truths, chosen):
    """Overall and per-family accuracy and per-family balanced accuracy from per-family lists
    of hits, true answers and chosen answers."""
    total = [x for v in hits.values() for x in v]
    return {"accuracy": round(sum(total) / max(1, len(total)), 4),
            "per_family": {f: round(sum(v) / len(v), 4) for f, v in sorted(hits.items())},
            "balanced": {f: round(balanced_accuracy(truths[f], chosen[f]), 4)
                         for f in sorted(truths)},
            "n": len(total)}


def reply_scores(vlm, image, question, replies):
    """[log-probability of each reply, end-of-turn included, as the whole answer to
    `question` about `image`], in one batched forward pass. Not length-normalised
    (lm-eval-harness's `acc`)."""
    import torch

    from dermvlm.vlm.data import collate, encode_conversation, to_messages
    from dermvlm.vlm.infer import load_image
    pixel = load_image(vlm, image)[0]                                   # (3, S, S)
    batch = []
    for reply in replies:
        ids, labels = encode_conversation(vlm.tokenizer, to_messages(
            [{"from": "human", "value": f"{IMAGE_TOKEN}\n{question}"},
             {"from": "gpt", "value": reply}]), vlm.num_image_tokens, 10 ** 6)
        batch.append((torch.tensor(ids), torch.tensor(labels), pixel))
    ids, mask, labels, pixels = collate(batch, vlm.tokenizer.pad_token_id)  # right-padded
    with torch.no_grad():
        logits = vlm(input_ids=ids.to(vlm.device), attention_mask=mask.to(vlm.device),
                     pixel_values=pixels).logits.float()                # (R, T, V)
    targets = labels[:, 1:].to(logits.device)                           # (R, T-1)
    logp = logits[:, :-1].log_softmax(-1).gather(-1, targets.clamp_min(0)[..., None])[..., 0]
    return (logp * target_mask(labels).to(logp.device)).sum(1).tolist()


def cloze_answer(family, value):
    """The answer a SynthDerm conversation gives when `value` is the truth, in one of its
    trained wordings: "Papule.", "Tinea corporis.", "It appears benign."."""
    return vocab.MALIGNANCY_ANSWERS[value] if family == "malignancy" else f"{value}.".capitalize()


def cloze_accuracy(vlm, folder, limit=200, progress=True, image_shift=0):
    """Accuracy per family on the lettered questions in the cloze formulation (OLMES,
    Gu et al. 2024): the question is asked the way training asked it openly ("What type of
    primary lesion is this?"), and the model's answer is the option whose answer sentence
    (`cloze_answer`) it finds most likely. Letters need a second skill, mapping an answer
    onto a letter, which SmolLM2-135M lacks even with the caption in the prompt; this score
    says whether the image is read. `image_shift`: the swap ablation, as in closed_accuracy.
    `majority`: per family, the score of always giving the most common true answer (a model
    that ignores the image can reach it; SynthDerm's malignancy truths are mostly benign).
    `balanced`: per family, `balanced_accuracy`, which a prior alone cannot lift above
    1 / (number of true answers seen)."""
    hits, truths, chosen = defaultdict(list), defaultdict(list), defaultdict(list)
    items, images = _questions(folder, limit, image_shift)
    for k, (image, question, answer, family) in enumerate(tqdm(items, desc="vqa cloze",
                                                               disable=not progress)):
        if image_shift:
            image = _other_image(images, k, image_shift)
        options = options_of(question)
        scores = reply_scores(vlm, image, OPEN_QUESTIONS[family][0],
                              [cloze_answer(family, text) for _, text in options])
        best = max(zip(scores, (letter for letter, _ in options)))[1]
        hits[family].append(best == answer)
        truths[family].append(dict(options)[answer])
        chosen[family].append(dict(options)[best])
    majority = {f: round(max(Counter(v).values()) / len(v), 4)
                for f, v in sorted(truths.items())}
    return {**_family_scores(hits, truths, chosen), "majority": majority}


def balanced_accuracy(truths, predictions):
    """The mean over true values of the share of their questions answered right (recall):
    always giving one answer scores 1 / (number of distinct truths), whatever the base
    rates. Same as sklearn's balanced_accuracy_score."""
    recalls = defaultdict(list)
    for truth, prediction in zip(truths, predictions, strict=True):
        recalls[truth].append(truth == prediction)
    return sum(sum(v) / len(v) for v in recalls.values()) / max(1, len(recalls))


def _questions(folder, limit, image_shift):
    items = choice_items(folder, limit)
    images = [item[0] for item in items]
    _check_swap(folder, images, image_shift)
    return items, images


def _check_swap(folder, images, image_shift):
    if image_shift and len(set(images)) < 2:
        raise DermvlmError(f"{folder}: the image-swap ablation needs questions about at least "
                           f"two images, found {len(set(images))}")


def _attributes(folder, limit):
    """The first `limit` ground-truth records of a SynthDerm folder's attributes.jsonl."""
    require_files(folder, "attributes.jsonl")
    lines = (Path(folder) / "attributes.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines if x.strip()][:limit]


def _image_of(folder, attrs):
    return Path(folder) / "images" / f"{attrs['image_id']}.jpg"


def _other_image(images, k, shift):
    """The image of question k + shift (or the next one that differs from question k's)."""
    return next(other for j in range(1, len(images))
                if (other := images[(k + shift * j) % len(images)]) != images[k])


# family -> (question in the training phrasing, attributes.jsonl key, values a reply may name)
OPEN_QUESTIONS = {
    "colour": ("What colour is the lesion?", "colours", vocab.COLOURS),
    "lesion_type": ("What type of primary lesion is this?", "lesion_type",
                    vocab.LESION_TYPES),
    "count": ("How many lesions are there?", "count", vocab.COUNTS),
    "diagnosis": ("What is the most likely diagnosis?", "condition",
                  tuple(c.name for c in CONDITIONS)),
    "malignancy": ("Is this lesion malignant?", "malignancy", vocab.MALIGNANCY),
    "modality": ("What imaging modality is this?", "modality", vocab.MODALITIES),
}


def named_value(reply, values):
    """The value a free-text reply names first (the longest on a tie: 'dark brown' over
    'brown'), or None. Prefix match on word starts, so 'plaques' names 'plaque' and
    'premalignant' does not name 'malignant'."""
    found = [(m.start(), -len(v), v) for v in values
             if (m := re.search(rf"\b{re.escape(v)}", reply, re.IGNORECASE))]
    return min(found)[2] if found else None


def open_accuracy(vlm, folder, limit=100, progress=True, image_shift=0):
    """Per family, the share of open questions whose reply names the image's true value,
    next to `majority`, the score of always naming the most common true value (a model that
    ignores the image can reach it, not beat it), and how many distinct values the replies
    named (1-2 means the model has collapsed onto a prior). `image_shift`: the swap ablation."""
    attributes = _attributes(folder, limit)
    images = [str(_image_of(folder, a)) for a in attributes]
    _check_swap(folder, images, image_shift)
    hits, named, unnamed = defaultdict(list), defaultdict(set), defaultdict(int)
    for k, attrs in enumerate(tqdm(attributes, desc="vqa open", disable=not progress)):
        image = _other_image(images, k, image_shift) if image_shift else images[k]
        for family, (question, key, values) in OPEN_QUESTIONS.items():
            reply = generate(vlm, image, [{"role": "user", "content": question}],
                             max_new_tokens=24)
            value, truth = named_value(reply, values), attrs[key]
            hits[family].append(value in truth if isinstance(truth, list) else value == truth)
            named[family].add(value)
            unnamed[family] += value is None
    out = {}
    for family, (_, key, values) in OPEN_QUESTIONS.items():
        truths = [a[key] if isinstance(a[key], list) else [a[key]] for a in attributes]
        majority = max(sum(v in t for t in truths) for v in values)
        out[family] = {"accuracy": round(sum(hits[family]) / max(1, len(attributes)), 4),
                       "majority": round(majority / max(1, len(attributes)), 4),
                       "distinct_named": len(named[family] - {None}),
                       "unnamed": unnamed[family]}
    return {"per_family": out, "n_images": len(attributes)}


def report_validity(vlm, folder, limit=20, progress=True):
    """Share of images whose report validated (always 1.0 by construction) and how many had
    every field taken as the model wrote it; top diagnosis, malignancy concern and next step
    agreement with the ground truth."""
    attributes = _attributes(folder, limit)
    valid = unrepaired = top_dx = concern = step = 0
    for attrs in tqdm(attributes, desc="reports", disable=not progress):
        report, _, repaired = describe(vlm, _image_of(folder, attrs))
        valid += 1
        unrepaired += not repaired
        top_dx += report.differential[0].diagnosis == attrs["condition"]
        concern += report.malignancy_concern == MALIGNANCY_CONCERN[attrs["malignancy"]]
        step += report.suggested_next_step == vocab.URGENCY_NEXT_STEP[attrs["urgency"]]
    n = max(1, len(attributes))
    return {"n": len(attributes), "validity": valid / n, "valid_without_repair": unrepaired / n,
            "top_diagnosis_accuracy": round(top_dx / n, 4),
            "malignancy_concern_accuracy": round(concern / n, 4),
            "next_step_accuracy": round(step / n, 4)}


def evaluate_vlm(vlm, folder, closed=200, cloze=200, open_images=100, reports=20,
                 swap_images=0, progress=True):
    """The held-out VQA evaluation `eval.vqa` and the embedded default's build both run:
    {"closed", "closed_cloze", "open", "reports"} for the counts that are > 0 (0 skips a
    score), and with swap_images=K each of the first three again as "<name>_other_image",
    every question asked about the image K questions on (does the model read the image?)."""
    require_eval_files(folder, closed or cloze, open_images or reports)
    result = {}
    for name, score, n in (("closed", closed_accuracy, closed),
                           ("closed_cloze", cloze_accuracy, cloze),
                           ("open", open_accuracy, open_images)):
        if n > 0:
            result[name] = score(vlm, folder, n, progress)
            if swap_images:
                result[f"{name}_other_image"] = score(vlm, folder, n, progress,
                                                      image_shift=swap_images)
    if reports > 0:
        result["reports"] = report_validity(vlm, folder, reports, progress)
    return result
