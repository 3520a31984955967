"""Lettered multiple-choice questions, one convention for the whole library: how options are
labelled and asked (SynthDerm writes them, the DermaBench-style prompts ask them) and how a
reply's letter is read back (the evaluators)."""
import re

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# the answer instruction per synth.letter_answers: "D", or "Plaque (D)." (option_first)
LETTER_INSTRUCTION = {"letter": "Answer with the option's letter.",
                      "option_first": "Answer with the option and its letter."}
_OPTION_LINE = re.compile(r"^([A-Z]{1,2})\. (.+)$", re.MULTILINE)
_OPTION_FIRST = re.compile(r"\(([A-Z]{1,2})\)\.?\s*$")      # "Plaque (D)."


def option_label(i):
    """A, B, ..., Z, then AA, AB, ... (the diagnosis questions have more than 26 options)."""
    return LETTERS[i] if i < 26 else LETTERS[i // 26 - 1] + LETTERS[i % 26]


def options_of(question):
    """[(letter, option)] from a question's 'A. option' lines, in order."""
    return _OPTION_LINE.findall(question)


def reply_letter(reply, letters):
    """The option letter a reply gives, or None: the '(D)' of an option-first answer
    ('Plaque (D).'), else the first of `letters` standing alone ('D', 'D. plaque')."""
    match = _OPTION_FIRST.search(reply.strip())
    if match and match.group(1) in letters:
        return match.group(1)
    found = (x for x in re.findall(r"(?<![A-Za-z])([A-Z]{1,2})(?![A-Za-z])", reply)
             if x in letters)
    return next(found, None)
