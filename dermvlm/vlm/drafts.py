"""Drafts for speculative decoding: the tokens a reply will probably say next, looked up in
the text so far (prompt lookup) and in a store of the model's own earlier replies (retrieval
drafting, as in REST, He et al. 2023). No draft model is trained or run.

Why: with dynamic int8 weights a pass over 7 tokens costs about a third more than a pass over
one (dermvlm.vlm.fastlm), and the assistant's replies repeat their phrasing from image to image.
The decode loop (fastlm.decode) runs the chosen token and its draft in one pass and keeps the
draft's tokens for as long as they are what the model itself picks: greedy output is the
model's own, and sampling keeps its distribution (speculative sampling with a one-point
draft). A wrong draft costs only the wider pass.

The store of a VLM folder is `reply_drafts.json` ({"format", "replies": [text]}), written by
`python -m train.drafts` (the model's replies to common questions on SynthDerm images; the
build writes it); each reply decoded in a process is added to it.
"""
import json
from pathlib import Path

from dermvlm.errors import DataError

DRAFTS_FILE = "reply_drafts.json"
FORMAT = "dermvlm-drafts/1"
MAX_N = 3                       # the longest suffix looked up (then shorter ones)
STORE_LIMIT = 200_000           # tokens (~2,000 replies); a long-running app stops adding then


class NgramTable:
    """Token sequences indexed by their n-grams (n = 1..MAX_N): for each n-gram, the sequence
    and position that followed its latest occurrence."""

    def __init__(self):
        self.sequences = []
        self.follows = {}                 # n-gram tuple -> (sequence index, next position)
        self.tokens = 0

    def add(self, tokens):
        """Index a new sequence; returns its index (extend it token by token)."""
        self.sequences.append([])
        index = len(self.sequences) - 1
        for token in tokens:
            self.extend(index, token)
        return index

    def extend(self, index, token):
        """Append `token` to sequence `index`: the n-grams just before it now lead to it."""
        tokens = self.sequences[index]
        tokens.append(token)
        end = len(tokens) - 1
        for n in range(1, min(MAX_N, end) + 1):
            self.follows[tuple(tokens[end - n:end])] = (index, end)
        self.tokens += 1

    def after(self, gram, count):
        """Up to `count` tokens that followed `gram` (a tuple) last time, or []."""
        hit = self.follows.get(gram)
        if hit is None:
            return []
        sequence, position = hit
        return self.sequences[sequence][position:position + count]


class Drafter:
    """One reply's drafts: the context (prompt and reply so far) is looked up first, then the
    store; the longest matching suffix wins."""

    def __init__(self, context, store=None):
        self.context = NgramTable()
        self.context.add(context)
        self.store = store

    def append(self, token):
        self.context.extend(0, token)

    def propose(self, count):
        """Up to `count` draft tokens to follow the context."""
        tokens = self.context.sequences[0]
        if count <= 0:
            return []
        for n in range(min(MAX_N, len(tokens)), 0, -1):
            gram = tuple(tokens[-n:])
            for table in (self.context, self.store):
                draft = table.after(gram, count) if table is not None else []
                if draft:
                    return draft
        return []


def read_drafts(folder):
    """The reply texts of folder/reply_drafts.json, or [] when the folder has none."""
    path = Path(folder) / DRAFTS_FILE
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a JSON draft store ({exc})")
    if not isinstance(data, dict) or data.get("format") != FORMAT or not all(
            isinstance(t, str) for t in data.get("replies", [None])):
        raise DataError(f"{path}: expected {{\"format\": \"{FORMAT}\", \"replies\": [text, "
                        "...]}")
    return data["replies"]


def store_for(vlm):
    """The VLM's draft store (made once from vlm.draft_texts, then grown by remember)."""
    store = getattr(vlm, "_draft_store", None)
    if store is None:
        store = vlm._draft_store = NgramTable()
        for text in getattr(vlm, "draft_texts", ()):
            store.add(vlm.tokenizer(text, add_special_tokens=False)["input_ids"])
    return store


def remember(vlm, reply_ids):
    """Add a decoded reply to the VLM's store (until it holds STORE_LIMIT tokens)."""
    store = store_for(vlm)
    if len(reply_ids) > 1 and store.tokens < STORE_LIMIT:
        store.add(reply_ids)


def write_drafts(folder, replies):
    path = Path(folder) / DRAFTS_FILE
    path.write_text(json.dumps({"format": FORMAT, "replies": replies}, indent=0) + "\n")
    return path
