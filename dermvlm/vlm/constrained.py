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


def _number_ids(tokenizer):
    """Ids of the digit and '.' tokens (a number is decoded over these)."""
    digits = {str(d) for d in range(10)} | {"."}
    return torch.tensor(sorted(i for t, i in tokenizer.get_vocab().items() if t in digits))


class CachedTurn:
    """The assistant's turn being written after a prompt, with its KV cache. Forced text is
    held until the next pass needs it, so it rides in the same pass as the choice after it."""
    MERGE_TOKENS = 64          # forced x candidate tokens worth one batched pass (HF rows)

    @torch.no_grad()
    def __init__(self, vlm, prompt_ids, pixels):
        self.vlm, self.lm, self.pending = vlm, vlm.lm, []
        ids = torch.tensor([prompt_ids], device=vlm.device)
        out = self.lm(inputs_embeds=vlm.embed(ids, pixels), use_cache=True)
        self.cache, self.last = out.past_key_values, out.logits[0, -1].float().log_softmax(-1)
        self.number_ids = _number_ids(vlm.tokenizer)

    @property
    def last(self):
        """Log-probabilities of the next token after all text so far (V,)."""
        if self.pending:
            ids, self.pending = self.pending, []
            self._run(ids)
        return self._last

    @last.setter
    def last(self, value):
        self._last = value

    def ids(self, text):
        return self.vlm.tokenizer(text, add_special_tokens=False)["input_ids"]

    def append(self, text_or_ids):
        """Forced text (run with the next pass)."""
        self.pending += self.ids(text_or_ids) if isinstance(text_or_ids, str) \
            else list(text_or_ids)

    @torch.no_grad()
    def _run(self, ids):
        out = self.lm(input_ids=torch.tensor([ids], device=self.vlm.device),
                      past_key_values=self.cache, use_cache=True)
        self.cache, self.last = out.past_key_values, out.logits[0, -1].float().log_softmax(-1)

    def _merge(self, pre, candidates):
        """Whether forced tokens `pre` go into the candidates' pass (HF: each row repeats
        them; with many candidates they run first so that the candidates can be bounded)."""
        return len(candidates) <= WHOLE_BATCH and len(pre) * len(candidates) <= \
            self.MERGE_TOKENS

    @torch.no_grad()
    def choose(self, candidates, before=""):
        """Append `before` (forced text) and then the candidate with the highest joint
        log-probability after it; returns that candidate. With no forced text the candidates
        are expanded in order of their first token's log-probability (branch and bound)."""
        lists = [self.ids(c) for c in candidates]
        pre, self.pending = self.pending + (self.ids(before) if before else []), []
        if pre and not self._merge(pre, candidates):
            self._run(pre)
            pre = []
        if pre:
            groups = [list(range(len(candidates)))]
            bound = None
        else:
            bound = torch.tensor([float(self.last[t[0]]) for t in lists])
            top = int(bound.argmax())
            if len(lists[top]) == 1:
                # a one-token candidate's joint log-probability is its bound, which no other
                # candidate can exceed: it wins with no pass, and rides in the next one
                self.append(lists[top])
                return candidates[top]
            order = bound.argsort(descending=True).tolist()
            groups = [order[i:i + WHOLE_BATCH] for i in range(0, len(order), WHOLE_BATCH)]
        best = None                                   # (score, index, keep)
        for group in groups:
            if bound is not None and best is not None:
                group = [i for i in group if bound[i] > best[0]]
                if not group:
                    break
            for index, score, keep in self._expand(pre, lists, group):
                if best is None or score > best[0]:
                    best = (score, index, keep)
        best[2]()
        return candidates[best[1]]

    def _expand(self, pre, lists, group):
        """(index, joint log-probability, keep) for each candidate of `group` after the forced
        tokens `pre`, in one batched pass; keep() makes that candidate the turn's text."""
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
            yield i, float(firsts + later), self._keeper(cache, row, past + len(rows[row]),
                                                         logp[row, len(rows[row]) - 1])

    def _keeper(self, cache, row, length, last):
        def keep():
            """One row of the batched cache (in place), cut to that row's own length."""
            cache.batch_select_indices(torch.tensor([row]))
            extra = cache.get_seq_length() - length
            if extra > 0:
                cache.crop(-extra)                  # the row's right padding
            self.cache, self.last = cache, last
        return keep

    def length(self):
        self.last                                   # forced text held back runs now
        return self.cache.get_seq_length()

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


