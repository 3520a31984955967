"""Turning a model's reply into an answer: option letters, option text, JSON lists, comma
lists or free text. What cannot be parsed is returned as None (scored wrong and logged by the
runner, never dropped)."""
import json
import re

from dermvlm.choices import LETTER_INSTRUCTION, option_label


def lettered_prompt(question):
    """The question with its options as 'A. option' lines and an answer instruction."""
    if question.type == "open":
        return question.prompt
    lines = [question.prompt] + [f"{option_label(i)}. {o}" for i, o in enumerate(question.options)]
    # the instruction SynthDerm trains (synth.letter_answers=option_first); the parser reads
    # a reply that gives only the letter, or only the option, as well
    how = (LETTER_INSTRUCTION["option_first"] if question.type == "single" else
           "Answer with all letters that apply, separated by commas.")
    return "\n".join(lines + [how])


def _letters(text, n):
    """Indices of option labels standing alone in text ('B', 'B.', '(AC)'), in order."""
    labels = {option_label(i): i for i in range(n)}
    found = re.findall(r"(?<![A-Za-z])([A-Z]{1,2})(?![A-Za-z])", text)
    return list(dict.fromkeys(labels[x] for x in found if x in labels))


def _mentions(text, options):
    """Options named in text, longest first so 'dark brown' wins over 'brown'."""
    lowered, found = f" {text.lower()} ", []
    for option in sorted(options, key=len, reverse=True):
        pattern = r"(?<![a-z])" + re.escape(option.lower()) + r"(?![a-z])"
        if re.search(pattern, lowered):
            found.append(option)
            lowered = re.sub(pattern, " ", lowered)
    return [o for o in options if o in found]


def _json_list(text):
    match = re.search(r"\[.*?\]", text, re.S)
    if not match:
        return None
    try:
        value = json.loads(match.group(0))
    except json.JSONDecodeError:
        return None
    return [str(v) for v in value] if isinstance(value, list) else None


def parse_answer(text, question):
    """single -> option or None; multi -> list of options or None; open -> stripped text."""
    text = (text or "").strip()
    if question.type == "open":
        return text or None
    options = list(question.options)
    exact = {o.lower(): o for o in options}
    if text.lower().rstrip(".") in exact:
        chosen = [exact[text.lower().rstrip(".")]]
    else:
        listed = _json_list(text)
        chosen = [exact[v.lower()] for v in listed if v.lower() in exact] if listed else []
        if not chosen:
            chosen = _mentions(text, options)
        if not chosen:
            chosen = [options[i] for i in _letters(text, len(options))]
    if not chosen:
        return None
    return chosen[0] if question.type == "single" else chosen
