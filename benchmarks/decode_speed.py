"""Decoding speed of the VLM at batch 1, in one run, side by side: HF `generate` (the model
as loaded, fp32) against dermvlm's decode loop (dermvlm.vlm.fastlm) in fp32, int8 and
dynamic int8, on the same model, the same prompt (an image and a chat padded to --prompt
tokens) and the same number of new tokens. First-token latency cold (the whole prompt prefilled) and in a chat
whose earlier turns are cached (only the new question prefilled, as the app does).

    python -m benchmarks.decode_speed                 # embedded default, 600-token prompt
    python -m benchmarks.decode_speed --vlm runs/x/vlm --prompt 300 --new 64
"""
import argparse
import statistics
import time

import torch

from dermvlm.embedded import checked_part
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


def timed(fn, repeats):
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


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
    rows = {}

    run = dict(inputs_embeds=embeds, attention_mask=torch.ones(1, len(ids), dtype=torch.long),
               do_sample=False, pad_token_id=vlm.tokenizer.pad_token_id)
    first = timed(lambda: vlm.lm.generate(**run, max_new_tokens=1), args.repeats)
    full = timed(lambda: vlm.lm.generate(**run, max_new_tokens=args.new,
                                         min_new_tokens=args.new), args.repeats)
    rows["HF generate, fp32"] = ((args.new - 1) / (full - first), first, None)

    for quantize in (None, "int8", "dynamic"):
        fast = FastLM(vlm.lm, quantize)

        def prefill(cache, start=0):
            cache.truncate(start)
            return fast.logits(fast.forward(cache, embeds[:, start:])[:, -1])

        def generate(cache):
            for _ in decode(fast, cache, prefill(cache), args.new, -1):
                pass
        cache = fast.new_cache(1, len(ids) + args.new)
        first = timed(lambda: prefill(cache), args.repeats)
        full = timed(lambda: generate(cache), args.repeats)
        prefill(cache)                                    # the earlier turns, cached once
        warm = timed(lambda: prefill(cache, cached), args.repeats)
        rows[f"dermvlm, {quantize or 'fp32'}"] = ((args.new - 1) / (full - first), first, warm)

    base = rows["HF generate, fp32"][0]
    print(f"CPU, {args.threads} threads; batch 1; prompt {len(ids)} tokens "
          f"({vlm.num_image_tokens} image tokens); {args.new} new tokens; median of "
          f"{args.repeats}")
    print(f"{'':22s} {'tokens/s':>9s} {'vs HF':>6s} {'first token, cold':>18s} "
          f"{'first token, chat cached':>25s}")
    for name, (rate, first, warm) in rows.items():
        warm_text = f"{warm * 1000:.0f} ms ({len(ids) - cached} new)" if warm else "-"
        print(f"{name:22s} {rate:9.1f} {rate / base:5.2f}x {first * 1000:15.0f} ms "
              f"{warm_text:>25s}")


if __name__ == "__main__":
    main()
