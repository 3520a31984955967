"""The end-to-end stage ("all") of the tower's alignment: every layer of the image tower learns,
from decoded images, with augmentation done as batched tensor ops on the accelerator.

It runs from a *pack* (written by `python -m train.align_all pack`): the images as WebP bytes,
their sets, classes and caption rows, the locked text tower's per-set class embeddings and
caption embeddings, and the tower's starting weights. So the machine that trains needs only
torch, torchvision (JPEG), timm, numpy, Pillow, safetensors and tqdm: no open_clip, no text
tower, no dataset folders.

The loss is the staged alignment's (dermvlm.clip.align.align_loss: per-set prompt
cross-entropy + caption InfoNCE), the sampling its class-balanced shares. Batch-norm statistics
stay frozen, as in the "last" stage. The val split is scored a few times over the run and the
best weights (mean balanced accuracy over the real sets) are kept.
"""
import io
import json
import math
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from multiprocessing import Pool
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dermvlm.clip.align import align_loss
from dermvlm.clip.evaluate import balanced_accuracy
from dermvlm.imaging import MEAN, STD


@dataclass
class FullConfig:
    minutes: float = 3.0        # training time; the step count is sized from the first steps
    steps: int = 0              # a fixed step count instead (tests, CPU)
    batch_size: int = 256
    lr: float = 5e-4            # the CLIP head's and the logit scale's rate
    trunk_lr: float = 1e-4      # every trunk layer's rate
    weight_decay: float = 0.05
    caption_weight: float = 0.5
    evals: int = 6              # val scorings over the run (the best weights are kept)
    jpeg_p: float = 0.25        # real photos re-compressed at quality 30-95 (phone uploads)
    blur_p: float = 0.2
    seed: int = 0


# ----------------------------------------------------------------------------- the pack

PACK_FILES = ("meta.json", "pack.npz", "targets.pt", "visual_init.safetensors")

def decode_one(blob, size):
    image = Image.open(io.BytesIO(blob)).convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


def _decode(args):
    return decode_one(*args)


def decode_all(blobs, offsets, size, workers=8):
    """(N, S, S, 3) uint8 from the pack's concatenated image bytes."""
    jobs = [(bytes(blobs[offsets[i]:offsets[i + 1]]), size) for i in range(len(offsets) - 1)]
    if workers <= 1 or len(jobs) < 64:
        return np.stack([decode_one(*job) for job in jobs])
    with Pool(workers) as pool:
        return np.stack(pool.map(_decode, jobs, chunksize=64))


