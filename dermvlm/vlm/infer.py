"""Inference with a DermVLM: chat (streamed or not), batched generation, option scoring, and
the structured lesion report that always validates.

The report is generated as JSON and validated against `LesionReport`; any field that is
missing or invalid is repaired by constrained choice: the model scores every allowed value
(log-likelihood of the continuation) and the best one is used; the malignancy concern and
next step are raised to what the report's own differential implies. The result is a schema
object, never a raw string passed off as JSON; the repaired field names say what was not taken
as the model wrote it.
"""
import json
import math
import threading
import warnings

import torch

from dermvlm import vocab
from dermvlm.errors import DermvlmError
from dermvlm.imaging import eval_transform, open_image
from dermvlm.replies import CONCERN_NEXT_STEP
from dermvlm.report import (DISCLAIMER, MALIGNANCY_CONCERN, NOT_ASSESSABLE, LesionReport,
                            abstained_report, field_choices)
from dermvlm.trust import abstain_message
from dermvlm.vlm.data import to_messages
from dermvlm.vlm.fastlm import for_vlm
from dermvlm.vlm.model import IMAGE_TOKEN

REPORT_PROMPT = "Write the structured lesion report for this image."


def load_image(vlm, image):
    """A PIL image or a path -> (1, 3, S, S) pixels; unreadable files are a clear error."""
    return eval_transform(vlm.vision.image_size)(open_image(image))[None]


def _as_messages(messages):
    """Accept [{"role", "content"}] or LLaVA turns; put <image> in the first user turn."""
    out = [{"role": m.get("role") or {"human": "user", "gpt": "assistant"}[m["from"]],
            "content": m.get("content", m.get("value"))} for m in messages]
    if not any(IMAGE_TOKEN in m["content"] for m in out):
        first = next(i for i, m in enumerate(out) if m["role"] == "user")
        out[first] = dict(out[first], content=f"{IMAGE_TOKEN}\n{out[first]['content']}")
    return out


def prompt_ids(vlm, messages, max_new_tokens):
    """Token ids for a chat ending with the assistant's turn to speak; oldest exchanges are
    dropped (with a warning) when the prompt would not fit vlm.config.max_length."""
    messages = to_messages([{"from": m["role"], "value": m["content"]} for m in messages])
    budget = vlm.config.max_length - max_new_tokens
    while True:
        expanded = [dict(m, content=m["content"].replace(
            IMAGE_TOKEN, IMAGE_TOKEN * vlm.num_image_tokens)) for m in messages]
        text = vlm.tokenizer.apply_chat_template(expanded, tokenize=False,
                                                 add_generation_prompt=True)
        ids = vlm.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= budget:
            return ids
        # kept: a system line and the first user turn (it holds the image)
        head = 2 if messages[0]["role"] == "system" else 1
        if len(messages) <= head + 1:
            raise DermvlmError(f"prompt of {len(ids)} tokens does not fit vlm.max_length "
                               f"{vlm.config.max_length} with {max_new_tokens} new tokens")
        warnings.warn(f"prompt of {len(ids)} tokens is too long: dropping the oldest exchange")
        messages = messages[:head] + messages[head + 2:]


def _generate_kwargs(vlm, image, messages, max_new_tokens, temperature, top_p, use_cache,
                     extra):
    pixels = load_image(vlm, image)
    ids = torch.tensor([prompt_ids(vlm, _as_messages(messages), max_new_tokens)],
                       device=vlm.device)
    kwargs = dict(inputs_embeds=vlm.embed(ids, pixels), attention_mask=torch.ones_like(ids),
                  max_new_tokens=max_new_tokens, use_cache=use_cache,
                  do_sample=temperature > 0, pad_token_id=vlm.tokenizer.pad_token_id,
                  eos_token_id=vlm.tokenizer.eos_token_id, **extra)
    if temperature > 0:
        kwargs.update(temperature=temperature, top_p=top_p)
    return kwargs


def _prefilled(vlm, fast, ids, pixels):
    """(KV cache holding `ids`, logits (1, V) after them). The cache of the previous call is
    kept: when it holds the same image and a prefix of `ids` (a chat's earlier turns), only
    the rest is run, so a new question costs its own tokens, not the whole conversation."""
    held = vlm._prompt_cache
    start = 0
    if held is not None and torch.equal(held["pixels"], pixels):
        old = held["ids"]
        limit = min(len(old), len(ids) - 1, held["cache"].length)   # slots really filled
        while start < limit and old[start] == ids[start]:
            start += 1
    tensor = torch.tensor([ids], device=vlm.device)
    if start == 0 or vlm.image_token_id in ids[start:]:
        start, cache = 0, fast.new_cache(1, vlm.config.max_length)
        embeds = vlm.embed(tensor, pixels)
    else:
        cache = held["cache"]
        embeds = fast.embed(tensor[:, start:])
    cache.truncate(start)
    logits = fast.logits(fast.forward(cache, embeds)[:, -1])
    vlm._prompt_cache = {"pixels": pixels, "ids": list(ids), "cache": cache}
    return cache, logits


