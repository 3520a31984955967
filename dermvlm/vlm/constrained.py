"""The structured report decoded under the schema, on one KV cache.

The image and the prompt are encoded once (prefill); the JSON keys, quotes and brackets the
schema fixes are appended as forced text (one forward pass per chunk, no sampling), and each
value is chosen among the values the schema allows: the candidate with the highest joint
log-probability, found by branch and bound (candidates are expanded in order of their first
token's log-probability, in one batched pass over a copy of the cache, until no unexpanded
candidate can win). Numbers are decoded greedily over digit tokens. The result always fits the
schema, so nothing needs repairing, and it costs a few dozen short forward passes instead of
generating ~250 tokens and re-running the model for every repaired field.
"""
import copy
import json

import torch

WHOLE_BATCH = 8          # candidates expanded in one batched pass


class CachedTurn:
    """The assistant's turn being written after a prompt, with its KV cache."""

    @torch.no_grad()
    def __init__(self, vlm, prompt_ids, pixels):
        self.vlm, self.lm = vlm, vlm.lm
        ids = torch.tensor([prompt_ids], device=vlm.device)
        out = self.lm(inputs_embeds=vlm.embed(ids, pixels), use_cache=True)
        self.cache, self.last = out.past_key_values, out.logits[0, -1].float().log_softmax(-1)
        digits = {str(d) for d in range(10)} | {"."}
        vocab = vlm.tokenizer.get_vocab()
        self.number_ids = torch.tensor(sorted(i for t, i in vocab.items() if t in digits))

    def ids(self, text):
        return self.vlm.tokenizer(text, add_special_tokens=False)["input_ids"]

    @torch.no_grad()
    def append(self, text_or_ids):
        ids = self.ids(text_or_ids) if isinstance(text_or_ids, str) else list(text_or_ids)
        if not ids:
            return
        out = self.lm(input_ids=torch.tensor([ids], device=self.vlm.device),
                      past_key_values=self.cache, use_cache=True)
        self.cache, self.last = out.past_key_values, out.logits[0, -1].float().log_softmax(-1)

    @torch.no_grad()
    def choose(self, candidates, before=""):
        """Append `before` (forced text) and then the candidate with the highest joint
        log-probability after it; returns that candidate. With no forced text the candidates
        are expanded in order of their first token's log-probability (branch and bound)."""
        pre, lists = (self.ids(before) if before else []), [self.ids(c) for c in candidates]
        if pre and len(candidates) > WHOLE_BATCH:     # many candidates: bound them instead
            self.append(pre)
            pre = []
        if pre:
            groups = [list(range(len(candidates)))]
            bound = None
        else:
            bound = torch.tensor([float(self.last[t[0]]) for t in lists])
            order = bound.argsort(descending=True).tolist()
            groups = [order[i:i + WHOLE_BATCH] for i in range(0, len(order), WHOLE_BATCH)]
        best = None                                   # (score, index, state)
        for group in groups:
            if bound is not None and best is not None:
                group = [i for i in group if bound[i] > best[0]]
                if not group:
                    break
            for index, score, state in self._expand(pre, lists, group):
                if best is None or score > best[0]:
                    best = (score, index, state)
        _, index, (cache, row, added, last) = best
        self.cache = self._row(cache, row, self.cache.get_seq_length() + added)
        self.last = last
        return candidates[index]

    def _expand(self, pre, lists, group):
        """(index, joint log-probability, (batched cache, its row, tokens added, next-token
        log-probabilities)) for each candidate of `group` after the forced tokens `pre`, in
        one batched pass."""
        rows = [pre + lists[i] for i in group]
        width, past = max(len(r) for r in rows), self.cache.get_seq_length()
        pad = self.vlm.tokenizer.pad_token_id or 0
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=self.vlm.device)
        mask = torch.tensor([[1] * (past + len(r)) + [0] * (width - len(r)) for r in rows],
                            device=self.vlm.device)
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(len(group))
        logp = self.lm(input_ids=ids, attention_mask=mask, past_key_values=cache,
                       use_cache=True).logits.float().log_softmax(-1)     # (G, width, V)
        for row, i in enumerate(group):
            tokens, start = lists[i], len(pre)
            # position p predicts token p + 1; the first candidate token is predicted by the
            # last forced token, or (no forced text) by the logits the turn already has
            firsts = self.last[tokens[0]] if not pre else logp[row, start - 1, tokens[0]]
            later = logp[row, torch.arange(start, start + len(tokens) - 1), tokens[1:]].sum()
            yield i, float(firsts + later), (cache, row, len(rows[row]),
                                             logp[row, len(rows[row]) - 1])

    @staticmethod
    def _row(cache, row, length):
        """One row of a batched cache (in place), cut to that row's own `length`."""
        cache.batch_select_indices(torch.tensor([row]))
        extra = cache.get_seq_length() - length
        if extra > 0:
            cache.crop(-extra)                  # the row's right padding
        return cache

    @torch.no_grad()
    def number(self, max_tokens=6, after=""):
        """A decimal number decoded greedily over digit and '.' tokens, continuing the forced
        text `after`; it ends when any other token is likelier than the best digit (that
        token is not appended)."""
        text = after
        for _ in range(max_tokens):
            allowed = self.last[self.number_ids]
            best = int(allowed.argmax())
            other = self.last.clone()
            other[self.number_ids] = -float("inf")
            if text != after and other.max() > allowed[best]:
                break
            token = int(self.number_ids[best])
            text += self.vlm.tokenizer.decode([token])
            self.append([token])
        try:
            return float(text.strip(".") or "nan")
        except ValueError:
            return float("nan")


