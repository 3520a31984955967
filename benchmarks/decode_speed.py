"""Decoding speed of the VLM at batch 1, in one run, side by side: HF `generate` (the model
as loaded, fp32) against dermvlm's decode loop (dermvlm.vlm.fastlm) in fp32, int8 and
dynamic int8 (also with drafts: dermvlm.vlm.drafts, the app's path with --quantize dynamic),
on the same model, the same prompt (an image and a chat padded to --prompt tokens) and the
same number of new tokens. First-token latency cold (the whole prompt
prefilled) and in a chat whose earlier turns are cached (only the new question prefilled, as
the app does).

    python -m benchmarks.decode_speed                 # embedded default, 600-token prompt
    python -m benchmarks.decode_speed --vlm runs/x/vlm --prompt 300 --new 64
"""
import argparse
import statistics
import time

import torch

from dermvlm.embedded import checked_part
from dermvlm.vlm.drafts import Drafter, store_for
from dermvlm.vlm.fastlm import FastLM, decode
from dermvlm.vlm.model import DermVLM

QUESTION = "What is the most likely diagnosis, and why?"


def chat_prompt(vlm, tokens):
    """(prompt ids of about `tokens` tokens: an image and earlier turns, ending with a user
    question; the number of ids before that question)."""
    filler = "The lesion is an asymmetric brown macule with irregular borders. "
    history = ""
    while True:
        messages = [{"role": "user", "content": "<image>\nDescribe this lesion."},
                    {"role": "assistant", "content": history or "A lesion."},
                    {"role": "user", "content": QUESTION}]
        text = vlm.tokenizer.apply_chat_template(
            [dict(m, content=m["content"].replace("<image>", "<image>" * vlm.num_image_tokens))
             for m in messages], tokenize=False, add_generation_prompt=True)
        ids = vlm.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= tokens:
            tail = vlm.tokenizer(QUESTION, add_special_tokens=False)["input_ids"]
            return ids, len(ids) - len(tail) - 8          # the question and its chat markers
        history += filler


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@torch.no_grad()
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vlm", help="VLM folder (default: the embedded default)")
    parser.add_argument("--prompt", type=int, default=600, help="prompt tokens")
    parser.add_argument("--new", type=int, default=64, help="tokens to decode")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    vlm = DermVLM.from_pretrained(args.vlm or checked_part("vlm"))
    ids, cached = chat_prompt(vlm, args.prompt)
    pixels = torch.rand(1, 3, vlm.vision.image_size, vlm.vision.image_size)
    embeds = vlm.embed(torch.tensor([ids]), pixels)           # (1, T, H), the image included

    run = dict(inputs_embeds=embeds, attention_mask=torch.ones(1, len(ids), dtype=torch.long),
               do_sample=False, pad_token_id=vlm.tokenizer.pad_token_id)
    # name: (first token cold, the whole reply, first token of a cached chat's new question)
    paths = {"HF generate, fp32": (
        lambda: vlm.lm.generate(**run, max_new_tokens=1),
        lambda: vlm.lm.generate(**run, max_new_tokens=args.new, min_new_tokens=args.new),
        None)}
    for quantize, drafts in ((None, False), ("int8", False), ("dynamic", False),
                             ("dynamic", True)):
        fast = FastLM(vlm.lm, quantize)
        cache = fast.new_cache(1, len(ids) + args.new)

        def prefill(fast=fast, cache=cache, start=0):
            cache.truncate(start)
            return fast.logits(fast.forward(cache, embeds[:, start:])[:, -1])

        def generate(fast=fast, cache=cache, prefill=prefill, drafts=drafts):
            drafter = Drafter(ids, store_for(vlm)) if drafts else None
            for _ in decode(fast, cache, prefill(), args.new, -1, drafter=drafter):
                pass

        def warm(cache=cache, prefill=prefill):
            prefill()                                     # the earlier turns, cached
            return timed(lambda: prefill(start=cached))
        paths[f"dermvlm, {quantize or 'fp32'}{' + drafts' if drafts else ''}"] = (
            prefill, generate, warm)

    # rounds interleave the paths, so that this machine's drift hits them alike; a path's
    # ratio to HF is the median of its per-round ratios
    seconds = {name: [] for name in paths}
    for _ in range(args.repeats):
        for name, (first, full, warm) in paths.items():
            cold, whole = timed(first), timed(full)
            seconds[name].append(((args.new - 1) / (whole - cold), cold,
                                  warm() if warm else None))
    base = [rate for rate, _, _ in seconds["HF generate, fp32"]]
    print(f"CPU, {args.threads} threads; batch 1; prompt {len(ids)} tokens "
          f"({vlm.num_image_tokens} image tokens); {args.new} new tokens; median of "
          f"{args.repeats} interleaved rounds")
    print(f"{'':25s} {'tokens/s':>9s} {'vs HF':>6s} {'first token, cold':>18s} "
          f"{'first token, chat cached':>25s}")
    for name, rounds in seconds.items():
        rate, first, warm = (statistics.median(x) if x[0] is not None else None
                             for x in zip(*rounds))
        ratio = statistics.median(r[0] / b for r, b in zip(rounds, base))
        warm_text = f"{warm * 1000:.0f} ms ({len(ids) - cached} new)" if warm else "-"
        print(f"{name:25s} {rate:9.1f} {ratio:5.2f}x {first * 1000:15.0f} ms "
              f"{warm_text:>25s}")


if __name__ == "__main__":
    main()