def _fast_tokens(vlm, fast, image, messages, max_new_tokens, temperature, top_p):
    """Yield the reply's token ids one by one (dermvlm's decode loop)."""
    from dermvlm.vlm.drafts import Drafter, remember, store_for
    from dermvlm.vlm.fastlm import decode
    ids = prompt_ids(vlm, _as_messages(messages), max_new_tokens)
    cache, logits = _prefilled(vlm, fast, ids, load_image(vlm, image))
    stop = fast.stop_ids(vlm.tokenizer)
    drafting = fast.draft_tokens > 0 and getattr(vlm, "draft_decode", True)
    drafter = Drafter(ids, store_for(vlm)) if drafting else None
    reply = []
    for token in decode(fast, cache, logits, max_new_tokens, stop, temperature, top_p,
                        suppress=fast.suppressed(), drafter=drafter):
        token = int(token[0])
        if token in stop:
            break
        vlm._prompt_cache["ids"].append(token)        # the reply is in the cache too
        reply.append(token)
        yield token
    if drafting:
        remember(vlm, reply)              # later replies draft from this one too


def _text_pieces(tokenizer, tokens):
    """Text pieces as tokens arrive; a piece never ends inside a multi-byte character."""
    seen, text = [], ""
    for token in tokens:
        seen.append(token)
        now = tokenizer.decode(seen, skip_special_tokens=True)
        if len(now) > len(text) and not now.endswith("\ufffd"):
            yield now[len(text):]
            text = now


def _fast_path(vlm, use_cache, generate_kwargs):
    """dermvlm's decode loop, or None for HF `generate` (asked for by HF keyword arguments or
    use_cache=False, or an LM the loop cannot run)."""
    return for_vlm(vlm) if use_cache and not generate_kwargs else None


@torch.no_grad()
def generate_ids(vlm, image, messages, max_new_tokens=128, temperature=0.0, top_p=1.0,
                 use_cache=True, **generate_kwargs):
    """(1, T) new token ids. Extra keyword arguments go to the HF `generate` (and choose it
    over dermvlm's decode loop, as does use_cache=False)."""
    fast = _fast_path(vlm, use_cache, generate_kwargs)
    if fast is not None:
        return torch.tensor([list(_fast_tokens(vlm, fast, image, messages, max_new_tokens,
                                               temperature, top_p))], dtype=torch.long)
    return vlm.lm.generate(**_generate_kwargs(vlm, image, messages, max_new_tokens,
                                              temperature, top_p, use_cache, generate_kwargs))


def generate(vlm, image, messages, max_new_tokens=128, temperature=0.0, top_p=1.0,
             stream=False, use_cache=True, **generate_kwargs):
    """The assistant's reply (str), or a generator of text pieces when stream=True."""
    if not stream:
        out = generate_ids(vlm, image, messages, max_new_tokens, temperature, top_p,
                           use_cache, **generate_kwargs)
        return vlm.tokenizer.decode(out[0], skip_special_tokens=True).strip()
    fast = _fast_path(vlm, use_cache, generate_kwargs)
    if fast is not None:
        def fast_pieces():
            with torch.no_grad():
                yield from _text_pieces(vlm.tokenizer, _fast_tokens(
                    vlm, fast, image, messages, max_new_tokens, temperature, top_p))
        return fast_pieces()
    from transformers import TextIteratorStreamer
    kwargs = _generate_kwargs(vlm, image, messages, max_new_tokens, temperature, top_p,
                              use_cache, generate_kwargs)
    streamer = TextIteratorStreamer(vlm.tokenizer, skip_special_tokens=True)
    thread = threading.Thread(target=torch.no_grad()(vlm.lm.generate),
                              kwargs=dict(kwargs, streamer=streamer))
    thread.start()

    def pieces():
        yield from (piece for piece in streamer if piece)
        thread.join()
    return pieces()


