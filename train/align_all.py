"""The end-to-end stage ("all") of the tower's alignment, where every layer learns from images
(dermvlm.clip.finetune). It is split so a GPU machine without open_clip, the text tower or the
dataset folders can run the training:

    python -m train.align_all pack --model dermvlm/default/clip --work runs/align/lite0 \
        --synth runs/data/train --out runs/pack             # here: images, labels, text targets
    python -m train.align_all train --pack runs/pack --out runs/all --minutes 3 \
        --trunk-lr 1e-4 3e-4                                # there: one run per trunk rate
    python -m train.align_all finish --model dermvlm/default/clip \
        --weights runs/all/lr0.0001/visual.safetensors --out runs/all/model   # vanilla open_clip

The pack holds the train and val splits of every real set (as train.align.gather gives them:
no train image of an evaluation lesion, no val image of a test lesion or of train) and
SynthDerm, each image centre-cropped to a square at most --image-size wide and stored as WebP;
the locked text tower's per-set class embeddings and caption embeddings; the starting tower's
weights in float16. Test splits never enter it.
"""
import io
import json
import sys
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch

from dermvlm.cliargs import OneLineParser, positive_int
from dermvlm.errors import DermvlmError


def build_parser():
    parser = OneLineParser(prog="python -m train.align_all",
                           description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="write the training pack (needs open_clip and the data)")
    p.add_argument("--model", required=True, help="the CLIP folder to start from")
    p.add_argument("--out", required=True, help="pack folder")
    p.add_argument("--work", required=True, help="folder for the isic9 recipe's output (a "
                   "train.align --out folder reuses its own)")
    p.add_argument("--realdata", help="the shared realdata folder (default: ../shared/realdata)")
    p.add_argument("--synth", help="SynthDerm train folder (dermvlm synth)")
    p.add_argument("--image-size", type=positive_int, default=224)
    p.add_argument("--quality", type=positive_int, default=85, help="WebP quality")
    p.add_argument("--per-set", type=positive_int, help="at most N images per set and split")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    t = sub.add_parser("train", help="train the whole tower from a pack (torch + timm only)")
    t.add_argument("--pack", required=True, help="a folder written by `pack`")
    t.add_argument("--out", required=True, help="one sub-folder per trunk rate")
    t.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cuda (default where there is one) or cpu")
    t.add_argument("--minutes", type=float, default=3.0, help="training time per run")
    t.add_argument("--steps", type=int, default=0, help="a fixed step count instead")
    t.add_argument("--batch-size", type=positive_int, default=256)
    t.add_argument("--lr", type=float, default=5e-4, help="the CLIP head's rate")
    t.add_argument("--trunk-lr", type=float, nargs="+", default=[1e-4])
    t.add_argument("--evals", type=positive_int, default=6, help="val scorings per run (the "
                   "best weights are kept)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    f = sub.add_parser("finish", help="write a vanilla open_clip folder with trained weights")
    f.add_argument("--model", required=True, help="the CLIP folder the pack started from")
    f.add_argument("--weights", required=True, help="a trained visual.safetensors")
    f.add_argument("--out", required=True)
    return parser


def square_webp(job):
    """(path, size, quality) -> WebP bytes of the image's centre square, at most size wide
    (what eval_transform's shorter-side resize and centre crop see)."""
    from PIL import Image
    path, size, quality = job
    image = Image.open(path).convert("RGB")
    w, h = image.size
    side = min(w, h)
    image = image.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side,
                        (h - side) // 2 + side))
    if side > size:
        image = image.resize((size, size), Image.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, "WEBP", quality=quality)
    return buffer.getvalue()


def encode_images(paths, size, quality, progress):
    from tqdm import tqdm
    jobs = [(str(p), size, quality) for p in paths]
    with Pool() as pool:
        blobs = list(tqdm(pool.imap(square_webp, jobs, chunksize=32), total=len(jobs),
                          desc="packing images", disable=not progress))
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    return np.frombuffer(b"".join(blobs), dtype=np.uint8), offsets


def pack(args):
    from safetensors.torch import save_file

    from dermvlm.clip.align import TextTargets, sampling_weights
    from dermvlm.clip.model import load_model
    from train.align import SHARES, class_lists, gather, unique_rows
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = gather(Path(args.work), args.realdata, args.synth, None, args.per_set)
    data.pop("test")                                       # never leaves this machine
    classes = class_lists(data)
    sets = list(classes)
    model, model_cfg, tokenizer = load_model(args.model)
    vision = model_cfg["vision_cfg"]
    if "timm_model_name" not in vision:
        raise DermvlmError(f"{args.model}: not a timm image tower (the pack needs one)")
    targets = TextTargets(model, tokenizer, classes,
                          [r.captions or [f"A skin image of {r.label}."]
                           for _, r in data["train"]])
    unique, image_rows = unique_rows(data["train"])
    arrays = {}
    for split, items in (("train", unique), ("val", data["val"])):
        blobs, offsets = encode_images([r.image for _, r in items], args.image_size,
                                       args.quality, not args.quiet)
        arrays[f"{split}_blobs"], arrays[f"{split}_offsets"] = blobs, offsets
    arrays["train_image"] = image_rows
    for split in ("train", "val"):
        arrays[f"{split}_set"] = np.array([sets.index(n) for n, _ in data[split]])
        arrays[f"{split}_class"] = np.array([classes[n].index(r.label) for n, r in data[split]])
    arrays["train_weight"] = sampling_weights([n for n, _ in data["train"]],
                                              [r.label for _, r in data["train"]], SHARES)
    arrays["caption_rows"] = np.concatenate([np.array(c) for c in targets.caption_ids])
    arrays["caption_offsets"] = np.cumsum([0] + [len(c) for c in targets.caption_ids])
    np.savez(out / "pack.npz", **arrays)
    torch.save({"classifiers": {k: v.half() for k, v in targets.classifiers.items()},
                "table": targets.table.half()}, out / "targets.pt")
    state = model.state_dict()
    save_file({k: v.half().contiguous() for k, v in state.items()
               if k.startswith("visual.") or k == "logit_scale"}, out / "visual_init.safetensors")
    meta = {"sets": sets, "classes": classes, "image_size": args.image_size,
            "arch": {**{k: vision[k] for k in ("timm_model_name", "timm_pool", "timm_proj")},
                     "embed_dim": model_cfg["embed_dim"]},
            "images": {"train_items": len(data["train"]), "train_images": len(unique),
                       "val": len(data["val"])}}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    size = sum(f.stat().st_size for f in out.iterdir()) / 2**20
    print(f"pack: {meta['images']}, {size:.1f} MiB in {out}")
    return 0


def train(args):
    from safetensors.torch import save_file

    from dermvlm.clip.finetune import FullConfig, decode_pack, load_pack, train_full
    if args.steps < 0:
        raise DermvlmError(f"--steps {args.steps}: expected 0 (size by --minutes) or more")
    try:
        the_pack = load_pack(args.pack)
    except FileNotFoundError as exc:
        raise DermvlmError(str(exc)) from None
    images = decode_pack(the_pack)                       # once for every trunk rate
    results = {}
    for trunk_lr in args.trunk_lr:
        cfg = FullConfig(minutes=args.minutes, steps=args.steps, batch_size=args.batch_size,
                         lr=args.lr, trunk_lr=trunk_lr, evals=args.evals)
        out = Path(args.out) / f"lr{trunk_lr:g}"
        out.mkdir(parents=True, exist_ok=True)
        print(f"training with trunk rate {trunk_lr:g} on {args.device}", flush=True)
        best, history = train_full(the_pack, cfg, args.device,
                                   log=lambda m: print(m, flush=True), progress=not args.quiet,
                                   images=images)
        (out / "history.json").write_text(json.dumps(history))
        save_file(best, out / "visual.safetensors")
        results[f"{trunk_lr:g}"] = next(v for v in history["val"]
                                        if v["step"] == history["best_step"])   # what was kept
    print(json.dumps(results, indent=1))
    return 0


def finish(args):
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from dermvlm.clip.model import load_model, save_model
    model, model_cfg, _ = load_model(args.model)
    try:
        trained = load_file(args.weights)
    except (OSError, SafetensorError) as exc:            # missing, or not safetensors
        raise DermvlmError(f"--weights {args.weights}: not a readable safetensors file "
                           f"(a train run's visual.safetensors): {exc}") from None
    own = model.state_dict()
    stray = [k for k in trained if k not in own or own[k].shape != trained[k].shape]
    if stray:
        raise DermvlmError(f"{args.weights}: does not fit {args.model} (e.g. {stray[0]!r})")
    model.load_state_dict(trained, strict=False)
    extra = Path(args.model) / "dermvlm_config.json"
    save_model(model, model_cfg, args.out,
               extra_config=json.loads(extra.read_text()) if extra.is_file() else None)
    print(f"wrote {args.out}")
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return {"pack": pack, "train": train, "finish": finish}[args.command](args)
    except DermvlmError as exc:
        print(f"python -m train.align_all: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