class FastTurn(CachedTurn):
    """The same turn on dermvlm.vlm.fastlm: one preallocated cache; the candidates of a
    choice are scored in one row whose attention mask is a tree (each candidate sees the
    prompt, the forced text and its own earlier tokens), so no cache is copied or padded."""

    @torch.no_grad()
    def __init__(self, vlm, prompt_ids, pixels, fast, room=512):
        self.vlm, self.fast, self.pending = vlm, fast, []
        ids = torch.tensor([prompt_ids], device=vlm.device)
        self.cache = fast.new_cache(1, len(prompt_ids) + room)
        self.last = self._logp(fast.forward(self.cache, vlm.embed(ids, pixels))[0, -1])
        self.number_ids = _number_ids(vlm.tokenizer)

    def _logp(self, hidden):
        return self.fast.logits(hidden).log_softmax(-1)

    def length(self):
        self.last                                   # forced text held back runs now
        return self.cache.length

    @torch.no_grad()
    def _run(self, ids):
        embeds = self.fast.embed(torch.tensor([ids], device=self.vlm.device))
        self.last = self._logp(self.fast.forward(self.cache, embeds)[0, -1])

    def _merge(self, pre, candidates):
        return len(candidates) <= WHOLE_BATCH       # the tree runs `pre` once for all

    def _expand(self, pre, lists, group):
        """Forced tokens `pre` once, then each candidate of `group` as a branch."""
        past, cache = self.cache.length, self.cache
        tokens, positions, spans = list(pre), list(range(past, past + len(pre))), []
        for i in group:
            spans.append((i, len(tokens)))
            tokens += lists[i]
            positions += range(past + len(pre), past + len(pre) + len(lists[i]))
        count = len(tokens)
        attend = torch.zeros(1, count, past + count, dtype=torch.bool)
        attend[0, :, :past] = True
        attend[0, :, past:past + len(pre)] = True                  # branches see the text
        attend[0, :len(pre), past:past + len(pre)] = torch.ones(len(pre), len(pre),
                                                                 dtype=torch.bool).tril()
        for i, first in spans:
            end = first + len(lists[i])
            attend[0, first:end, past + first:past + end] = torch.ones(
                len(lists[i]), len(lists[i]), dtype=torch.bool).tril()
        embeds = self.fast.embed(torch.tensor([tokens], device=self.vlm.device))
        hidden = self.fast.forward(cache, embeds, positions=torch.tensor([positions]),
                                   attend=attend)[0]                     # (count, H)
        # only the last forced token's and the branches' next-token logits are read: the LM
        # head (the largest matrix) skips the rest of the forced text
        skip = max(len(pre) - 1, 0)
        logp = self._logp(hidden[skip:])                                 # (count - skip, V)
        for i, first in spans:
            ids, first = lists[i], first - skip
            # the first candidate token follows the last forced token, or the turn's logits
            firsts = self.last[ids[0]] if not pre else logp[0, ids[0]]
            later = logp[torch.arange(first, first + len(ids) - 1), ids[1:]].sum()
            yield i, float(firsts + later), self._keeper(past, len(pre), first + skip,
                                                         len(ids), logp[first + len(ids) - 1])

    def _keeper(self, past, forced, first, count, last):
        def keep():
            """The forced text stays where it is; the chosen branch moves after it."""
            self.cache.move(list(range(past + first, past + first + count)), past + forced)
            self.last = last
        return keep


def new_turn(vlm, prompt_ids, pixels):
    """A FastTurn when the LM runs on dermvlm.vlm.fastlm, else a CachedTurn (HF cache)."""
    from dermvlm.vlm.fastlm import for_vlm
    fast = for_vlm(vlm)
    return CachedTurn(vlm, prompt_ids, pixels) if fast is None else \
        FastTurn(vlm, prompt_ids, pixels, fast)


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