@torch.no_grad()
def generate_batch(vlm, images, questions, max_new_tokens=64, **generate_kwargs):
    """Greedy answers for several (image, question) pairs in one left-padded batch; a
    question may also be a whole chat ([{"role", "content"}], ending with the user). A batch
    of one is the app's own path (generate: the chat's cached prefix, drafts)."""
    if len(questions) == 1 and not generate_kwargs:
        question = questions[0]
        return [generate(vlm, images[0], question if isinstance(question, list) else
                         [{"role": "user", "content": question}], max_new_tokens)]
    rows = [prompt_ids(vlm, _as_messages(q if isinstance(q, list) else
                                         [{"role": "user", "content": q}]), max_new_tokens)
            for q in questions]
    width = max(len(r) for r in rows)
    pad = vlm.tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=vlm.device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=vlm.device)
    pixels = torch.cat([load_image(vlm, im) for im in images])
    fast = None if generate_kwargs else for_vlm(vlm)
    if fast is not None:
        from dermvlm.vlm.fastlm import decode
        cache = fast.new_cache(len(rows), width + max_new_tokens)
        stop = fast.stop_ids(vlm.tokenizer)
        logits = fast.logits(fast.forward(cache, vlm.embed(ids, pixels), valid=mask.bool())[:, -1])
        out = torch.stack(list(decode(fast, cache, logits, max_new_tokens, stop,
                                      suppress=fast.suppressed())), 1).tolist()
        return [vlm.tokenizer.decode(row[:next((k for k, t in enumerate(row) if t in stop),
                                               len(row))], skip_special_tokens=True).strip()
                for row in out]
    out = vlm.lm.generate(inputs_embeds=vlm.embed(ids, pixels), attention_mask=mask,
                          max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad,
                          eos_token_id=vlm.tokenizer.eos_token_id, **generate_kwargs)
    return [vlm.tokenizer.decode(o, skip_special_tokens=True).strip() for o in out]


@torch.no_grad()
def score_options(vlm, image, messages, prefix, options):
    """Mean log-likelihood per token of each option, continuing the assistant text `prefix`."""
    base = prompt_ids(vlm, _as_messages(messages), 64)
    prefix_ids = vlm.tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []
    pixels = load_image(vlm, image)
    scores = []
    for option in options:
        option_ids = vlm.tokenizer(option, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([base + prefix_ids + option_ids], device=vlm.device)
        logits = vlm(input_ids=ids, pixel_values=pixels).logits[0, :-1].float()
        logp = logits.log_softmax(-1)[-len(option_ids):]
        target = ids[0, -len(option_ids):]
        scores.append(float(logp.gather(1, target[:, None]).mean()))
    return scores


def parse_json_object(text):
    """The first {...} object in text as a dict, or {}."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return {}
    try:
        value = json.loads(text[start:end + 1])
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


_CHOICES = field_choices()       # field -> (allowed values, is a list)


def _field_ok(field, value):
    allowed, is_list = _CHOICES[field]
    if is_list:
        return isinstance(value, list) and value and all(v in allowed for v in value)
    return value in allowed


DESCRIBE_METHODS = ("constrained", "generate")


@torch.no_grad()
def describe(vlm, image, max_new_tokens=400, ood=None, method="constrained", case=None):
    """(LesionReport, raw text, repaired field names). `method`: "constrained" decodes the
    JSON under the schema on one KV cache (dermvlm.vlm.constrained); "generate" writes it
    freely and then repairs invalid fields by scoring the allowed values (slower). `ood`: the
    image's verdict from dermvlm.trust ({"ood_score", "threshold", "abstained"}), recorded
    in the report; an abstained image gets no findings and the model is not run. `case`: the
    image's dermvlm.case.Case (the app's zero-shot analysis): its differential and findings
    (lesion type, colours) replace the model's and its concern is a floor, so report and chat
    agree; with the constrained method the model writes the other fields given them."""
    from dermvlm.ontology import CONDITIONS
    if ood is not None and ood["abstained"]:
        return abstained_report(ood, abstain_message(ood)), "", []
    messages = [{"role": "user", "content": REPORT_PROMPT}]
    names = [c.name for c in CONDITIONS]
    given = _given(case)
    if method == "constrained":
        from dermvlm.vlm.constrained import decode_report, new_turn
        turn = new_turn(vlm, prompt_ids(vlm, _as_messages(messages), 0), load_image(vlm, image))
        data = decode_report(turn, _CHOICES, names, given=given)
        raw = json.dumps(data, separators=(",", ":"))
    elif method == "generate":
        prompt_length = len(prompt_ids(vlm, _as_messages(messages), 0))
        budget = min(max_new_tokens, vlm.config.max_length - prompt_length)  # what fits
        raw = generate(vlm, image, messages, max_new_tokens=budget)
        data = parse_json_object(raw)
    else:
        raise DermvlmError(f"describe method must be one of {', '.join(DESCRIBE_METHODS)}, "
                           f"got {method!r}")
    fixed, repaired = {}, []
    for field, (allowed, is_list) in _CHOICES.items():
        value = data.get(field)
        if _field_ok(field, value):
            fixed[field] = list(dict.fromkeys(value)) if is_list else value
            continue
        prefix = f'{{"{field}":' + ('["' if is_list else '"')
        scores = score_options(vlm, image, messages, prefix, list(allowed))
        best = allowed[max(range(len(allowed)), key=scores.__getitem__)]
        fixed[field] = [best] if is_list else best
        repaired.append(field)
    size = data.get("size_mm_estimate")
    low, high = vocab.SIZE_RANGES_MM.get(fixed["size"], (0.0, 0.0))
    if not isinstance(size, (int, float)) or not low <= size <= high:
        fixed["size_mm_estimate"] = round((low + high) / 2, 1)
        repaired.append("size_mm_estimate")
    else:
        fixed["size_mm_estimate"] = float(size)
    fixed.update({k: v for k, v in (given or {}).items() if k != "differential"})
    if case is None:
        fixed["differential"] = _differential(vlm, image, messages, data.get("differential"),
                                              names, repaired)
    else:
        fixed["differential"] = [{"diagnosis": n, "likelihood": math.floor(p * 1e4) / 1e4}
                                 for n, p in case.differential]
    if case is None:
        _follow_differential(fixed, repaired)
    else:
        _hold_to_case(fixed, case)
    fixed["disclaimer"] = DISCLAIMER
    if ood is not None:
        fixed["out_of_distribution"] = {**ood, "message": ""}
    return LesionReport.model_validate(fixed), raw, repaired


def _given(case):
    """The report fields the app's case fixes, as the training JSON writes them."""
    if case is None:
        return None
    given = {"differential": [{"diagnosis": n, "likelihood": round(p, 2)}
                              for n, p in case.differential]}
    if case.findings:
        given.update(elementary_lesions=[case.findings["lesion_type"]],
                     colours=list(case.findings["colours"]))
    return given


