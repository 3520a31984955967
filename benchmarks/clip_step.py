"""CLIP training-step throughput: dermvlm's step vs open_clip's raw step, side by side, plus
the full trainer reading webdataset JPEG shards and zero-shot image encoding.

    python -m benchmarks.clip_step                      # CPU: tiny preset model, batch 64
    python -m benchmarks.clip_step --preset base --batch 512 --steps 20   # GPU: ViT-B-16

Both steps use the same model, batch, optimizer and precision (bf16 autocast on CUDA) on
synthetic tensors. open_clip's raw step encodes the (locked) text tower every step, as
open_clip's trainer does; dermvlm's step runs the frozen tower once per distinct caption
(TextCache) and only the trainable projection every step.
"""
import argparse
import json
import tempfile
from pathlib import Path

import torch
from open_clip.loss import ClipLoss

from benchmarks.timing import seconds_per_call
from dermvlm.clip.model import build_model
from dermvlm.clip.train import ClipTrainModule, TextCache, apply_text_mode, make_optimizer
from dermvlm.config import get_config
from dermvlm.zeroshot import trim_padding


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--no-trainer", action="store_true", help="skip the shard trainer run")
    args = parser.parse_args(argv)
    config = get_config(args.preset, [f"clip.batch_size={args.batch}"])
    cfg = config.clip
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, model_cfg, tokenizer = build_model(cfg)
    apply_text_mode(model, cfg)
    model.to(device).train()
    size = cfg.image_size
    images = torch.randn(args.batch, 3, size, size, device=device)
    captions = [f"caption number {i} of a scaly red plaque" for i in range(args.batch)]
    tokens = tokenizer(captions).to(device)
    loss_fn = ClipLoss()
    autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    optimizer = make_optimizer(model, cfg)
    module = ClipTrainModule(model)
    raw_model = torch.compile(model) if args.compile else model
    our_module = torch.compile(module) if args.compile else module
    cache = TextCache(model, tokenizer, device) if hasattr(model.text, "transformer") else None

    def raw_step():   # open_clip's own: encode both towers, loss, backward, step
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(**autocast):
            img, txt, scale = raw_model(images, tokens)
            loss = loss_fn(img, txt, scale)
        loss.backward()
        optimizer.step()

    def our_step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(**autocast):
            if cache is not None:
                img, txt = our_module(images, pooled_text=cache(captions))
            else:
                img, txt = our_module(images, tokens=tokens)
            loss = loss_fn(img, txt, model.logit_scale.exp())
        loss.backward()
        optimizer.step()

    raw = seconds_per_call(raw_step, args.steps, device, warmup=2)
    ours = seconds_per_call(our_step, args.steps, device, warmup=2)
    model.eval()
    with torch.no_grad(), torch.autocast(**autocast):
        encode = seconds_per_call(lambda: model.encode_image(images), args.steps, device,
                                  warmup=2)
        text_full, text_trimmed = text_tower_rates(model, tokenizer, args, device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"device: {name}; model {cfg.model} ({size}px, text {cfg.text_mode}), batch "
          f"{args.batch}, compile={args.compile}")
    print(f"  open_clip raw step   : {args.batch / raw:9.1f} pairs/s")
    print(f"  dermvlm step         : {args.batch / ours:9.1f} pairs/s   ratio {raw / ours:.2f}x")
    print(f"  zero-shot encode     : {args.batch / encode:9.1f} img/s")
    if text_full is not None:
        print(f"  text tower, new captions: {text_full:9.1f} captions/s padded to "
              f"{tokenizer.context_length}, {text_trimmed:9.1f} trimmed "
              f"(ratio {text_trimmed / text_full:.2f}x)")
    if not args.no_trainer:
        print(f"  full trainer, shards : {trainer_rate(config, args):9.1f} pairs/s "
              f"(data pipeline included; vs step ceiling {args.batch / ours:.1f})")


def text_tower_rates(model, tokenizer, args, device):
    """captions/s of a HuggingFace text tower on Derm1M-length captions, padded to the
    context length (open_clip's tokenizer output) and with the all-padding columns trimmed
    (what TextCache and ZeroShot run): (None, None) for open_clip's own text tower."""
    if not hasattr(model.text, "transformer"):
        return None, None
    captions = [f"There are {i} well-demarcated pink plaques with overlying scale (annular in "
                f"shape) on the arm in an annular ring. Diagnosis: tinea corporis."
                for i in range(args.batch)]
    tokens = tokenizer(captions).to(device)
    rates = []
    for ids in (tokens, trim_padding(model, tokens)):
        mask = (ids != model.text.config.pad_token_id).long()
        seconds = seconds_per_call(lambda: model.text.transformer(input_ids=ids,
                                                                  attention_mask=mask),
                                   args.steps, device, warmup=2)
        rates.append(args.batch / seconds)
    return rates


def trainer_rate(config, args):
    """pairs/s of train_clip reading webdataset JPEG shards made by the derm1m recipe."""
    from data_recipes import derm1m
    from dermvlm.clip.train import train_clip
    from dermvlm.synth.writer import generate
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n = args.batch * 4
        generate(get_config("tiny", [f"synth.n={n}", f"synth.size={config.clip.image_size}",
                                     "synth.workers=2"]).synth, tmp / "synth", progress=False)
        derm1m.main(["--csv", str(tmp / "synth/derm1m.csv"), "--out", str(tmp / "rec"),
                     "--shards", "--per-shard", str(args.batch), "--quiet"])
        steps = args.steps + 2
        config.clip.steps, config.clip.log_every = steps, 1
        config.clip.ckpt_every = config.clip.eval_every = 10 ** 9
        train_clip(config, tmp / "rec" / "shards", tmp / "run", progress=False)
        rows = [json.loads(line) for line in
                (tmp / "run/metrics.jsonl").read_text().splitlines()]
        seconds = rows[-1]["seconds"] - rows[1]["seconds"]    # skip the first (warm-up) steps
        return args.batch * (len(rows) - 2) / seconds


if __name__ == "__main__":
    main()