def load_pack(folder):
    """(meta, arrays, text targets, starting weights) of a pack folder."""
    folder = Path(folder)
    missing = [n for n in PACK_FILES if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: not a training pack (no {missing[0]}; write one "
                                "with python -m train.align_all pack)")
    meta = json.loads((folder / "meta.json").read_text())
    arrays = dict(np.load(folder / "pack.npz"))
    targets = torch.load(folder / "targets.pt", weights_only=True)
    from safetensors.torch import load_file
    return meta, arrays, targets, load_file(folder / "visual_init.safetensors")


# ----------------------------------------------------------------------------- the tower

def build_visual(arch):
    """open_clip's timm tower (TimmModel, proj "linear") rebuilt from timm alone: the trunk
    with its classifier reset to `pool`, then Sequential(drop, proj)."""
    import timm
    trunk = timm.create_model(arch["timm_model_name"], pretrained=False)
    trunk.reset_classifier(0, global_pool=arch.get("timm_pool", "avg"))
    head = torch.nn.Sequential(OrderedDict(
        drop=torch.nn.Dropout(0.0),
        proj=torch.nn.Linear(trunk.num_features, arch["embed_dim"], bias=False)))
    visual = torch.nn.Module()
    visual.trunk, visual.head = trunk, head
    return visual


def visual_forward(visual, x):
    return visual.head(visual.trunk(x))


# ----------------------------------------------------------------------------- augmentation

def augment(x, real, cfg, gen):
    """x (B, S, S, 3) uint8 on the device; real (B,) bool (SynthDerm keeps its colours, which
    are labels) -> (B, 3, S, S) normalised. Crops of 50-100 % of the area (aspect 0.8-1.25), the
    eight flips and right-angle turns; real photos also colour and white-balance jitter, blur
    and JPEG, and deeper crops."""
    b, s, dev = x.shape[0], x.shape[1], x.device
    x = x.permute(0, 3, 1, 2).float() / 255

    def uniform(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(b, *shape, generator=gen, device=dev)
    # SynthDerm's captions state borders and counts: milder crops, no blur (as train_transform)
    area = torch.where(real, uniform(0.5, 1.0), uniform(0.7, 1.0))
    ratio = torch.where(real, uniform(math.log(0.8), math.log(1.25)),
                        uniform(math.log(0.9), math.log(1.1))).exp()
    sx, sy = (area * ratio).sqrt().clamp(max=1), (area / ratio).sqrt().clamp(max=1)
    turn = torch.randint(0, 4, (b,), generator=gen, device=dev).float() * (math.pi / 2)
    flip = torch.where(torch.rand(b, generator=gen, device=dev) < 0.5, -1.0, 1.0)
    cos, sin = turn.cos().round(), turn.sin().round()
    a = torch.stack([torch.stack([cos * sx * flip, -sin * sy], 1),
                     torch.stack([sin * sx * flip, cos * sy], 1)], 1)         # (B, 2, 2)
    extent = a.abs().sum(2)                                                   # (B, 2)
    shift = (torch.rand(b, 2, generator=gen, device=dev) * 2 - 1) * (1 - extent)
    grid = F.affine_grid(torch.cat([a, shift[:, :, None]], 2), (b, 3, s, s), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    jit = x * uniform(0.8, 1.2, 1, 1, 1)                                       # brightness
    mean = jit.mean((1, 2, 3), keepdim=True)
    jit = (jit - mean) * uniform(0.8, 1.2, 1, 1, 1) + mean                     # contrast
    gray = (jit * torch.tensor([0.299, 0.587, 0.114], device=dev)[:, None, None]).sum(1, True)
    jit = (jit - gray) * uniform(0.85, 1.15, 1, 1, 1) + gray                   # saturation
    jit = (jit * uniform(0.95, 1.05, 3, 1, 1)).clamp(0, 1)                     # white balance
    x = torch.where(real[:, None, None, None], jit, x)

    blur = real & (torch.rand(b, generator=gen, device=dev) < cfg.blur_p)
    if blur.any():
        x[blur] = gaussian_blur(x[blur], uniform(0.3, 1.5)[blur])
    jpeg = real & (torch.rand(b, generator=gen, device=dev) < cfg.jpeg_p)
    if jpeg.any():
        quality = int(torch.randint(30, 96, (1,), generator=gen, device=dev))
        x[jpeg] = jpeg_round_trip(x[jpeg], quality)
    return normalise(x)


def normalise(x):
    """(B, 3, S, S) in [0, 1] -> the tower's input (OpenAI CLIP's mean and std)."""
    mean, std = (torch.tensor(v, device=x.device)[:, None, None] for v in (MEAN, STD))
    return (x - mean) / std


def gaussian_blur(x, sigma, radius=2):
    """(n, 3, S, S) blurred with a per-image 5 x 5 Gaussian of `sigma` (n,)."""
    n = x.shape[0]
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-taps[None] ** 2 / (2 * sigma[:, None] ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(3, 0)    # (3n, 5)
    flat = x.reshape(1, 3 * n, *x.shape[2:])
    flat = F.conv2d(F.pad(flat, (radius,) * 4, mode="reflect"), kernel[:, None, None, :],
                    groups=3 * n)
    flat = F.conv2d(flat, kernel[:, None, :, None], groups=3 * n)
    return flat.reshape(x.shape)


def jpeg_round_trip(x, quality):
    """(n, 3, S, S) in [0, 1] through JPEG at `quality` (torchvision's codec, on the tensors'
    device where it has one)."""
    from torchvision.io import decode_jpeg, encode_jpeg
    images = [(im * 255).round().to(torch.uint8) for im in x]
    try:
        encoded = [e.cpu() for e in encode_jpeg(images, quality=quality)]
    except (RuntimeError, TypeError):       # no encoder on this device: the CPU's
        encoded = encode_jpeg([im.cpu() for im in images], quality=quality)
    try:
        out = decode_jpeg(encoded, device=x.device)
    except (RuntimeError, TypeError):
        out = decode_jpeg(encoded)
    return torch.stack([im.to(x.device) for im in out]).float() / 255


# ----------------------------------------------------------------------------- training

@torch.no_grad()
def score_val(visual, images, set_index, class_ids, set_names, classifiers, batch_size=512):
    """{set: balanced accuracy} of zero-shot probabilities on plain (unaugmented) views."""
    visual.eval()
    dev = next(visual.parameters()).device
    embeds = []
    for lo in range(0, len(images), batch_size):
        x = normalise(images[lo:lo + batch_size].to(dev).permute(0, 3, 1, 2).float() / 255)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            embeds.append(F.normalize(visual_forward(visual, x).float(), dim=-1))
    embeds = torch.cat(embeds)
    out = {}
    for s, name in enumerate(set_names):
        rows = torch.from_numpy(np.flatnonzero(set_index == s))
        if not len(rows):
            continue
        predicted = (embeds[rows.to(dev)] @ classifiers[name]).argmax(1).cpu().numpy()
        out[name] = balanced_accuracy(predicted, class_ids[rows.numpy()])
    return out


def decode_pack(pack):
    """{"train", "val": (N, S, S, 3) uint8 tensors} of a loaded pack's images."""
    meta, arrays = pack[0], pack[1]
    return {split: torch.from_numpy(decode_all(arrays[f"{split}_blobs"],
                                               arrays[f"{split}_offsets"], meta["image_size"]))
            for split in ("train", "val")}


def train_full(pack, cfg, device, log=print, progress=True, images=None):
    """Train the whole tower from the pack (its images decoded by decode_pack, or given);
    returns (best state dict, log dict)."""
    from tqdm import tqdm
    meta, arrays, targets, init = pack
    torch.manual_seed(cfg.seed)
    dev = torch.device(device)
    set_names = meta["sets"]
    if images is None:
        started = time.time()
        images = decode_pack(pack)
        log(f"decoded {len(images['train'])} train + {len(images['val'])} val images "
            f"in {time.time() - started:.0f} s")
    train_images = images["train"].to(dev)
    visual = build_visual(meta["arch"])
    visual.load_state_dict({k[len("visual."):]: v.float() for k, v in init.items()
                            if k.startswith("visual.")})
    logit_scale = torch.nn.Parameter(init["logit_scale"].float().to(dev))
    visual = visual.to(dev).to(memory_format=torch.channels_last).eval()   # BN frozen
    classifiers = {k: v.float().to(dev) for k, v in targets["classifiers"].items()}
    text = SimpleNamespace(classifiers=classifiers, table=targets["table"].float().to(dev))
    head = list(visual.head.parameters()) + [logit_scale]
    trunk = list(visual.trunk.parameters())
    optimizer = torch.optim.AdamW([{"params": head, "lr": cfg.lr},
                                   {"params": trunk, "lr": cfg.trunk_lr}],
                                  weight_decay=cfg.weight_decay)
    base = [g["lr"] for g in optimizer.param_groups]
    item_image, item_set = arrays["train_image"], arrays["train_set"]
    item_class, weights = arrays["train_class"], arrays["train_weight"]
    caption_flat, caption_offsets = arrays["caption_rows"], arrays["caption_offsets"]
    real_set = torch.tensor([name != "synthderm" for name in set_names], device=dev)
    rng, gen = np.random.default_rng(cfg.seed), torch.Generator(dev).manual_seed(cfg.seed)
    total = cfg.steps or None                   # sized from the pace at step 30 otherwise
    history = {"config": asdict(cfg), "device": str(dev), "loss": [], "val": []}
    best, best_score, step, started = None, -math.inf, 0, time.time()
    bar = tqdm(total=cfg.steps or None, desc="align all", unit="step", mininterval=5,
               disable=not progress)
    while total is None or step < total:
        if step == 10:
            paced_from = time.time()                # after the first steps' kernel tuning
        if step == 30 and not cfg.steps:           # size the run from the pace so far
            pace = (time.time() - paced_from) / 20
            total = max(50, int(cfg.minutes * 60 / pace))
            log(f"{pace * 1000:.0f} ms a step of {cfg.batch_size}: {total} steps")
            bar.total = total
        warm = min(1.0, (step + 1) / 50)
        cosine = 0.5 * (1 + math.cos(math.pi * step / total)) if total else 1.0
        for group, lr in zip(optimizer.param_groups, base):
            group["lr"] = lr * warm * cosine
        rows = rng.choice(len(weights), cfg.batch_size, p=weights)
        caption_rows = [caption_flat[rng.integers(caption_offsets[r], caption_offsets[r + 1])]
                        for r in rows]
        sets = item_set[rows]
        x = augment(train_images[torch.from_numpy(item_image[rows]).to(dev)],
                    real_set[torch.from_numpy(sets).to(dev)], cfg, gen)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            embed = visual_forward(visual, x.contiguous(memory_format=torch.channels_last))
        loss, _ = align_loss(F.normalize(embed.float(), dim=-1), text,
                             [set_names[s] for s in sets],
                             torch.from_numpy(item_class[rows]).to(dev),
                             torch.tensor(caption_rows, device=dev),
                             logit_scale.exp().clamp(max=100), cfg.caption_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history["loss"].append(round(float(loss.detach()), 4))
        step += 1
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(history['loss'][-10:]):.3f}")
        if total and (step % max(1, total // cfg.evals) == 0 or step == total):
            scores = score_val(visual, images["val"], arrays["val_set"], arrays["val_class"],
                               set_names, classifiers)
            real = [v for k, v in scores.items() if k != "synthderm"]
            score = float(np.mean(real)) if real else -float(np.mean(history["loss"][-20:]))
            history["val"].append({"step": step, "score": round(score, 4),
                                   **{k: round(v, 4) for k, v in scores.items()}})
            log(f"step {step}/{total} loss {np.mean(history['loss'][-20:]):.3f} "
                f"val {json.dumps(history['val'][-1])}")
            if score > best_score:
                best_score = score
                best = {f"visual.{k}": v.detach().float().cpu().contiguous().clone()
                        for k, v in visual.state_dict().items()}
                best["logit_scale"] = logit_scale.detach().float().cpu().clone()
                history["best_step"] = step
    bar.close()
    history["seconds"] = round(time.time() - started, 1)
    history["steps"] = step
    return best, history