def _hold_to_case(fixed, case):
    """The report's claims are the case's, as the chat states them (dermvlm.replies): its
    concern and next step exactly, the modality it judged, and "not assessable" for what
    the image cannot show (replies.unseen_fields: no photo's size in mm, no dermoscopic
    close-up's body site)."""
    from dermvlm.replies import next_step, unseen_fields
    fixed["malignancy_concern"], fixed["suggested_next_step"] = case.concern, next_step(case)
    if case.findings:
        fixed["modality"] = case.findings["modality"]
    unseen = unseen_fields(case)
    if "size" in unseen:
        fixed.update(size=NOT_ASSESSABLE, size_mm_estimate=None)
    if "body_site" in unseen:
        fixed["body_site"] = NOT_ASSESSABLE


def _follow_differential(fixed, repaired):
    """Raise malignancy_concern and suggested_next_step to what the report's top diagnosis
    implies (a melanoma ranked first is never "low" concern with routine monitoring). Only
    ever raised: the model may be more cautious than its differential, never less. The top
    diagnosis alone, as SynthDerm's ground-truth reports set them (a rule that also counted
    lower-ranked diagnoses would contradict the truth it is trained on). Without a case
    only: with one, the report takes the case's concern and next step (_hold_to_case)."""
    from dermvlm.ontology import CONDITIONS_BY_NAME
    top = CONDITIONS_BY_NAME.get(fixed["differential"][0]["diagnosis"])
    if top is None:
        return
    concern = MALIGNANCY_CONCERN[top.malignancy]
    step = max(vocab.URGENCY_NEXT_STEP[top.urgency], CONCERN_NEXT_STEP[concern],
               key=vocab.NEXT_STEPS.index)
    for field, floor, order in (("malignancy_concern", concern, vocab.MALIGNANCY_CONCERNS),
                                ("suggested_next_step", step, vocab.NEXT_STEPS)):
        if order.index(fixed[field]) < order.index(floor):
            fixed[field] = floor
            repaired.append(field)


def _differential(vlm, image, messages, value, names, repaired):
    try:
        items = [(str(d["diagnosis"]), float(d["likelihood"])) for d in value]
        items = [(n.strip(), p) for n, p in items if n.strip() and 0.0 <= p <= 1.0]
    except (TypeError, KeyError, ValueError):
        items = []
    first = {}                      # a diagnosis named twice keeps its first (higher) place
    for n, p in items:
        first.setdefault(n.lower(), (n, p))
    if len(first) < len(items):
        repaired.append("differential")
    items = list(first.values())[:5]
    if not items:
        scores = torch.tensor(score_options(vlm, image, messages,
                                            '{"differential":[{"diagnosis":"', names))
        probs = (scores * 5).softmax(0)
        top = probs.argsort(descending=True)[:3].tolist()
        items = [(names[i], float(probs[i])) for i in top]
        repaired.append("differential")
    items.sort(key=lambda x: -x[1])
    total = sum(p for _, p in items)
    if total > 1.0:
        items = [(n, p / total) for n, p in items]
    # floor to 4 places: rounding up could push the sum past 1
    return [{"diagnosis": n, "likelihood": math.floor(min(p, 1.0) * 1e4) / 1e4}
            for n, p in items]
