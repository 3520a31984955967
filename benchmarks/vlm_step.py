"""LoRA SFT step and batch-1 decoding: dermvlm vs plain HF + peft on the same LM and batch.

    python -m benchmarks.vlm_step                          # CPU: SmolLM2-135M from the wheel
    python -m benchmarks.vlm_step --lm qwen2-0.5b-shape --batch 8 --seq 1024   # GPU baseline

Training: both wrap the LM in peft LoRA (r16, all linear). Plain HF computes the loss from
full-vocabulary logits of every position; dermvlm computes it on target positions only, in
chunks (`chunked_lm_loss`), so fp32 logits for the whole batch are never materialised. Half of
each sequence is target tokens, as in instruction tuning. Decoding: HF `generate` with the
adapter unmerged and merged vs dermvlm's decode loop (dermvlm.vlm.fastlm, merged), greedy,
batch 1.
"""
import argparse

import torch

from benchmarks.timing import seconds_per_call
from dermvlm.vlm.model import chunked_lm_loss


def make_lm(name, device):
    from transformers import AutoModelForCausalLM, Qwen2Config
    if name == "qwen2-0.5b-shape":   # random weights in the Qwen2-0.5B shape (no download)
        config = Qwen2Config(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                             num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                             tie_word_embeddings=True)
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        return AutoModelForCausalLM.from_config(config, dtype=dtype).to(device)
    from dermvlm.vlm.lm import load_lm
    return load_lm(name, device=device)[0]


def with_lora(lm):
    from peft import LoraConfig, get_peft_model
    return get_peft_model(lm, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                         task_type="CAUSAL_LM"))


def train_rates(lm, args, device):
    vocab = lm.config.vocab_size
    ids = torch.randint(0, vocab, (args.batch, args.seq), device=device)
    labels = ids.clone()
    labels[:, : args.seq // 2] = -100                       # prompt half: no loss
    optimizer = torch.optim.AdamW([p for p in lm.parameters() if p.requires_grad], lr=1e-4)
    base = lm.get_base_model()

    def hf_step():
        optimizer.zero_grad(set_to_none=True)
        lm(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()

    def our_step():
        optimizer.zero_grad(set_to_none=True)
        hidden = base.model(input_ids=ids)[0]
        chunked_lm_loss(hidden, labels, base.lm_head).backward()
        optimizer.step()
    tokens = args.batch * args.seq
    return (tokens / seconds_per_call(hf_step, args.steps, device),
            tokens / seconds_per_call(our_step, args.steps, device))


@torch.no_grad()
def decode_rates(lm, args, device):
    """{name: (tok/s, time to first token)}: HF `generate` with the adapter unmerged and
    merged, and dermvlm's decode loop (dermvlm.vlm.fastlm) on the merged LM."""
    from dermvlm.vlm.fastlm import FastLM, decode
    prompt = torch.randint(0, lm.config.vocab_size, (1, args.prompt), device=device)
    out = {}

    def rate(run):
        first = seconds_per_call(lambda: run(1), 2, device)
        full = seconds_per_call(lambda: run(args.decode), 1, device)
        return (args.decode - 1) / max(full - first, 1e-9), first
    for name, model in (("HF generate, unmerged", lm), ("HF generate, merged",
                                                         lm.merge_and_unload())):
        model.eval()
        out[name] = rate(lambda new: model.generate(
            input_ids=prompt, do_sample=False, pad_token_id=0, max_new_tokens=new,
            min_new_tokens=new))
    fast = FastLM(model)

    def ours(new):
        cache = fast.new_cache(1, args.prompt + new)
        logits = fast.logits(fast.forward(cache, fast.embed(prompt))[:, -1])
        for _ in decode(fast, cache, logits, new, -1):
            pass
    out["dermvlm decode, merged"] = rate(ours)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lm", default="smollm2")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--prompt", type=int, default=600, help="prompt tokens for decoding")
    parser.add_argument("--decode", type=int, default=32, help="tokens to decode")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    lm = with_lora(make_lm(args.lm, device))
    hf, ours = train_rates(lm, args, device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"device {name}; LM {args.lm}; LoRA r16 all-linear; batch {args.batch} x seq "
          f"{args.seq} (half target tokens)")
    print(f"  SFT, HF + peft        : {hf:9.1f} tok/s")
    print(f"  SFT, dermvlm          : {ours:9.1f} tok/s   ratio {ours / hf:.2f}x")
    rates = decode_rates(lm, args, device)
    base = rates["HF generate, unmerged"][0]
    for name, (rate, first) in rates.items():
        print(f"  decode bs1, {name:23s}: {rate:7.1f} tok/s, first token {first * 1000:.0f} ms "
              f"after a {args.prompt}-token prompt   ratio {rate / base:.2f}x")

if __name__ == "__main__":
    main()