def decode_report(turn, choices, diagnoses, max_items=5, given=None):
    """The report's fields as a dict, in the schema's order, decoded on `turn` (a CachedTurn
    after the report prompt). `choices`: {field: (allowed values, is a list)}. `given`:
    {field: value} already known (the app's case: its findings and differential), appended
    as forced text, so the fields after them are decoded given them, and no pass is spent
    choosing them."""
    out, opener, given = {}, '{"', given or {}
    order = [f for f in choices if f not in ("malignancy_concern", "suggested_next_step")]
    for field in order:
        allowed, is_list = choices[field]
        if field in given:
            out[field] = given[field]
            turn.append(f'{opener}{field}":' + json.dumps(given[field], separators=(",", ":")))
            closed, opener = True, ',"'
        else:
            out[field], closed = _value(turn, allowed, is_list,
                                        f'{opener}{field}":' + ('["' if is_list else '"'))
            opener = (',"' if closed else '"],"') if is_list else '","'
        if field == "size":                               # the number after the size class
            turn.append(f'{opener}size_mm_estimate":')
            out["size_mm_estimate"] = turn.number()
            opener = ',"'
    if "differential" in given:
        out["differential"] = given["differential"]
        turn.append(f'{opener}differential":' + json.dumps(
            given["differential"], separators=(",", ":")) + ',"malignancy_concern":"')
    else:
        out["differential"] = _differential(turn, diagnoses, max_items,
                                            f'{opener}differential":[{{"diagnosis":"')
    out["malignancy_concern"] = _value(turn, choices["malignancy_concern"][0], False, "")[0]
    out["suggested_next_step"] = _value(turn, choices["suggested_next_step"][0], False,
                                        '","suggested_next_step":"')[0]
    return out


def _value(turn, allowed, is_list, before):
    """(value, or for a list the values until the model closes it (each at most once),
    whether the list's closing '"]' was appended)."""
    chosen, remaining = [], list(allowed)
    while remaining:
        value = turn.choose(remaining, before)
        chosen.append(value)
        remaining.remove(value)
        if not is_list or not remaining:
            break
        if turn.choose(['","', '"]']) == '"]':
            return chosen, True
        before = ""
    return (chosen if is_list else chosen[0]), False


def _differential(turn, names, max_items, before):
    """[{"diagnosis", "likelihood"}] items until the model closes the list; the closing
    text, through the next key, is appended as the training JSON writes it."""
    items, remaining = [], list(names)
    another, close = '},{"diagnosis":"', '}],"malignancy_concern":"'
    while True:
        name = turn.choose(remaining, before)
        remaining.remove(name)
        turn.append('","likelihood":0.')           # a likelihood is below 1: "0." is fixed
        items.append({"diagnosis": name, "likelihood": turn.number(max_tokens=2, after="0.")})
        if not remaining or len(items) == max_items:
            turn.append(close)
            return items
        if turn.choose([another, close]) == close:
            return items
        before = ""
